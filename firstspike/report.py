"""`firstspike report`: a flow run folder -> report.md + report.html (+ figures/*.png).

Accuracy at every rung of the ladder (float real, float binary, golden model, Verilator,
Icarus, gate level, virtual board, real board) with mismatch counts against the golden
model, board utilisation and Fmax, cycles per image and images/s, synaptic events per image
(an energy proxy) and plots. The HTML embeds its figures, so it can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from firstspike.errors import FirstSpikeError
from firstspike.files import atomic_write
from firstspike.quantize.modelfile import outputs_never_fire

log = logging.getLogger(__name__)


class ReportError(FirstSpikeError):
    """A folder that is not a flow run."""


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def ladder(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The accuracy ladder: one row per rung that ran."""
    st = state.get("steps", {})

    def m(name: str) -> dict[str, Any] | None:
        return st.get(name, {}).get("metrics")

    rows: list[dict[str, Any]] = []
    g = m("golden")
    if m("train_real"):
        rows.append({"rung": "float, real weights", "accuracy": m("train_real")["float_accuracy"],
                     "images": g["images"] if g else None, "mismatches": "not comparable (other weights)"})  # fmt: skip
    else:
        rows.append({"rung": "float, real weights", "accuracy": None, "images": None,
                     "mismatches": "not run (firstspike flow --real-epochs N)"})  # fmt: skip
    if m("train"):
        mm = f"{g['float_class_mismatches']} classes, {g['float_spike_mismatches']} of {g['float_values_compared']:,} spike times" if g else "n/a"
        rows.append({"rung": "float, binary weights (training forward pass)", "accuracy": m("train")["float_accuracy"],
                     "images": g["images"] if g else None, "mismatches": mm})  # fmt: skip
    if g:
        rows.append({"rung": "golden model (integer)", "accuracy": g["accuracy"], "images": g["images"], "mismatches": "reference"})
    sims = [("RTL, Verilator", m("verilator")), ("RTL, Icarus", m("icarus"))]
    gl = m("gate_level") or {}
    for fam, v in (gl.get("families") or {"": gl}).items():  # "": a run folder of the one-family format
        sims.append((f"gate level{', ' + fam if fam else ''} (Yosys netlist, Verilator)", v))
    for label, v in sims:
        if v:
            rows.append({"rung": label, "accuracy": v["rtl_accuracy"], "images": v["images"], "golden_same_images": v["golden_accuracy"],
                         "mismatches": f"{v['class_mismatches']} classes, {sum(v['spike_mismatches'].values())} of "
                                       f"{v['values_compared']:,} spike times and potentials"})  # fmt: skip
    for name, label in (("virtual", "virtual board (UART, host runtime)"), ("board", "real board")):
        v = m(name)
        if v:
            spk = v.get("spike_mismatches_one_image")
            extra = f", {sum(spk.values())} spike-time mismatches on image 0 (read over UART)" if spk else ""
            rows.append({"rung": label, "accuracy": v["accuracy"], "images": v["images"], "golden_same_images": v["golden_accuracy"],
                         "mismatches": f"{v['class_mismatches']} classes{extra}; {v['retries']} retries"})  # fmt: skip
    if not m("board"):
        rows.append({"rung": "real board", "accuracy": None, "images": None, "mismatches": "no board attached (flow --port)"})
    return rows


def board_rows(state: dict[str, Any], tables=None) -> list[dict[str, Any]]:
    st = state.get("steps", {})
    builds = st.get("build", {}).get("metrics", {}).get("boards", {})
    ver = st.get("verilator", {}).get("metrics")
    # compute cycles per image: a board core's own, measured through the link (the real board's,
    # else the virtual board's), else the RTL run's (the debug core: all T steps)
    ran = [(n, st.get(n, {}).get("metrics")) for n in ("board", "virtual")]
    ran = [(n, v) for n, v in ran if v and v.get("cycles_mean")]
    where = {"board": "the board's core", "virtual": "the virtual board's core"}
    how = {True: ", early exit", False: ", all T steps", None: ""}
    cyc = (ran[0][1]["cycles_mean"], where[ran[0][0]] + how[ran[0][1].get("early_exit")]) if ran else (
        (ver["cycles_mean"], "RTL, all T steps") if ver and ver.get("cycles_mean") else None)
    rows = []
    for b, r in builds.items():
        if "error" in r:
            rows.append({"board": b, "error": r["error"]})
            continue
        res = r.get("resources", {})
        row = {"board": b, "device": r.get("device"), "lanes": r.get("lanes"),
               **{k: f"{v['used']:,} / {v['available']:,}" for k, v in res.items() if v},
               "fmax_mhz": r.get("fmax_mhz"), "clock_mhz": r.get("clock_mhz")}  # fmt: skip
        same_core = ran or (ver and ver.get("lanes") == r.get("lanes"))  # the virtual board runs the flow's lanes
        if cyc and tables is not None and same_core:
            from firstspike.hw.plan import image_cycles

            per = image_cycles(tables, cyc[0])
            row["cycles"] = f"{cyc[0]:,.0f} ({cyc[1]})"
            row["images_per_s_at_fmax"] = round(r["fmax_mhz"] * 1e6 / per, 1) if r.get("fmax_mhz") else None
            row["images_per_s_at_clock"] = round(r["clock_mhz"] * 1e6 / per, 1)
        rows.append(row)
    return rows


# --- figures ---------------------------------------------------------------------------------
def _figures(root: Path, figdir: Path, state: dict[str, Any], tables) -> dict[str, tuple[Path, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, tuple[Path, str]] = {}
    figdir.mkdir(parents=True, exist_ok=True)

    def save(fig, name: str, caption: str) -> None:
        p = figdir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        figs[name] = (p, caption)

    T = tables.T if tables is not None else None
    gpath = root / "golden" / "golden.npz"
    if gpath.exists() and T is not None:
        g = np.load(gpath)
        cls, lab, out_t = g["classes"], g["labels"], g["out_times"]
        first = out_t.min(axis=1)
        ok = cls == lab
        if not outputs_never_fire(tables):  # (an output-potential model has no output spikes to plot)
            fig, ax = plt.subplots(figsize=(6, 3.4))
            bins = np.arange(T + 2) - 0.5
            ax.hist([first[ok], first[~ok]], bins=bins, stacked=True, label=["correct", "wrong"], color=["#3a7", "#d44"])
            ax.set(xlabel=f"first output spike step (T = {T}: no output spike)", ylabel="images",
                   title=f"Output latency, golden model, {len(lab):,} test images")  # fmt: skip
            ax.legend()
            wins = tables.windows != "off"
            n_spiking = sum(ly.kind != "pool" for ly in tables.layers)
            save(fig, "latency", "Output latency: the step of the first output spike per test image"
                 + (f" in the output layer's own window (layer windows: it opens at step {n_spiking * T} of the core's "
                    f"{(n_spiking + 1) * T})." if wins else "."))  # fmt: skip

            # accuracy against the decision deadline: decide at step t with the spikes so far
            ts = np.arange(1, T + 1)
            arg = out_t.argmin(axis=1)
            acc_t = [float(((first < t) & (arg == lab)).mean()) for t in ts]
            fig, ax = plt.subplots(figsize=(6, 3.4))
            ax.plot(ts, [100 * a for a in acc_t], marker=".", label="first output spike before step t")
            ax.axhline(100 * ok.mean(), color="k", ls="--", lw=1, label=f"full decision rule at T={T}: {100 * ok.mean():.2f}%")
            ax.set(xlabel="decision deadline t (time steps)", ylabel="accuracy (%)", title="Accuracy against time (golden model)")
            ax.legend(loc="lower right")
            ax.grid(alpha=0.3)
            save(fig, "accuracy_vs_t", "Accuracy against time: the class of the first output spike if it comes before step t "
                                       "(no spike yet counts as wrong); dashed, the model's decision rule at T.")  # fmt: skip

        nc = int(max(cls.max(), lab.max()) + 1)
        cm = np.zeros((nc, nc), np.int64)
        np.add.at(cm, (lab, cls), 1)
        fig, ax = plt.subplots(figsize=(4.8, 4.2))
        ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues")
        for i in range(nc):
            for j in range(nc):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color="k" if i != j else "w")
        ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (golden model)", xticks=range(nc), yticks=range(nc))
        save(fig, "confusion", "Confusion matrix of the golden model on the test set.")

        syn = g["synaptic_updates"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(syn, bins=40, color="#57a")
        ax.set(xlabel="synaptic updates per image (input spikes x fan-out x channels)", ylabel="images",
               title=f"Synaptic events per image: mean {syn.mean():,.0f}")  # fmt: skip
        save(fig, "synaptic_events", "Synaptic events per image, the energy proxy: every update the event-driven core "
                                     "cannot avoid.")  # fmt: skip

    rpath = root / "golden" / "raster.npz"
    if rpath.exists() and T is not None:
        r = np.load(rpath)
        layers = [r[f"t{k}"] for k in range(len([f for f in r.files if f.startswith("t")]))]
        names = ["input"] + [f"{ly.kind} {k}" for k, ly in enumerate(tables.layers)]
        fig, axes = plt.subplots(1, len(layers), figsize=(2.3 * len(layers), 3.2), sharey=False)
        for ax, t, nm in zip(np.atleast_1d(axes), layers, names):
            flat = t.reshape(-1)
            idx = np.nonzero(flat < T)[0]
            ax.scatter(flat[idx], idx, s=1.5, c="k")
            ax.set(title=f"{nm}\n{len(idx)}/{flat.size} fired", xlabel="step", xlim=(-1, T))
        np.atleast_1d(axes)[0].set_ylabel("neuron (c, y, x order)")
        fig.suptitle(f"Spike raster of test image 0 (label {int(r['label'])}), golden model", fontsize=10)
        save(fig, "raster", "Spike raster of one test image: every layer's spike times (one spike per neuron at most).")

    cpath = root / "verilator" / "cycles.npy"
    if cpath.exists():
        c = np.load(cpath)
        v = state["steps"].get("verilator", {}).get("metrics", {})
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(c, bins=30, color="#a75")
        ax.set(xlabel=f"compute cycles per image (lanes = {v.get('lanes')})", ylabel="images",
               title=f"Cycles per image on the RTL: mean {c.mean():,.0f}, p99 {np.percentile(c, 99):,.0f}")  # fmt: skip
        save(fig, "cycles", "Compute cycles per image, measured on the RTL (Verilator).")
    return figs


# --- writers ---------------------------------------------------------------------------------
def _md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    out = ["| " + " | ".join(h for _k, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(k)) for k, _h in cols) + " |")
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


LADDER_COLS = [("rung", "rung"), ("accuracy_s", "accuracy"), ("images", "test images"),
               ("golden_s", "golden model, same images"), ("mismatches", "mismatches against the golden model")]  # fmt: skip
BOARD_COLS = [("board", "board"), ("device", "device"), ("lanes", "lanes"), ("luts", "LUTs / LCs"), ("ffs", "FFs"),
              ("bram", "block RAM"), ("dsp", "DSP"), ("fmax_mhz", "Fmax (MHz)"), ("clock_mhz", "clock (MHz)"),
              ("cycles", "compute cycles / image"), ("images_per_s_at_fmax", "images/s at Fmax"),
              ("images_per_s_at_clock", "images/s at clock"),
              ("error", "error")]  # fmt: skip


def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None, state: dict[str, Any] | None = None
                 ) -> list[Path]:  # fmt: skip
    """Write OUT/report.md, OUT/report.html and OUT/figures/*.png for the flow run ``root``."""
    from firstspike.flow import STATE, load_state, summary_lines

    root = Path(root)
    if state is None:
        if not (root / STATE).exists():
            raise ReportError(f"{root} is not a flow run folder (no {STATE}): run `firstspike flow --out {root}` first")
        state = load_state(root)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = None
    if (root / "quantize" / "model.fsm").exists():
        from firstspike.quantize.modelfile import load

        tables = load(root / "quantize" / "model.fsm")
    rows = ladder(state)
    for r in rows:
        r["accuracy_s"] = _pct(r.get("accuracy")) if r.get("accuracy") is not None else "n/a"
        r["golden_s"] = _pct(r["golden_same_images"]) if r.get("golden_same_images") is not None else ""
    brows = board_rows(state, tables)
    figs = _figures(root, out / "figures", state, tables)

    g = state["steps"].get("golden", {}).get("metrics")
    cfg = state.get("config", {})
    title = f"firstspike report: {tables.name if tables else 'run'} ({cfg.get('dataset', '')})"
    intro = []
    if tables is not None:
        intro.append(f"Model `{tables.name}`, T = {tables.T}, layers: {', '.join(ly.kind for ly in tables.layers)}; "
                     f"model file SHA-256 `{state['steps']['quantize']['metrics']['model_sha256'][:16]}...`."
                     + (" Layer windows (a window of T steps per layer, model file version 2)." if tables.windows != "off" else "")
                     + (" Decision by potential: the outputs never fire, and every image's class is the largest output "
                        "potential at the end of the output window (no early decision, so no latency figures)."
                        if outputs_never_fire(tables) else ""))  # fmt: skip
    if g:
        intro.append(f"Synaptic events per image (energy proxy): mean {g['synaptic_updates_mean']:,.0f}; "
                     f"neuron updates per image: {g['neuron_updates_mean']:,.0f}.")  # fmt: skip
    steps = summary_lines(state)

    md = [f"# {title}", "", *intro, "", "## Accuracy at every rung", "",
          "Every rung below the golden model is compared with it value by value: a mismatch count of 0 means the same "
          "spike times, not only the same class.", "", _md_table(rows, LADDER_COLS), "", "## Boards", ""]  # fmt: skip
    md.append(_md_table(brows, BOARD_COLS) if brows else "No bitstream built in this run (`firstspike flow` without --skip build).")
    md += ["", "## Figures", ""]
    for name, (p, cap) in figs.items():
        md += [f"![{name}](figures/{p.name})", "", f"*{cap}*", ""]
    md += ["## Steps", "", "```", *steps, "```", ""]
    md_path = out / "report.md"
    atomic_write(md_path, "\n".join(md))

    def table_html(rs: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
        cols = [(k, h) for k, h in cols if any(r.get(k) not in (None, "") for r in rs)]
        head = "".join(f"<th>{html.escape(h)}</th>" for _k, h in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k))).replace('**', '')}</td>" for k, _h in cols) + "</tr>"
                       for r in rs)  # fmt: skip
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    imgs = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for name, (p, cap) in figs.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #eef; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }}
figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 12px; color: #555; max-width: 540px; }}
pre {{ background: #f6f6f6; padding: 0.8em; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(f"<p>{html.escape(i).replace('`', '')}</p>" for i in intro)}
<h2>Accuracy at every rung</h2>
<p>Every rung below the golden model is compared with it value by value: a mismatch count of 0 means the same spike
times, not only the same class.</p>
{table_html(rows, LADDER_COLS)}
<h2>Boards</h2>
{table_html(brows, BOARD_COLS) if brows else "<p>No bitstream built in this run.</p>"}
<h2>Figures</h2>
{imgs}
<h2>Steps</h2>
<pre>{html.escape(chr(10).join(steps))}</pre>
</body></html>
"""
    html_path = out / "report.html"
    atomic_write(html_path, page)
    atomic_write(out / "report.json", json.dumps({"ladder": rows, "boards": brows}, indent=1, default=str) + "\n")
    log.info("wrote %s and %s (%d figures)", md_path, html_path, len(figs))
    return [md_path, html_path, out / "report.json", *[p for p, _c in figs.values()]]

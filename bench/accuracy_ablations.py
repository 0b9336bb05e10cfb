"""Ablations of the training recipe: one short run per variant, one setting changed at a time.

    python bench/accuracy_ablations.py --name clamp --set clamp_weights=true [--config csnn_ice40]
        [--epochs 4] [--train-subset 0] [--mode binary] [--seed 0]

``--set KEY=VALUE`` (repeatable) overrides a [train] setting (TrainConfig) or an
architecture/neuron setting (NetConfig: T, theta, calib_time, ...). Every run appends one
record to bench/results/accuracy_ablations.json (replacing a record of the same name):
test accuracy (whole test set, the model's decision rule), train accuracy (decision rule on
the first 10,000 training images, after training), mean first-output-spike step on
correctly classified test images, the last epoch's diagnostics, the epoch kept by the held-out
images with its held-out accuracy, and the run's whole resolved recipe (network and [train]
settings as resolved before training, less the seed and what does not change the result: device,
backend, evaluation batch, progress). ``--table`` prints the records as the markdown table of
docs/accuracy.md ("What moved accuracy"); ``--means`` the mean and spread over seeds of every
recipe run with more than one seed (records with the same resolved recipe, whatever config file or
``--set`` named it; docs/benchmarks.md shows it). ``--selection`` what keeping the epoch best on the
held-out images did to each run's test figure, against keeping the last epoch. ``--backfill`` completes older records: the
recipe resolved by the code of the commit that first held each record, the kept epoch from its
run folder (runs/ablations/NAME) or from a committed checkpoint under bench/results whose
per-epoch test curve and seed are the record's. ``--park --name NAME`` copies an unfinished run
to bench/results/in_progress/NAME (to commit: runs/ is not tracked); ``--resume`` on a fresh
checkout starts from that copy, and a finished run removes it.
Run with one thread (OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1) when the cores are shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, git_rev, setup_logging  # noqa: E402

log = logging.getLogger("bench.accuracy_ablations")
OUT = RESULTS / "accuracy_ablations.json"
PLOT = RESULTS / "accuracy_seeds.png"


def _parse(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return v


def _records() -> list[dict]:
    return json.loads(OUT.read_text()) if OUT.is_file() else []


# settings that do not change what a run learns: left out of its recipe
NOT_RECIPE = {"net": ("name",),
              "train": ("seed", "data_dir", "diagnostics", "device", "backend", "eval_batch", "fused", "progress")}  # fmt: skip

# the resolution of a record's settings, as main() does it; also run by the code of an older commit
# (``recipes_at``), so only APIs every commit has: load_config, TrainConfig.from_dict, to_dict, asdict
RESOLVE = """
import dataclasses, inspect, json, os, sys
# only the old tree's code: not this checkout's editable install
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", type(f).__module__).lower()]
import firstspike.train.model
if not firstspike.train.model.__file__.startswith(os.environ["PYTHONPATH"]):
    raise ImportError(f"firstspike.train from {firstspike.train.model.__file__}, not from the commit's tree")
from firstspike.train.model import load_config
from firstspike.train.trainer import TrainConfig
out = {}
for r in json.loads(sys.stdin.read()):
    try:
        cfg, tab = load_config(r["path"])
        cfg.mode = r["mode"]
        many = len(inspect.signature(TrainConfig.from_dict).parameters) > 1
        tc = TrainConfig.from_dict(tab, cfg.mode) if many else TrainConfig.from_dict(tab)
        tc.train_subset, tc.seed = r["train_subset"], r["seed"]
        for k, v in r["changes"].items():
            obj = tc if hasattr(tc, k) else cfg if hasattr(cfg, k) else None
            if obj is None:
                raise AttributeError(k)
            old = getattr(obj, k)
            setattr(obj, k, float(v) if isinstance(old, float) and not isinstance(old, bool) else v)
        # a record counts the output refit's epochs (binary mode) with the training's
        tc.epochs = max(r["epochs"] - (getattr(tc, "refit_epochs", 0) if cfg.mode == "binary" else 0), 0)
        out[r["name"]] = {"net": cfg.to_dict(), "train": dataclasses.asdict(tc)}
    except BaseException as e:  # older code exits on a bad config
        out[r["name"]] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def recipe_from(resolved: dict) -> dict:
    """A run's recipe: its resolved network and [train] settings less the seed and the settings that
    do not change the result (NOT_RECIPE); settings its code did not have yet take today's defaults
    (every option is added switched off, at the behaviour before it)."""
    from dataclasses import asdict

    from firstspike.train.model import LayerSpec, NetConfig
    from firstspike.train.trainer import TrainConfig

    now = {"net": NetConfig(name="", layers=[]).to_dict(), "train": asdict(TrainConfig())}
    out = {part: {k: v for k, v in {**now[part], **resolved[part]}.items() if k not in NOT_RECIPE[part]}
           for part in ("net", "train")}  # fmt: skip
    layer = asdict(LayerSpec(kind="fc"))
    out["net"]["layers"] = [{**layer, **spec} for spec in out["net"]["layers"]]
    return out


def recipe_id(recipe: dict) -> str:
    """A short hash of a recipe (equal recipes, equal ids)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def _query(r: dict) -> dict:
    return {"name": r["name"], "path": r["config"], "mode": r["mode"], "epochs": r["epochs"], "seed": r["seed"],
            "train_subset": 0 if r["train_images"] == 60000 else r["train_images"], "changes": r["changes"]}  # fmt: skip


def recipes_at(commit: str | None, records: list[dict]) -> dict[str, dict]:
    """Each record's settings resolved by the code of ``commit`` (RESOLVE in a copy of that tree;
    None: this checkout's files as they are): name -> {"net": ..., "train": ...} or {"error": ...}.
    A config file the tree lacks (one under runs/, never committed) is read from this checkout."""
    import io
    import os
    import subprocess
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recipes_") as tmp:
        tree, farm = (Path(tmp) / "tree" if commit else ROOT), Path(tmp) / "farm"
        if commit:
            arc = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
            tree.mkdir()
            with tarfile.open(fileobj=io.BytesIO(arc)) as tf:
                tf.extractall(tree, filter="data")
        pkg = farm / "firstspike"
        shutil.copytree(tree / "firstspike", pkg)
        for sub in ("train", "quantize", "hw", "sim", "boards"):
            if (tree / sub).is_dir():
                (pkg / sub).symlink_to(tree / sub)
        qs = []
        for r in records:
            q = _query(r)
            if q["path"].endswith(".toml"):  # a file: the tree's, else this checkout's (runs/ is not committed)
                q["path"] = str(tree / q["path"] if (tree / q["path"]).is_file() else ROOT / q["path"])
            qs.append(q)
        env = {**os.environ, "PYTHONPATH": str(farm)}
        res = subprocess.run([sys.executable, "-c", RESOLVE], input=json.dumps(qs), cwd=farm, env=env,
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode:
            return {r["name"]: {"error": res.stderr.strip().splitlines()[-1]} for r in records}
        got = json.loads(res.stdout.strip().splitlines()[-1])
        for g in got.values():  # no machine's paths in the results
            if "error" in g:
                g["error"] = g["error"].replace(f"{tree}/", "").replace(f"{ROOT}/", "")
        return got


def selection_of(ck: dict) -> dict:
    """The epoch the held-out images kept (the last one without them), its held-out accuracy and
    the per-epoch held-out curve (None where a run held nothing out)."""
    hist = ck["history"]
    kept = ck.get("selected_epoch") or (ck.get("best") or {}).get("epoch") or ck["epoch"]
    val = [h.get("val_acc") for h in hist]
    at = next((v for h, v in zip(hist, val) if h["epoch"] == kept), None)
    return {"kept_epoch": kept, "val_acc": at, "val_curve": val}


def identify(rec: dict, ck: dict) -> bool:
    """Whether a checkpoint is the run of a record: the same seed and the same test accuracy after
    every epoch."""
    return (ck.get("train", {}).get("seed") == rec.get("seed")
            and [h["test_acc"] for h in ck.get("history", [])] == rec.get("test_curve"))  # fmt: skip


def first_commits() -> dict[str, tuple[str, dict]]:
    """Record name -> the first commit whose accuracy_ablations.json holds it (the code its run used,
    or the nearest committed state of it) and the record as that commit has it (a config renamed
    since, e.g. csnn_ice40 -> csnn_ice40_pool, has its old name there)."""
    import subprocess

    rel = str(OUT.relative_to(ROOT))
    try:
        shas = subprocess.run(["git", "-C", str(ROOT), "log", "--reverse", "--format=%H", "--", rel],
                              check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--backfill reads the records' history from git ({e}); run it in a git clone of the "
                         "project, not in an unpacked archive") from e
    first: dict[str, tuple[str, dict]] = {}
    for sha in shas:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{sha}:{rel}"], capture_output=True, text=True).stdout
        for r in json.loads(text or "[]"):
            first.setdefault(r["name"], (sha, r))
    return first


def backfill(records: list[dict], run_root: Path, checkpoints: list[Path]) -> tuple[int, int]:
    """Complete older records: the epoch kept and its held-out accuracy from the record's run folder
    or from one of ``checkpoints`` that is its run (``identify``), the recipe resolved by the code of
    the commit that first held the record (``recipes_at``; a record no commit holds yet: this
    checkout's code). Returns (selections added, recipes added);
    a record whose settings no longer resolve gets ``recipe_error`` instead."""
    from firstspike.train.trainer import load_checkpoint

    cands: list[dict] | None = None
    n_sel = 0
    for r in records:
        if "kept_epoch" in r:
            continue
        ck = None
        p = run_root / r["name"].replace("/", "_") / "checkpoint.pt"
        if p.is_file():
            ck = load_checkpoint(p)
            if not identify(r, ck):  # the folder holds a later run of the same name
                ck = None
        if ck is None:
            if cands is None:
                cands = [load_checkpoint(c) for c in checkpoints]
            ck = next((c for c in cands if identify(r, c)), None)
        if ck is not None:
            r.update(selection_of(ck))
            n_sel += 1
    todo = [r for r in records if "recipe" not in r]
    first = first_commits() if todo else {}
    by_commit: dict[str | None, list[dict]] = {}
    for r in todo:
        by_commit.setdefault(first[r["name"]][0] if r["name"] in first else None, []).append(r)
    n_rec = 0
    for sha, rs in by_commit.items():
        got = recipes_at(sha, [{**r, **first[r["name"]][1]} if r["name"] in first else r for r in rs])
        for r in rs:
            g = got.get(r["name"], {"error": "not resolved"})
            if "error" in g:
                r["recipe_error"] = g["error"]
                continue
            r.pop("recipe_error", None)
            r.update({"recipe": recipe_from(g), "recipe_commit": sha[:12] if sha else git_rev()[:12] + "+"})
            n_rec += 1
    return n_sel, n_rec


def seed_means(records: list[dict], min_seeds: int = 2) -> list[dict]:
    """Records grouped by resolved recipe (records without one left out), one run per seed (the
    latest record of a seed), groups of at least ``min_seeds`` seeds: the mean and sample standard
    deviation of the test accuracies and the mean training accuracy, in the order of their first
    record."""
    groups: dict[str, dict[int, dict]] = {}
    for r in records:
        if "recipe" in r:
            groups.setdefault(recipe_id(r["recipe"]), {})[r["seed"]] = r

    out = []
    for rid, by_seed in groups.items():
        if len(by_seed) < min_seeds:
            continue
        runs = [by_seed[s] for s in sorted(by_seed)]
        test, train = [r["test_acc"] for r in runs], [r["train_acc"] for r in runs]
        labels = list(dict.fromkeys(
            f"{r['config']}" + (" " + ", ".join(f"{k}={v}" for k, v in r["changes"].items()) if r["changes"] else "")
            for r in runs))  # fmt: skip
        rc = runs[0]["recipe"]
        refit = rc["train"]["refit_epochs"] if rc["net"]["mode"] == "binary" else 0
        out.append({"id": rid, "labels": labels, "dataset": rc["train"]["dataset"], "mode": rc["net"]["mode"],
                    "epochs": rc["train"]["epochs"], "refit_epochs": refit, "train_images": runs[0]["train_images"],
                    "seeds": [r["seed"] for r in runs], "names": [r["name"] for r in runs], "test": test,
                    "kept": [r.get("kept_epoch") for r in runs], "test_mean": statistics.fmean(test),
                    "test_sd": statistics.stdev(test) if len(test) > 1 else math.nan,
                    "train_mean": statistics.fmean(train)})  # fmt: skip
    return out


def means_table(groups: list[dict]) -> str:
    """The markdown table of ``seed_means``."""
    lines = ["| recipe (config and settings; one resolved recipe) | dataset, weights | epochs x images | seeds | test per seed (epoch kept) | **test mean +- sd** | train (first 10,000) mean |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in groups:
        per = ", ".join(f"{100 * t:.2f}" + (f" ({k})" if k else "") for t, k in zip(g["test"], g["kept"]))
        ep = f"{g['epochs']}" + (f" + {g['refit_epochs']} refit" if g["refit_epochs"] else "")
        lines.append(f"| {' = '.join(g['labels'])} (`{g['id']}`) | {g['dataset']}, {g['mode']} | {ep} x "
                     f"{g['train_images']} | {', '.join(map(str, g['seeds']))} | {per} | "
                     f"**{100 * g['test_mean']:.2f}% +- {100 * g['test_sd']:.2f}** | {100 * g['train_mean']:.2f}% |")  # fmt: skip
    return "\n".join(lines)


def selection_effect(records: list[dict], min_epochs: int = 8) -> tuple[list[dict], dict]:
    """What keeping the epoch best on the held-out images did to the test figure, against keeping
    the last epoch: one row per run of at least ``min_epochs`` epochs with a held-out curve, and a
    summary (runs, runs that kept their last epoch, mean and extremes of last - kept)."""
    rows = []
    for r in records:
        curve, kept = r.get("test_curve") or [], r.get("kept_epoch")
        if r["epochs"] < min_epochs or not kept or not any(v is not None for v in r.get("val_curve") or []):
            continue
        rows.append({"name": r["name"], "epochs": len(curve), "kept": kept, "test_kept": curve[kept - 1],
                     "test_last": curve[-1], "delta": curve[-1] - curve[kept - 1]})  # fmt: skip
    d = [row["delta"] for row in rows]
    summary = {"runs": len(rows), "kept_last": sum(row["kept"] == row["epochs"] for row in rows),
               "mean_delta": statistics.fmean(d) if d else math.nan, "last_better": sum(x > 0 for x in d),
               "last_worse": sum(x < 0 for x in d), "max_delta": max(d, default=math.nan),
               "min_delta": min(d, default=math.nan)}  # fmt: skip
    return rows, summary


def selection_table(rows: list[dict], summary: dict) -> str:
    """The markdown table of ``selection_effect`` with its summary line."""
    lines = ["| run | epochs | kept (held-out best) | test at kept | test at last | last - kept |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['epochs']} | {r['kept']} | {100 * r['test_kept']:.2f}% | {100 * r['test_last']:.2f}% | "
              f"{100 * r['delta']:+.2f} |" for r in rows]  # fmt: skip
    s = summary
    lines.append(f"\n{s['runs']} runs; {s['kept_last']} kept their last epoch; last - kept: mean "
                 f"{100 * s['mean_delta']:+.3f} points, last better in {s['last_better']}, worse in {s['last_worse']} "
                 f"(from {100 * s['min_delta']:+.2f} to {100 * s['max_delta']:+.2f}).")  # fmt: skip
    return "\n".join(lines)


def table(records: list[dict]) -> str:
    lines = ["| name | config | mode | changes | epochs x images | test acc | train acc | latency (correct) | no output spike | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        ch = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(defaults)"
        lines.append(
            f"| {r['name']} | {r['config']} | {r['mode']} | {ch} | {r['epochs']} x {r['train_images']} | "
            f"**{100 * r['test_acc']:.2f}%** | {100 * r['train_acc']:.2f}% | {r['latency_correct']:.1f} / {r['T']} | "
            f"{100 * r['no_output_spike']:.1f}% | {r['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


GOALS = {("mnist", "binary"): {"goal csnn": 0.986, "goal iCE40 net": 0.97}, ("mnist", "real"): {"goal csnn": 0.992},
         ("fashion-mnist", "binary"): {"goal csnn": 0.92}, ("fashion-mnist", "real"): {"goal csnn": 0.928}}  # issue 12


def plot_means(groups: list[dict], path: Path, min_images: int = 60000, min_seeds: int = 3,
               min_epochs: int = 10) -> Path | None:  # fmt: skip
    """One row per full-length recipe (the whole training set, at least ``min_epochs`` epochs; not
    the short screens) with at least ``min_seeds`` seeds: each seed's test accuracy (dots), the
    mean (bar) and the goals of its dataset and weights (dashed); None when there is nothing to draw."""
    gs = [g for g in groups
          if g["train_images"] >= min_images and len(g["seeds"]) >= min_seeds and g["epochs"] >= min_epochs]  # fmt: skip
    if not gs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(g["dataset"], g["mode"]) for g in gs})
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.2 + 0.45 * len(gs) + 0.6 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": [sum((g["dataset"], g["mode"]) == p for g in gs) + 1 for p in panels]})  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels):
        rows = [g for g in gs if (g["dataset"], g["mode"]) == panel]
        for i, g in enumerate(rows):
            ax.plot([100 * t for t in g["test"]], [i] * len(g["test"]), "o", color="tab:blue", alpha=0.7)
            ax.plot([100 * g["test_mean"]] * 2, [i - 0.3, i + 0.3], color="black", lw=2)
        for (what, goal), color in zip(GOALS.get(panel, {}).items(), ("tab:red", "tab:orange")):
            ax.axvline(100 * goal, ls="--", color=color, label=f"{what} {100 * goal:.1f}%")
        if panel in GOALS:
            ax.legend(loc="best", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{min(g['labels'], key=len)[:44]} ({g['epochs']} ep.)" for g in rows], fontsize=7)
        ax.set_title(f"{panel[0]}, {panel[1]} weights: each seed (dots), their mean (bar)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("test accuracy (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _refresh_docs() -> None:
    """The seeds' plot and docs/benchmarks.md from the records."""
    from report import render_docs

    plot_means(seed_means(_records()), PLOT)
    render_docs()


def resolve(config: str, mode: str | None, epochs: int, train_subset: int, seed: int, sets: list[str]):
    """(NetConfig, TrainConfig, changes) of a run: the config's settings in ``mode``, the run's
    epochs, images and seed, and the ``KEY=VALUE`` overrides (parsed to the setting's type)."""
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig

    cfg, tab = load_config(config)
    if mode:
        cfg.mode = mode
    tc = TrainConfig.from_dict(tab, cfg.mode)
    tc.epochs, tc.train_subset, tc.seed, tc.progress = epochs, train_subset, seed, False
    changes = {}
    for kv in sets:
        k, v = kv.split("=", 1)
        obj = tc if hasattr(tc, k) else cfg if hasattr(cfg, k) else None
        if obj is None:
            raise SystemExit(f"unknown setting {k!r}")
        old = getattr(obj, k)
        val = v if isinstance(old, str) else _parse(v)
        if isinstance(old, bool):
            val = bool(val)
        elif isinstance(old, float):
            val = float(val)
        setattr(obj, k, val)
        changes[k] = val
    cfg.validate()
    return cfg, tc, changes


PARKED = RESULTS / "in_progress"
_PARKED_FILES = ("checkpoint.pt", "history.json", "command.txt")


def _parked_table(parked: Path) -> str:
    """The in_progress README's table rows: one per parked run (its epochs so far and the command)."""
    rows = []
    for d in sorted(p for p in parked.iterdir() if (p / "checkpoint.pt").exists()):
        hist = json.loads((d / "history.json").read_text()) if (d / "history.json").exists() else []
        cmd = (d / "command.txt").read_text().strip() if (d / "command.txt").exists() else "(not recorded)"
        last = f", test {100 * hist[-1]['test_acc']:.2f}% after the last" if hist else ""
        rows.append(f"| {d.name} | `{cmd}` | {len(hist)} epochs done{last} |")
    return "\n".join(rows)


def _copy_run(src: Path, dst: Path) -> None:
    """A run folder's checkpoint, history and command (those present) from ``src`` to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in _PARKED_FILES:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)


def park(name: str, runs: Path, parked: Path = PARKED) -> Path:
    """Copy the unfinished run runs/NAME (its last checkpoint, history and command) to ``parked``
    / NAME, committed so that a fresh checkout can resume it, and list it in the README's table
    there (rows between the table's header and the first blank line after it are regenerated)."""
    src = runs / name.replace("/", "_")
    if not (src / "checkpoint.pt").exists():
        raise SystemExit(f"--park: {src} has no checkpoint.pt (a run stopped before its first epoch ends has none)")
    dst = parked / src.name
    tmp = parked / f".{src.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _copy_run(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    _write_parked_readme(parked)
    return dst


def _write_parked_readme(parked: Path) -> None:
    readme = parked / "README.md"
    if not readme.exists():
        return
    lines = readme.read_text().splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.startswith("|---")), None)
    if head is None:
        return
    end = next((i for i in range(head + 1, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = _parked_table(parked)
    readme.write_text("\n".join(lines[: head + 1] + ([rows] if rows else []) + lines[end:]) + "\n")


def unpark(name: str, runs: Path, parked: Path = PARKED) -> bool:
    """Before a --resume: if runs/NAME has no checkpoint and ``parked`` / NAME has one, copy it
    back (a fresh checkout). Returns whether it did."""
    dst, src = runs / name.replace("/", "_"), parked / name.replace("/", "_")
    if (dst / "checkpoint.pt").exists() or not (src / "checkpoint.pt").exists():
        return False
    _copy_run(src, dst)
    return True


def unpark_finished(name: str, parked: Path = PARKED) -> bool:
    """After a run finished: drop its parked copy (and its README row). Returns whether there was one."""
    src = parked / name.replace("/", "_")
    if not src.exists():
        return False
    shutil.rmtree(src)
    _write_parked_readme(parked)
    return True


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default=None)
    ap.add_argument("--config", default="csnn_ice40")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action="store_true",
                    help="continue runs/ablations/NAME from its last epoch's checkpoint (after a kill; same settings)")
    ap.add_argument("--park", action="store_true",
                    help="copy the unfinished run runs/ablations/NAME to bench/results/in_progress/NAME (to commit; "
                         "a later --resume on a fresh checkout starts from it) and exit")  # fmt: skip
    ap.add_argument("--table", action="store_true", help="print the table of the stored records and exit")
    ap.add_argument("--means", action="store_true", help="print the mean and spread over seeds of each recipe and exit")
    ap.add_argument("--selection", action="store_true",
                    help="print what keeping the held-out images' best epoch did to each run's test figure, "
                         "against keeping its last epoch, and exit")  # fmt: skip
    ap.add_argument("--backfill", action="store_true",
                    help="complete older records and exit: the recipe resolved by the code of the commit that first "
                         "held each, the kept epoch from runs/ablations/NAME or a matching checkpoint under bench/results")  # fmt: skip
    args = ap.parse_args()
    runs = ROOT / "runs" / "ablations"
    if args.park:
        if not args.name:
            raise SystemExit("--park needs --name NAME (the run folder under runs/ablations)")
        log.info("parked %s (commit it)", park(args.name, runs).relative_to(ROOT))
        return
    if args.table:
        print(table(_records()))
        return
    if args.means:
        print(means_table(seed_means(_records())))
        return
    if args.selection:
        print(selection_table(*selection_effect(_records())))
        return
    if args.backfill:
        recs = _records()
        n_sel, n_rec = backfill(recs, ROOT / "runs" / "ablations", sorted(RESULTS.glob("*.pt")))
        OUT.write_text(json.dumps(recs, indent=1))
        log.info("kept epochs added to %d records, recipes to %d; %d of %d records have no recipe", n_sel, n_rec,
                 sum("recipe" not in r for r in recs), len(recs))  # fmt: skip
        _refresh_docs()
        return

    from dataclasses import asdict

    import torch

    from firstspike.data import load_split
    from firstspike.train.trainer import evaluate, model_from_checkpoint, train

    cfg, tc, changes = resolve(args.config, args.mode, args.epochs, args.train_subset, args.seed, args.set)
    resolved = {"net": cfg.to_dict(), "train": asdict(tc)}  # before training: what RESOLVE gives for this record
    name = args.name or ("default" if not changes else ",".join(f"{k}={v}" for k, v in changes.items()))
    out = runs / name.replace("/", "_")
    if args.resume and unpark(name, runs):
        log.info("resuming from the parked copy %s", (PARKED / out.name).relative_to(ROOT))
    out.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    (out / "command.txt").write_text("python bench/accuracy_ablations.py --resume " + shlex.join(argv) + "\n")
    t0 = time.time()
    ck = train(cfg, tc, out, resume=args.resume)
    if unpark_finished(name):
        log.info("the run finished: its parked copy under %s is removed (commit that)", PARKED.relative_to(ROOT))
    model = model_from_checkpoint(ck)
    tr = load_split(tc.dataset, "train", tc.data_dir)
    xtr, ytr = torch.from_numpy(tr.images[:10000].copy()), torch.from_numpy(tr.labels[:10000].copy())
    train_acc = evaluate(model, xtr, ytr, tc.eval_batch)
    last = ck["history"][-1]
    d = last.get("diag", {})
    rec = {
        "name": name, "config": args.config, "mode": cfg.mode, "T": cfg.T, "changes": changes, "seed": args.seed,
        "epochs": ck["epoch"], "train_images": tc.train_subset or 60000, "test_acc": ck["test_acc"],
        "train_acc": train_acc, "latency_correct": d.get("latency_correct", float("nan")),
        "no_output_spike": d.get("no_output_spike", float("nan")),
        "seconds_per_epoch": sum(h["seconds"] for h in ck["history"]) / len(ck["history"]),
        "wall_s": time.time() - t0, "test_curve": [h["test_acc"] for h in ck["history"]], "diag": d,
        **selection_of(ck), "recipe": recipe_from(resolved), "recipe_commit": git_rev()[:12],
    }  # fmt: skip
    recs = [r for r in _records() if r["name"] != name] + [rec]
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(recs, indent=1))
    log.info("%s: test %.2f%% train %.2f%% latency %.1f/%d curve %s", name, 100 * rec["test_acc"], 100 * train_acc,
             rec["latency_correct"], cfg.T, [round(100 * a, 1) for a in rec["test_curve"]])  # fmt: skip
    _refresh_docs()


if __name__ == "__main__":
    main()

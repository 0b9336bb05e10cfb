"""The ``firstspike`` command line: one subcommand per stage of the flow."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from firstspike.errors import FirstSpikeError

log = logging.getLogger("firstspike")
DUMP_FORMAT = 2  # eval --dump: 2 = "input" + "layerK" for model layer K (1 named the input "layer0")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a TTFS CSNN with STiDi-BP",
        description="Train a spiking CNN (real or binary weights) and write OUT/checkpoint.pt and "
        "OUT/history.json after every epoch. Rerunning with the same --out resumes. Multi-process: "
        "`torchrun --nproc-per-node N -m firstspike train ...`.",
    )
    import importlib.util

    configs = Path(importlib.util.find_spec("firstspike.train").submodule_search_locations[0]) / "configs"  # no torch import
    built_in = ", ".join(sorted(q.stem for q in configs.glob("*.toml")))
    p.add_argument("--config", default="csnn", help=f"architecture TOML file or built-in name ({built_in})")
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: from config, else mnist)")
    p.add_argument("--data-dir", default=None, help="folder of standard IDX files (overrides --dataset's folder)")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoint, history)")
    p.add_argument("--mode", choices=["binary", "real"], help="weight mode (default: from config)")
    p.add_argument("--T", type=int, help="time steps per layer window (default: from config)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the config's); the output refit's come after")
    p.add_argument("--refit-epochs", type=int, help="epochs of the output refit after them (default: the config's; 0: none)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--schedule", choices=["cosine", "step", "none"])
    p.add_argument("--loss", choices=["relative", "tce", "ce", "potential"], help="output loss (default: the config's)")
    p.add_argument("--gamma", type=float, help="loss margin in time steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--distill", metavar="CHECKPOINT", help="a trained network of the same inputs and classes (e.g. "
                   "the real-valued run) that teaches this one through its output spike times (docs/guide.md)")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from a trained network of the same layers "
                   "instead of the calibration (e.g. a binary run from the real-valued one: latent weights w / max|w|, "
                   "scales mean|w|; docs/accuracy.md, \"Forty-eighth session\")")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", choices=["auto", "numba", "torch"], help="numba: event-driven CPU kernels; torch: any device")
    p.add_argument("--autograd", action="store_true", help="train through autograd, not the fused CPU step "
                   "(train/fused.py: the same gradients, about twice as fast)")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--val-images", type=int, help="hold out the last N training images and keep the epoch best on "
                   "them (model selection without the test set)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="checkpoint -> versioned model file (spike-time tables)",
        description="Write the integer network of a trained checkpoint as one self-describing model file: "
        "binary networks exactly (+-1 weights, integer thresholds), real-valued ones as fixed-point.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `firstspike train`")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.fsm)")
    p.add_argument("--weight-bits", type=int, default=None, help="real-valued networks: fixed-point width 2..16 (default 8)")


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="human-readable summary of a model file")
    p.add_argument("model", help="model file written by `firstspike quantize`")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of a checkpoint (float forward pass) or a model file (integer golden model)",
        description="A model file runs on the integer golden model (what the hardware runs); --dump writes "
        "every layer's spike times for chosen images (the RTL test vectors).",
    )
    p.add_argument("model", help="checkpoint.pt (`firstspike train`) or model file (`firstspike quantize`)")
    p.add_argument("--dump", default=None, help="model files: write images, labels, classes and every layer's spike times (.npz)")
    p.add_argument("--dump-images", default="0:16", help="which test images to dump: START:STOP or comma-separated indices")
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, help="folder of standard IDX files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true")


POSITIONS_HELP = ("output positions per state word in the layers that allow it (stride-1 conv with even pooling): "
                  "2 updates neighbours x, x+1 in one cycle (twice the adders and state width, fewer cycles)")
READ_REG_HELP = ("register the state and weight reads before the add: one more pipeline stage (a higher Fmax, "
                 "more flip-flops, one more cycle a step)")


def _add_hw(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hw",
        help="model file -> Verilog of the event-driven core (Amaranth)",
        description="Generate the core sized from the model file's tables: OUT/firstspike_core.v and OUT/core.json "
        "(memories, widths, lanes, the debug stream's layout).",
    )
    p.add_argument("model", help="model file written by `firstspike quantize`")
    p.add_argument("-o", "--out", default="build/hw", help="output folder")
    p.add_argument("--lanes", type=int, default=16, help="output channels updated per cycle (area vs speed)")
    p.add_argument("--positions", type=int, choices=[1, 2], default=1, help=POSITIONS_HELP)
    p.add_argument("--read-reg", action="store_true", help=READ_REG_HELP)
    p.add_argument("--no-debug", action="store_true", help="leave out the debug port (every layer's spike times)")
    p.add_argument("--early-exit", action="store_true", help="stop once the class is known (with the debug port: per image, where the exit_early input is high at start)")


def _add_bitstream_options(p: argparse.ArgumentParser) -> None:
    """What `build` and `deploy` share: the bitstream's parameters."""
    from firstspike.boards.protocol import DEFAULT_BAUD

    p.add_argument("-o", "--out", default="build/boards")
    p.add_argument("--lanes", type=int, default=None, help="core lanes (default: the board's: icebreaker 2, ulx3s 64, "
                   "orangecrab 64)")
    p.add_argument("--positions", type=int, choices=[1, 2], default=None,
                   help=POSITIONS_HELP + " (default: the board's: 2 on the ulx3s where it fits the block RAM, else 1)")
    p.add_argument("--read-reg", action=argparse.BooleanOptionalAction, default=None,
                   help=READ_REG_HELP + " (default: the board's: on for the icebreaker)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"UART baud rate (default {DEFAULT_BAUD:,})")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="core clock in MHz, made by the board's PLL from the board clock (default: icebreaker 30, "
                   "ulx3s 45, orangecrab 66)")
    p.add_argument("--spikes", action=argparse.BooleanOptionalAction, default=None,
                   help="build in the spike readout: every layer's spike times over the UART (default: on for the "
                   "ECP5 boards, off for the icebreaker, whose block RAM is too small for it)")


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="model file -> bitstream for an open board (Yosys + nextpnr from PyPI/YoWASP)",
        description="Synthesise the core behind a UART link for BOARD; writes OUT/BOARD/work/firstspike.bin|.bit and "
        "OUT/BOARD/build.json (LUTs, FFs, block RAM, DSP, Fmax from nextpnr's report).",
    )
    p.add_argument("model", help="model file written by `firstspike quantize`")
    p.add_argument("--board", default="icebreaker", help="icebreaker, ulx3s or orangecrab (boards.build.BOARDS)")
    _add_bitstream_options(p)


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="build, program the board (iceprog / openFPGALoader / dfu-util) and check it over UART",
        description="Build the bitstream for BOARD, program it with the board's open programmer and, with --port, "
        "check over UART that the board runs this model file.",
    )
    p.add_argument("model", help="model file written by `firstspike quantize`")
    p.add_argument("--board", default="icebreaker", help="icebreaker, ulx3s or orangecrab (boards.build.BOARDS)")
    p.add_argument("--port", default=None, help="serial port of the board's UART (e.g. /dev/ttyUSB1)")
    _add_bitstream_options(p)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="RTL simulation (Verilator or Icarus, cocotb) compared bit for bit with the golden model",
        description="Run test images through the generated core in parallel simulations and compare every "
        "layer's spike times, the output potentials and the class with the integer golden model. Exit status 1 "
        "on any mismatch.",
    )
    p.add_argument("model", help="model file written by `firstspike quantize`")
    p.add_argument("--sim", default="verilator", choices=["verilator", "icarus", "both"])
    p.add_argument("--images", type=int, default=100, help="first N test images (0 = all)")
    p.add_argument("--all", action="store_true", help="the whole test set (same as --images 0)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel simulations")
    p.add_argument("--lanes", type=int, default=16)
    p.add_argument("--positions", type=int, choices=[1, 2], default=1, help=POSITIONS_HELP)
    p.add_argument("--read-reg", action="store_true", help=READ_REG_HELP + " (as the icebreaker's build)")
    p.add_argument("--chunk", type=int, default=250, help="images per simulation run")
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: the model's)")
    p.add_argument("--data-dir", default=None, help="folder of standard IDX files")
    p.add_argument("--build-dir", default="build/sim", help="where compiled simulators are cached")
    p.add_argument("--gate-level", choices=["ice40", "ecp5"], default=None,
                   help="simulate Yosys's post-synthesis netlist for this FPGA family (Verilator) instead of the RTL")
    p.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    p.add_argument("--no-progress", action="store_true")


def _add_flow(sub: argparse._SubParsersAction) -> None:
    import dataclasses

    from firstspike.flow import STEP_NAMES, FlowConfig

    p = sub.add_parser(
        "flow",
        help="the whole pipeline, train -> board, as cached steps; ends with the report",
        description="Train, quantize, run the golden model, generate the core, verify it on Verilator, Icarus and at "
        "gate level, build the bitstreams, run the virtual board (and a real one with --port), then write "
        "OUT/report/report.html and report.md. Steps are cached by content hash: rerunning only redoes what changed. "
        f"Steps: {', '.join(STEP_NAMES)}.",
    )
    helps = {"out": "run folder", "config": "architecture (built-in name or TOML)", "epochs": "binary training epochs (default: the config's)",
             "refit_epochs": "output-refit epochs after them (default: the config's; 0: none)",
             "real_epochs": "epochs of the float real-valued rung (0: skip it)", "lr": "learning rate (default: config's)",
             "train_subset": "first N training images (0: all)", "test_subset": "first N test images (0: all)",
             "lanes": "core lanes (RTL and bitstreams)", "boards": "comma-separated boards to build (empty: none)",
             "port": "serial port of a real board running this model",
             "jobs": "steps run at once (worker processes), and parallel simulations within a step",
             "gate_family": "FPGA families simulated at gate level (auto: those of --boards)"}  # fmt: skip
    for f in dataclasses.fields(FlowConfig):
        if f.name == "progress":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "boards":
            p.add_argument(flag, default=",".join(f.default), help=helps[f.name])
        else:
            typ = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
            p.add_argument(flag, type=typ, default=f.default, help=helps.get(f.name, f.name.replace("_", " ")),
                           choices={"gate_family": ["auto", "ice40", "ecp5", "all"], "dataset": ["mnist", "fashion-mnist"]}.get(f.name))
    p.add_argument("--skip", default="", help="comma-separated steps not to run")
    p.add_argument("--rerun", default="", help="comma-separated steps to run even if cached")
    p.add_argument("--only", default="", help="run only these steps (their inputs must exist)")
    p.add_argument("--no-progress", action="store_true")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report.md + report.html of a flow run (accuracy ladder, boards, plots)")
    p.add_argument("run", nargs="?", default="runs/flow", help="flow run folder")
    p.add_argument("-o", "--out", default=None, help="output folder (default RUN/report)")


def _csv(v: str) -> tuple[str, ...]:
    return tuple(x for x in v.split(",") if x)


def _flow_only(r: logging.LogRecord) -> bool:
    return r.levelno >= logging.WARNING or r.name in ("firstspike", "firstspike.flow")


@contextlib.contextmanager
def _flow_log(out: Path, verbose: bool):
    """The flow's console shows its own step lines, warnings and errors (and progress bars);
    every log line of every stage goes to OUT/flow.log. ``verbose``: everything on the console too."""
    out.mkdir(parents=True, exist_ok=True)
    detail = logging.FileHandler(out / "flow.log")
    detail.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    console = [] if verbose else list(root.handlers)
    for h in console:
        h.addFilter(_flow_only)
    root.addHandler(detail)
    log.info("details of every step: %s", out / "flow.log")
    try:
        yield
    finally:
        root.removeHandler(detail)
        detail.close()
        for h in console:
            h.removeFilter(_flow_only)


def cmd_flow(a: argparse.Namespace) -> int:
    import dataclasses

    from firstspike.flow import FlowConfig, run_flow, summary_lines, total_mismatches

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(FlowConfig) if f.name != "progress"}
    kw["boards"] = _csv(a.boards)
    cfg = FlowConfig(**kw, progress=not a.no_progress)
    with _flow_log(Path(cfg.out), verbose=a.verbose):
        state = run_flow(cfg, skip=_csv(a.skip), rerun=_csv(a.rerun), only=_csv(a.only))
    print("\n".join(summary_lines(state)))
    print(f"report: {Path(cfg.out) / 'report' / 'report.html'}")
    bad = total_mismatches(state)
    if bad:
        log.error("%d mismatches against the golden model: see the report", bad)
    return 1 if bad else 0


def cmd_report(a: argparse.Namespace) -> int:
    from firstspike.report import write_report

    paths = write_report(a.run, a.out)
    print("\n".join(str(p) for p in paths[:2]))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, train

    net_cfg, train_table = load_config(a.config)
    if a.mode is not None:
        net_cfg.mode = a.mode
    if a.T is not None:
        net_cfg.T = a.T
    net_cfg.validate()
    tc = TrainConfig.from_dict(train_table, net_cfg.mode)
    overrides = {
        "dataset": a.dataset, "data_dir": a.data_dir, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
        "optimizer": a.optimizer, "schedule": a.schedule, "loss": a.loss, "gamma": a.gamma, "seed": a.seed,
        "device": a.device, "backend": a.backend, "train_subset": a.train_subset, "test_subset": a.test_subset,
        "val_images": a.val_images, "distill": a.distill, "init_from": a.init_from,
    }  # fmt: skip
    for k, v in overrides.items():
        if v is not None:
            setattr(tc, k, v)
    if a.refit_epochs is not None:
        tc = tc.with_refit_epochs(a.refit_epochs)
    tc.progress = not a.no_progress
    if a.autograd:
        tc.fused = False
    ck = train(net_cfg, tc, a.out, resume=not a.no_resume)
    if ck:
        log.info("test accuracy %.2f%% after %d epochs; checkpoint %s", 100 * ck["test_acc"], ck["epoch"], Path(a.out) / "checkpoint.pt")
        print(f"test accuracy: {100 * ck['test_acc']:.2f}%")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.modelfile import save, summary

    tables, _ = quantize_checkpoint(a.checkpoint, a.weight_bits)
    path = save(tables, a.output)
    print(summary(tables, str(path)))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from firstspike.quantize.modelfile import load, summary

    print(summary(load(a.model), a.model))
    return 0


def _parse_indices(spec: str, n: int) -> list[int]:
    try:
        if ":" in spec:
            lo, hi = spec.split(":")
            idx = list(range(int(lo or 0), min(int(hi or n), n)))
        else:
            idx = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise FirstSpikeError(f"--dump-images {spec!r}: use START:STOP or comma-separated indices") from None
    if not idx or min(idx) < 0 or max(idx) >= n:
        raise FirstSpikeError(f"--dump-images {spec!r}: indices must lie in 0..{n - 1}")
    return idx


def _eval_model_file(a: argparse.Namespace) -> int:
    import numpy as np

    from firstspike.data import load_split
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import sha256_of

    g = GoldenModel(a.model)
    dataset = a.dataset or g.tables.meta.get("dataset", "mnist")
    full = load_split(dataset, a.split, a.data_dir)
    split = full.head(a.limit)
    n = len(split)
    acc = g.accuracy(split.images, split.labels, progress=not a.no_progress)
    print(f"{dataset} {a.split} accuracy (integer golden model): {100 * acc:.2f}% ({n} images, T={g.T})")
    res = {"model": str(a.model), "engine": "golden", "dataset": dataset, "split": a.split, "images": n, "accuracy": acc, "T": g.T}
    if a.dump:
        idx = _parse_indices(a.dump_images, len(full))
        imgs = full.images[idx]
        r = g.run(imgs)
        # the names of verify and the report: "input", then "layerK" = the output of model layer K
        names = ["input", *(f"layer{k}" for k in range(len(r.layer_times) - 1))]  # type: ignore[union-attr]
        arrays = {nm: t.astype(np.int16) for nm, t in zip(names, r.layer_times)}  # type: ignore[union-attr]
        tmp = Path(a.dump).with_name(f".{Path(a.dump).name}.tmp.npz")
        np.savez_compressed(tmp, images=imgs, labels=full.labels[idx], indices=np.array(idx), classes=r.classes,
                            v_last=r.v_last, model_sha256=np.array(sha256_of(a.model)), dump_format=np.array(DUMP_FORMAT), **arrays)  # fmt: skip
        os.replace(tmp, a.dump)
        print(f"wrote spike times of {len(idx)} images ({len(arrays)} arrays: input + every layer) to {a.dump}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    import torch

    from firstspike.data import load_split
    from firstspike.quantize.modelfile import MAGIC
    from firstspike.train.trainer import evaluate, load_checkpoint, model_from_checkpoint

    p = Path(a.model)
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(len(MAGIC)) == MAGIC:
                return _eval_model_file(a)
    if a.dump:
        raise FirstSpikeError("--dump needs a model file (firstspike quantize CHECKPOINT -o model.fsm)")
    ck = load_checkpoint(a.model)
    model = model_from_checkpoint(ck)
    dataset = a.dataset or ck["train"].get("dataset", "mnist")
    data_dir = a.data_dir if a.data_dir is not None else (ck["train"].get("data_dir") if a.dataset is None else None)
    split = load_split(dataset, a.split, data_dir).head(a.limit)
    n = len(split)
    x = torch.from_numpy(split.images.copy())
    y = torch.from_numpy(split.labels.copy())
    acc = evaluate(model, x, y, progress=not a.no_progress)
    res = {"model": str(a.model), "dataset": dataset, "split": a.split, "images": n, "accuracy": acc, "mode": model.cfg.mode, "T": model.T}
    print(f"{dataset} {a.split} accuracy: {100 * acc:.2f}% ({n} images, {model.cfg.mode}, T={model.T})")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    return 0


def cmd_hw(a: argparse.Namespace) -> int:
    from firstspike.hw.generate import generate

    s = generate(a.model, a.out, lanes=a.lanes, debug=not a.no_debug, early_exit=a.early_exit, positions=a.positions,
                 read_reg=a.read_reg)  # fmt: skip
    print(f"wrote {Path(a.out) / s['verilog']} and {Path(a.out) / 'core.json'}: {len(s['layers'])} spiking layers, "
          f"lanes={s['lanes']}, {s['memory_bits'] / 1000:.1f} kbit of memories")  # fmt: skip
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from firstspike.boards.build import build

    r = build(a.model, a.board, a.out, lanes=a.lanes, baud=a.baud, spikes=a.spikes, clock_mhz=a.clock_mhz,
              positions=a.positions, read_reg=a.read_reg)
    res = ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in r["resources"].items() if v)
    clk = f"core clock {r['clock_mhz']:g} MHz" + (f" (PLL from {r['board_clock_mhz']:g} MHz)" if r["pll"] else "")
    print(f"{a.board}: {r['bitstream']} ({res}; Fmax {r['fmax_mhz']} MHz, {clk}; {r['build_seconds']:.0f} s)")
    return 0


def cmd_deploy(a: argparse.Namespace) -> int:
    from firstspike.boards.build import deploy

    r = deploy(a.model, a.board, a.port, a.out, lanes=a.lanes, baud=a.baud, spikes=a.spikes, clock_mhz=a.clock_mhz,
               positions=a.positions, read_reg=a.read_reg)
    print(f"{a.board}: programmed {r['bitstream']}" + (f"; board reports {r['board_info']}" if "board_info" in r else ""))
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from firstspike.data import load_split
    from firstspike.quantize.modelfile import load
    from firstspike.sim.rtl import verify

    tables = load(a.model)
    dataset = a.dataset or tables.meta.get("dataset", "mnist")
    split = load_split(dataset, "test", a.data_dir).head(0 if a.all else a.images)
    sims = ["verilator", "icarus"] if a.sim == "both" else [a.sim]
    if a.gate_level and sims != ["verilator"]:
        raise FirstSpikeError("--gate-level runs on Verilator: use --sim verilator")
    out, bad = [], 0
    for sim in sims:
        r = verify(tables, split.images, split.labels, sim=sim, jobs=a.jobs, lanes=a.lanes, chunk=a.chunk,
                   build_root=a.build_dir, progress=not a.no_progress, gate_level=a.gate_level,
                   positions=a.positions, read_reg=a.read_reg)  # fmt: skip
        d = r.as_dict()
        d.update(model=str(a.model), dataset=dataset)
        out.append(d)
        bad += r.total_mismatches
        per = ", ".join(f"{k} {v}" for k, v in r.spike_mismatches.items())
        print(f"{r.sim}: {r.images} images, {r.total_mismatches} mismatches of {r.values_compared:,} values + "
              f"{r.images} classes (class {r.class_mismatches}; {per}); RTL accuracy {100 * r.rtl_accuracy:.2f}% "
              f"(golden {100 * r.golden_accuracy:.2f}%); cycles/image mean {d['cycles_mean']:.0f}, p99 {d['cycles_p99']:.0f}; "
              f"{r.wall_seconds:.1f} s")  # fmt: skip
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out if len(out) > 1 else out[0], indent=1))
    return 1 if bad else 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "quantize": cmd_quantize, "info": cmd_info, "hw": cmd_hw,
            "verify": cmd_verify, "build": cmd_build, "deploy": cmd_deploy, "flow": cmd_flow, "report": cmd_report}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firstspike",
        description="Train time-to-first-spike CNNs and deploy them, provably unchanged, on open FPGAs.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_quantize(sub)
    _add_info(sub)
    _add_eval(sub)
    _add_hw(sub)
    _add_verify(sub)
    _add_build(sub)
    _add_deploy(sub)
    _add_flow(sub)
    _add_report(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    level = logging.DEBUG if a.verbose else logging.WARNING if a.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[a.command](a)
    except FirstSpikeError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

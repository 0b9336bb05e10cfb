"""Ablations of the training recipe: one short run per variant, one setting changed at a time.

    python bench/accuracy_ablations.py --name clamp --set clamp_weights=true [--config csnn_ice40]
        [--epochs 4] [--train-subset 0] [--mode binary] [--seed 0]

``--set KEY=VALUE`` (repeatable) overrides a [train] setting (TrainConfig) or an
architecture/neuron setting (NetConfig: T, theta, calib_time, ...). Every run appends one
record to bench/results/accuracy_ablations.json (replacing a record of the same name):
test accuracy (whole test set, the model's decision rule), train accuracy (decision rule on
the first 10,000 training images, after training), mean first-output-spike step on
correctly classified test images, and the last epoch's diagnostics. ``--table`` prints the
records as the markdown table of docs/accuracy.md ("What moved accuracy").
Run with one thread (OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1) when the cores are shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging  # noqa: E402

log = logging.getLogger("bench.accuracy_ablations")
OUT = RESULTS / "accuracy_ablations.json"


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
    ap.add_argument("--table", action="store_true", help="print the table of the stored records and exit")
    args = ap.parse_args()
    if args.table:
        print(table(_records()))
        return

    import torch

    from firstspike.data import load_split
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, evaluate, model_from_checkpoint, train

    cfg, tab = load_config(args.config)
    if args.mode:
        cfg.mode = args.mode
    tc = TrainConfig.from_dict(tab, cfg.mode)
    tc.epochs, tc.train_subset, tc.seed, tc.progress = args.epochs, args.train_subset, args.seed, False
    changes = {}
    for kv in args.set:
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
    name = args.name or ("default" if not changes else ",".join(f"{k}={v}" for k, v in changes.items()))
    out = ROOT / "runs" / "ablations" / name.replace("/", "_")
    t0 = time.time()
    ck = train(cfg, tc, out, resume=args.resume)
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
    }  # fmt: skip
    recs = [r for r in _records() if r["name"] != name] + [rec]
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(recs, indent=1))
    log.info("%s: test %.2f%% train %.2f%% latency %.1f/%d curve %s", name, 100 * rec["test_acc"], 100 * train_acc,
             rec["latency_correct"], cfg.T, [round(100 * a, 1) for a in rec["test_curve"]])  # fmt: skip


if __name__ == "__main__":
    main()

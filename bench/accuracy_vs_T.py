"""Accuracy against T for the binary MNIST network (T sets the hardware latency).

    python bench/accuracy_vs_T.py [--Ts 16,32,64,128] [--epochs 1] [--train-subset 20000]

Same config, seed and budget for every T. Writes bench/results/accuracy_vs_T.json and
accuracy_vs_T.png, and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.accuracy_vs_T")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--Ts", default="16,32,64,128")
    ap.add_argument("--config", default="csnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from firstspike.data import load_split
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, model_from_checkpoint, train

    test = load_split("mnist", "test")
    xt = torch.from_numpy(test.images.copy())
    runs = []
    for T in [int(t) for t in args.Ts.split(",")]:
        cfg, table = load_config(args.config)
        cfg.mode, cfg.T = "binary", T
        tc = TrainConfig.from_dict(table)
        tc.epochs, tc.train_subset, tc.device, tc.progress = args.epochs, args.train_subset, args.device, False
        ck = train(cfg, tc, ROOT / "runs" / "bench_T" / f"T{T}", resume=True)
        model = model_from_checkpoint(ck)
        with torch.no_grad():
            lat = torch.cat([model(xt[i : i + 1000]).min(dim=1).values for i in range(0, len(xt), 1000)])
        runs.append({"T": T, "test_acc": ck["test_acc"], "mean_latency": float(lat.float().mean()),
                     "silent_fraction": float((lat >= T).float().mean())})  # fmt: skip
        log.info("T=%d: %.2f%%, mean output latency %.1f steps", T, 100 * ck["test_acc"], runs[-1]["mean_latency"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["T"] for r in runs], [100 * r["test_acc"] for r in runs], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (time steps per layer window)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"binary CSNN on MNIST, {args.epochs} epoch(s) x {args.train_subset or 60000} images")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "accuracy_vs_T.png", dpi=110)
    write_result("accuracy_vs_T", {"runs": runs, "epochs": args.epochs, "train_images": args.train_subset or 60000, "config": args.config})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

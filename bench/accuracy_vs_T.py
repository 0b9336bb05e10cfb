"""Accuracy against T for the binary MNIST network (T sets the hardware latency).

    python bench/accuracy_vs_T.py [--config csnn_ice40] [--Ts 16,32,64] [--epochs N] [--train-subset 0]

Same config, seed and budget for every T; ``--epochs`` defaults to the config's own (training
to convergence, the figure T should be chosen by: the smallest T that reaches the goal is the
cheapest hardware, cycles grow with T). Runs merge into bench/results/accuracy_vs_T.json by
(config, T, epochs, training images), so sweeps of several networks coexist; writes
accuracy_vs_T.png (one line per sweep) and refreshes docs/benchmarks.md. Runs resume from
runs/bench_T/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.accuracy_vs_T")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--Ts", default="16,32,64")
    ap.add_argument("--config", default="csnn_ice40")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's (to convergence)")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
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
        tc = TrainConfig.from_dict(table, cfg.mode)
        if args.epochs is not None:
            tc.epochs = args.epochs
        tc.train_subset, tc.device, tc.progress, tc.seed = args.train_subset, args.device, False, args.seed
        name = Path(args.config).stem
        ck = train(cfg, tc, ROOT / "runs" / "bench_T" / f"{name}_T{T}_e{tc.epochs}_s{tc.seed}", resume=True)
        model = model_from_checkpoint(ck)
        with torch.no_grad():
            cls = torch.cat([model.classify(xt[i : i + 1000])[0] for i in range(0, len(xt), 1000)])
            lat = torch.cat([model(xt[i : i + 1000]).min(dim=1).values for i in range(0, len(xt), 1000)])
        right = cls.cpu().numpy() == test.labels
        runs.append({"config": name, "T": T, "epochs": tc.epochs, "train_images": args.train_subset or 60000, "seed": tc.seed,
                     "test_acc": float(right.mean()), "mean_latency": float(lat.float().mean()),
                     "latency_correct": float(lat.float().numpy()[right].mean()),
                     "silent_fraction": float((lat >= T).float().mean())})  # fmt: skip
        log.info("%s T=%d: %.2f%%, mean output latency %.1f steps", name, T, 100 * runs[-1]["test_acc"], runs[-1]["mean_latency"])
    old = json.loads((RESULTS / "accuracy_vs_T.json").read_text()) if (RESULTS / "accuracy_vs_T.json").is_file() else {}
    for r in old.get("runs", []):  # records of the first version: one sweep, its settings at the top level
        for k in ("config", "epochs", "train_images"):
            r.setdefault(k, old.get(k))
    key = lambda r: (r["config"], r["T"], r["epochs"], r["train_images"])  # noqa: E731
    mine = {key(r) for r in runs}
    runs = [r for r in old.get("runs", []) if key(r) not in mine] + runs
    runs.sort(key=lambda r: (r["config"], r["epochs"], r["train_images"], r["T"]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    sweeps = sorted({(r["config"], r["epochs"], r["train_images"]) for r in runs})
    for c, e, n in sweeps:
        rs = [r for r in runs if (r["config"], r["epochs"], r["train_images"]) == (c, e, n)]
        ax.plot([r["T"] for r in rs], [100 * r["test_acc"] for r in rs], marker="o", label=f"{c}, {e} epoch(s) x {n} images")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (time steps per layer window)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("binary CSNNs on MNIST: accuracy against T")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "accuracy_vs_T.png", dpi=110)
    write_result("accuracy_vs_T", {"runs": runs})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

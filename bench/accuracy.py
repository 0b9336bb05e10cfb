"""Accuracy: train and evaluate real and binary CSNNs on MNIST and Fashion-MNIST.

    python bench/accuracy.py [--epochs N] [--runs mnist:binary,mnist:real,...] [--device cuda]

Goals (the STiDi-BP paper): real 99.2% / 92.8%, binary 98.6% / 92.0% (MNIST / Fashion).
Writes bench/results/accuracy.json, the curves bench/results/accuracy_curves.png, the
trained checkpoints (slim: no optimizer state) bench/results/<dataset>_<mode>.pt (<dataset>_<mode>_<config>.pt for a
config other than csnn), and refreshes docs/benchmarks.md.
Runs that already have a checkpoint resume (so the benchmark can be continued later);
``--evaluate`` only re-evaluates the committed checkpoints (e.g. after a change of the decision rule).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, merge_runs, setup_logging, weights_label, write_result  # noqa: E402

log = logging.getLogger("bench.accuracy")

PAPER = {("mnist", "real"): 0.992, ("mnist", "binary"): 0.986, ("fashion-mnist", "real"): 0.928, ("fashion-mnist", "binary"): 0.920}


def plot_curves(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        ep = [h["epoch"] for h in r["history"]]
        acc = [100 * h["test_acc"] for h in r["history"]]
        line = ax.plot(ep, acc, marker="o", label=f"{r['dataset']} {r['mode']}")[0]
        ax.axhline(100 * r["paper"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("STiDi-BP CSNN: test accuracy per epoch (dotted: paper)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="mnist:binary,mnist:real,fashion-mnist:binary,fashion-mnist:real",
                    help="comma-separated dataset:mode[:epochs]")
    ap.add_argument("--config", default="csnn")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's [train] epochs")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--evaluate", action="store_true",
                    help="only evaluate the committed checkpoints bench/results/<run>.pt with the current decision rule")
    args = ap.parse_args()

    from firstspike.train.model import NetConfig, load_config
    import torch

    from firstspike.data import load_split
    from firstspike.train.trainer import (TrainConfig, evaluate, load_checkpoint, model_from_checkpoint, refit_net_config,
                                          save_checkpoint, slim_checkpoint, train)

    results = []
    for spec in args.runs.split(","):
        dataset, mode, *ep = spec.split(":")  # dataset:mode[:epochs]
        cfg, table = load_config(args.config)
        cfg.mode = mode
        tc = TrainConfig.from_dict(table, mode)
        tc.dataset, tc.device, tc.train_subset = dataset, args.device, args.train_subset
        tc.progress = not args.no_progress
        if ep or args.epochs:
            tc.epochs = int(ep[0]) if ep else args.epochs
        # the default config keeps its historic names; any other config gets its own run and file
        stem = f"{dataset}_{mode}" + ("" if args.config == "csnn" else f"_{args.config}")
        out = ROOT / "runs" / "bench" / stem
        t0 = time.time()
        if args.evaluate:  # the committed checkpoint as it is, nothing trained or copied
            out = RESULTS
            done = load_checkpoint(RESULTS / f"{stem}.pt")
        else:
            done = load_checkpoint(out / "checkpoint.pt") if (out / "checkpoint.pt").is_file() else None
        tc = tc.for_mode(mode)
        finished_net = refit_net_config(cfg, tc).to_dict()  # a finished run's architecture (after its refit)
        if args.evaluate or (done is not None and NetConfig.from_dict(done["net"]).to_dict() == finished_net
                             and done["epoch"] >= tc.epochs + tc.refit_epochs):  # fmt: skip
            log.info("%s: already trained for %d epochs, evaluating it as it is", out, done["epoch"])
            ck = done  # a finished run (e.g. continued in the background): nothing to train
            # evaluated again: its checkpoint's figure may predate the current decision rule
            test = load_split(dataset, "test")
            acc = evaluate(model_from_checkpoint(ck), torch.from_numpy(test.images.copy()), torch.from_numpy(test.labels.copy()))
            if acc != ck["test_acc"]:
                log.info("%s: %.2f%% with the current decision rule (%.2f%% when trained)", out, 100 * acc, 100 * ck["test_acc"])
                ck = {**ck, "test_acc_at_training": ck["test_acc"], "test_acc": acc}
        else:
            ck = train(cfg, tc, out, resume=True)
        wall = time.time() - t0
        RESULTS.mkdir(parents=True, exist_ok=True)
        if not args.evaluate:  # the model without the optimizer state (slim_checkpoint): what the repository keeps
            save_checkpoint(RESULTS / f"{stem}.pt", slim_checkpoint(load_checkpoint(out / "checkpoint.pt")))
        hist = ck["history"]
        net = NetConfig.from_dict(ck["net"])  # the run's network as it was trained
        results.append({
            "dataset": dataset, "mode": mode, "config": args.config, "checkpoint": f"bench/results/{stem}.pt", "T": cfg.T,
            "layer_windows": cfg.layer_windows, "spiking_layers": sum(1 for spec in cfg.layers if spec.kind != "pool"),
            "weight_bits": net.weight_widths(), "output": net.output,
            "epochs": ck["epoch"],
            "train_images": (ck["train"].get("train_subset") or 60000) - ck["train"].get("val_images", 0),
            "val_images": ck["train"].get("val_images", 0),
            "selected_epoch": ck.get("selected_epoch", ck["epoch"]), "test_acc": ck["test_acc"],
            **({"test_acc_at_training": ck["test_acc_at_training"]} if "test_acc_at_training" in ck else {}),
            "best_test_acc": max(h["test_acc"] for h in hist), "paper": PAPER[(dataset, mode)],
            "wall_minutes": sum(h["seconds"] for h in hist) / 60, "this_call_minutes": wall / 60,
            "history": hist, "train": ck["train"],
        })  # fmt: skip
        log.info("%s %s: %.2f%% (paper %.1f%%)", dataset, mode, 100 * ck["test_acc"], 100 * PAPER[(dataset, mode)])
        merged = merge_runs("accuracy", results, lambda r: (r["dataset"], r["mode"], r.get("config", "csnn")))
        plot_curves(merged, RESULTS / "accuracy_curves.png")
        reached = [f"{r['dataset']} {weights_label(r['mode'], r.get('weight_bits'))} {100 * r['test_acc']:.2f}% vs {100 * r['paper']:.1f}%"
                   for r in merged]
        write_result("accuracy", {"runs": merged, "note": "Reached: " + "; ".join(reached) + "."})
        from report import render_docs

        render_docs()


if __name__ == "__main__":
    main()

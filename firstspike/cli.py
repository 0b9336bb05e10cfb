"""The ``firstspike`` command line: one subcommand per stage of the flow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from firstspike.errors import FirstSpikeError

log = logging.getLogger("firstspike")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a TTFS CSNN with STiDi-BP",
        description="Train a spiking CNN (real or binary weights) and write OUT/checkpoint.pt and "
        "OUT/history.json after every epoch. Rerunning with the same --out resumes. Multi-process: "
        "`torchrun --nproc-per-node N -m firstspike train ...`.",
    )
    p.add_argument("--config", default="csnn", help="architecture TOML file or built-in name (csnn, csnn_tiny)")
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: from config, else mnist)")
    p.add_argument("--data-dir", default=None, help="folder of standard IDX files (overrides --dataset's folder)")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoint, history)")
    p.add_argument("--mode", choices=["binary", "real"], help="weight mode (default: from config)")
    p.add_argument("--T", type=int, help="time steps per layer window (default: from config)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--schedule", choices=["cosine", "step", "none"])
    p.add_argument("--loss", choices=["relative", "tce"])
    p.add_argument("--gamma", type=float, help="loss margin in time steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", choices=["auto", "numba", "torch"], help="numba: event-driven CPU kernels; torch: any device")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test accuracy of a trained checkpoint")
    p.add_argument("model", help="checkpoint.pt written by `firstspike train`")
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, help="folder of standard IDX files")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true")


def cmd_train(a: argparse.Namespace) -> int:
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, train

    net_cfg, train_table = load_config(a.config)
    if a.mode:
        net_cfg.mode = a.mode
    if a.T:
        net_cfg.T = a.T
    net_cfg.validate()
    tc = TrainConfig.from_dict(train_table)
    overrides = {
        "dataset": a.dataset, "data_dir": a.data_dir, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
        "optimizer": a.optimizer, "schedule": a.schedule, "loss": a.loss, "gamma": a.gamma, "seed": a.seed,
        "device": a.device, "backend": a.backend, "train_subset": a.train_subset, "test_subset": a.test_subset,
    }  # fmt: skip
    for k, v in overrides.items():
        if v is not None:
            setattr(tc, k, v)
    tc.progress = not a.no_progress
    ck = train(net_cfg, tc, a.out, resume=not a.no_resume)
    if ck:
        log.info("test accuracy %.2f%% after %d epochs; checkpoint %s", 100 * ck["test_acc"], ck["epoch"], Path(a.out) / "checkpoint.pt")
        print(f"test accuracy: {100 * ck['test_acc']:.2f}%")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    import torch

    from firstspike.data import load_split
    from firstspike.train.trainer import evaluate, load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(a.model)
    model = model_from_checkpoint(ck)
    dataset = a.dataset or ck["train"].get("dataset", "mnist")
    data_dir = a.data_dir if a.data_dir is not None else (ck["train"].get("data_dir") if a.dataset is None else None)
    split = load_split(dataset, a.split, data_dir)
    n = len(split) if a.limit <= 0 else min(a.limit, len(split))
    x = torch.from_numpy(split.images[:n].copy())
    y = torch.from_numpy(split.labels[:n].copy())
    acc = evaluate(model, x, y, progress=not a.no_progress)
    res = {"model": str(a.model), "dataset": dataset, "split": a.split, "images": n, "accuracy": acc, "mode": model.cfg.mode, "T": model.T}
    print(f"{dataset} {a.split} accuracy: {100 * acc:.2f}% ({n} images, {model.cfg.mode}, T={model.T})")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval}


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
    _add_eval(sub)
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

"""Training loop: STiDi-BP with Adam/SGD, schedules, seeds, atomic checkpoints with resume,
progress bar, CPU/CUDA and multi-process data parallel (torchrun; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from firstspike.data import load_split
from firstspike.errors import CheckpointError, ConfigError
from firstspike.train.functional import silence_penalty, spike_loss
from firstspike.train.model import CSNN, NetConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "firstspike-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3e-3
    alpha_lr_scale: float = 0.1  # learning rate of the binary scales relative to lr
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step | none
    step_size: int = 10
    gamma: float = 3.0  # loss margin (time steps)
    loss: str = "relative"  # relative | tce
    norm_grad: bool = False  # L2-normalise each layer's dL/dV per sample (S4NN style)
    fire_min: float = 0.05  # hidden channels firing less than this (per batch) are pushed to fire
    fire_weight: float = 1.0  # weight of that silence penalty (0 = off)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # auto | numba | torch
    train_subset: int = 0  # 0 = all training images
    test_subset: int = 0
    calib_images: int = 512
    eval_batch: int = 500
    progress: bool = True

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(TrainConfig)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown [train] settings {sorted(unknown)}; known: {sorted(names)}")
        tc = TrainConfig(**d)
        if tc.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', not {tc.optimizer!r}")
        if tc.schedule not in ("cosine", "step", "none"):
            raise ConfigError(f"schedule must be cosine, step or none, not {tc.schedule!r}")
        return tc


# --- distributed helpers ------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("FIRSTSPIKE_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str, rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but this torch has no CUDA device; use --device cpu")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- checkpoints --------------------------------------------------------------------------
def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found; train one with `firstspike train`")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt archives
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError):
            first = "corrupt, or not a torch checkpoint"
        raise CheckpointError(f"{p}: not a readable checkpoint ({first}); retrain or restore it") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a firstspike checkpoint")
    if ck.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint version {ck.get('version')} is newer than this firstspike "
            f"(reads up to {CHECKPOINT_VERSION}); upgrade firstspike"
        )
    return ck


def model_from_checkpoint(ck: dict[str, Any]) -> CSNN:
    model = CSNN(NetConfig.from_dict(ck["net"]))
    model.load_state_dict(ck["state_dict"])
    return model


# --- evaluation ---------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: CSNN, images: torch.Tensor, labels: torch.Tensor, batch: int = 500, progress: bool = False) -> float:
    """Test accuracy (fraction) with the model's decision rule."""
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    it = range(0, len(labels), batch)
    for i in tqdm(it, desc="eval", disable=not progress, leave=False):
        cls, _ = model.classify(images[i : i + batch].to(dev))
        correct += int((cls.cpu() == labels[i : i + batch]).sum())
    return correct / max(1, len(labels))


def _tensors(split, subset: int) -> tuple[torch.Tensor, torch.Tensor]:
    part = split.head(subset)
    return torch.from_numpy(part.images.copy()), torch.from_numpy(part.labels.copy())


def _make_optimizer(model: torch.nn.Module, tc: TrainConfig, opt: torch.optim.Optimizer | None = None):
    """Optimizer (weights; binary scales alpha at ``alpha_lr_scale`` x lr) and its schedule.
    An existing (resumed) optimizer gets a fresh schedule for ``tc.epochs``."""
    if opt is None:
        weights = [p for n, p in model.named_parameters() if not n.endswith("log_alpha")]
        alphas = [p for n, p in model.named_parameters() if n.endswith("log_alpha")]
        groups = [{"params": weights, "lr_scale": 1.0}]
        if alphas:
            groups.append({"params": alphas, "lr_scale": tc.alpha_lr_scale})
        for g in groups:
            g["lr"] = tc.lr * g["lr_scale"]
        if tc.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    if tc.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.epochs))
    elif tc.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=tc.step_size, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return opt, sched


def train(
    net_cfg: NetConfig,
    tc: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
) -> dict[str, Any]:
    """Train and write ``out_dir/checkpoint.pt`` (after every epoch, atomically) and
    ``out_dir/history.json``. With ``resume`` an existing checkpoint there is continued.
    Returns the final checkpoint payload."""
    rank, world = dist_info()
    out = Path(out_dir)
    ck_path = out / "checkpoint.pt"
    device = pick_device(tc.device, rank)
    seed_everything(tc.seed)

    train_split = load_split(tc.dataset, "train", tc.data_dir)
    test_split = load_split(tc.dataset, "test", tc.data_dir)
    x_train, y_train = _tensors(train_split, tc.train_subset)
    x_test, y_test = _tensors(test_split, tc.test_subset)

    model = CSNN(net_cfg).to(device)
    model.backend = tc.backend
    model.norm_grad = tc.norm_grad
    opt, sched = _make_optimizer(model, tc)
    start_epoch, history = 0, []

    if resume and ck_path.is_file():
        ck = load_checkpoint(ck_path)
        if ck["net"] != net_cfg.to_dict():
            raise CheckpointError(f"{ck_path} was trained with another architecture; use a new --out or --no-resume")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = ck["epoch"], ck["history"]
        # rebuild the schedule for this run's epoch count (it may extend the finished run)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = tc.lr * group.get("lr_scale", 1.0)
        opt, sched = _make_optimizer(model, tc, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(start_epoch):
                sched.step()
        torch.set_rng_state(ck["rng"])
        log.info("resumed %s at epoch %d", ck_path, start_epoch)
    else:
        g = torch.Generator().manual_seed(tc.seed)
        idx = torch.randperm(len(y_train), generator=g)[: tc.calib_images]
        model.calibrate(x_train[idx].to(device))

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights

    T = net_cfg.T
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        t0 = time.time()
        g = torch.Generator().manual_seed(tc.seed * 100003 + epoch)
        perm = torch.randperm(len(y_train), generator=g)
        perm = perm[rank::world]  # each process its own shard, same number of steps
        steps = len(perm) // tc.batch_size
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not (tc.progress and rank == 0))
        run_loss = run_correct = run_n = 0.0
        for s in bar:
            bi = perm[s * tc.batch_size : (s + 1) * tc.batch_size]
            xb, yb = x_train[bi].to(device), y_train[bi].to(device)
            outs = ddp_model(xb, all_layers=True)
            t_out = outs[-1].flatten(1)
            loss = spike_loss(t_out, yb, T, tc.gamma, tc.loss)
            total = loss
            if tc.fire_weight > 0:
                hidden = [o for k, o in zip(model.kinds[:-1], outs[1:-1]) if k != "pool"]
                if hidden:
                    total = loss + tc.fire_weight * silence_penalty(hidden, T, tc.fire_min)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            with torch.no_grad():
                pred = torch.argmin(t_out, dim=1)  # earliest spike; cheap running figure
                run_correct += float((pred == yb).sum())
                run_n += len(yb)
                run_loss += float(loss.detach()) * len(yb)
            if s % 10 == 0 or s == steps - 1:
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}", acc=f"{100 * run_correct / run_n:.1f}%")
        sched.step()
        test_acc = evaluate(model, x_test, y_test, tc.eval_batch, progress=tc.progress and rank == 0)
        fire = _fire_rates(model, x_test[:200].to(device))
        rec = {
            "epoch": epoch + 1,
            "train_loss": run_loss / max(1, run_n),
            "train_acc": run_correct / max(1, run_n),
            "test_acc": test_acc,
            "seconds": time.time() - t0,
            "lr": opt.param_groups[0]["lr"],
            "fire_rates": fire,
        }
        history.append(rec)
        log.info(
            "epoch %d/%d: loss %.4f train %.2f%% test %.2f%% (%.0f s) fire %s",
            epoch + 1, tc.epochs, rec["train_loss"], 100 * rec["train_acc"], 100 * test_acc, rec["seconds"],
            ", ".join(f"{100 * f:.0f}%" for f in fire),
        )  # fmt: skip
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "net": net_cfg.to_dict(),
            "train": asdict(tc),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "rng": torch.get_rng_state(),
            "test_acc": test_acc,
        }
        if rank == 0:
            save_checkpoint(ck_path, payload)
            (out / "history.json").write_text(json.dumps(history, indent=1))
    if world > 1:
        dist.barrier()
    if not history:
        raise CheckpointError(f"nothing to do: {ck_path} already holds {start_epoch} epochs (asked for {tc.epochs})")
    return load_checkpoint(ck_path) if rank == 0 or ck_path.is_file() else {}


@torch.no_grad()
def _fire_rates(model: CSNN, images: torch.Tensor) -> list[float]:
    """Fraction of neurons that fire, per spiking layer (a health figure of training)."""
    outs = model.forward_all(images)
    return [float((o < model.T).float().mean()) for k, o in zip(model.kinds, outs[1:]) if k != "pool"]




"""Training loop: STiDi-BP with Adam/SGD, schedules, seeds, atomic checkpoints with resume,
progress bar, CPU/CUDA and multi-process data parallel (torchrun; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import math
import logging
import os
import pickle
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from firstspike.data import load_split
from firstspike.errors import CheckpointError, ConfigError
from firstspike.train import fused
from firstspike.train.functional import distill_terms, latency_slope, potential_loss, relative_targets, silence_penalty, spike_loss, window_sums
from firstspike.train.model import CSNN, MODES, NetConfig

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
    loss: str = "relative"  # relative | ce | tce (functional.spike_loss) | potential (functional.potential_loss)
    label_smoothing: float = 0.0  # ce / tce losses: label-smoothed targets (1 - s on the class, s / K over all K)
    margin: float = 0.1  # potential loss: hinge margin, a fraction of the threshold
    ce_weight: float = 0.0  # potential loss: + this x cross-entropy of z / ce_temp (an error on every image)
    ce_temp: float = 0.1  # potential loss: temperature of that cross-entropy, in fractions of the threshold
    ce_hidden: bool = False  # potential loss: that cross-entropy's error also into the hidden layers (else the output layer only)
    t_goal: float = 1.0  # relative loss: deadline for the earliest output; potential loss: the decision time t*; fractions of T (1 = none / the earliest output spike)
    norm_grad: bool = False  # L2-normalise each layer's dL/dV per sample (S4NN style)
    norm_mode: str = "sample"  # with norm_grad: "sample" (each sample unit norm) | "batch" (unit RMS over the batch)
    fire_min: float = 0.05  # hidden channels firing less than this (per batch) are pushed to fire
    fire_weight: float = 1.0  # weight of that silence penalty (0 = off)
    real_lr_relative: bool = True  # real mode: each layer's lr x its mean |w| / 0.5 after calibration
    homeostasis: float = 0.0  # > 0: instead of the penalty's gradient, raise the scale of hidden channels
    #   firing less than fire_min in the batch by this factor (log alpha += it; real mode: w *= exp(it))
    ema: float = 0.0  # > 0: keep an exponential moving average of the parameters (decay per step);
    #   it is what is evaluated and saved as the model (the raw weights go to train_state_dict for resuming)
    clamp_weights: bool = False  # binary: clamp the real weights to [-1, 1] after every step (BinaryConnect)
    min_threshold: int = 0  # binary, >= 1: keep the scales alpha <= theta / this after every step (integer
    #   thresholds ceil(theta / alpha) >= it); a scale past theta no longer changes the forward (the threshold
    #   is already 1) but keeps multiplying the gradients below it (docs/accuracy.md, twenty-first session)
    min_threshold_hidden: int = -1  # the bound of the hidden layers' scales alone (-1: min_threshold; 0: none)
    diagnostics: bool = True  # per-epoch learning diagnostics in the history (gradient norms, latency, ...)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # auto | numba | torch
    train_subset: int = 0  # 0 = all training images
    val_images: int = 0  # > 0: hold out the last N training images; the saved model is the epoch best on
    #   them (not on the test set), chosen when the run ends
    test_subset: int = 0
    calib_images: int = 512
    augment_shift: int = 0  # > 0: translate each training image by a random (dy, dx) in [-N, N] pixels (zero fill)
    augment_flip: bool = False  # mirror each training image left-right with probability 1/2 (label-preserving
    #   for Fashion-MNIST's garments, not for digits)
    augment_erase: float = 0.0  # > 0: with this probability a training image loses one random rectangle (2-40% of
    #   its area, aspect 0.3-3.3) to 0 (no spike): random erasing (Zhong et al. 2020), after mirrors and translations
    dropout: float = 0.0  # > 0: training silences each input of a dense layer (the classifier's and a hidden fc's)
    #   with this probability and moves the kept ones earlier, T - (T - t) / (1 - p) (inverted dropout on the
    #   values T - t a window layer sums); evaluation and the exported model never drop (CSNN.forward_all)
    freeze: str = ""  # diagnostics: comma-separated spiking-layer indices (0 = first) not to train
    latency: str = "rho"  # linearisation of dt/dV: rho (STiDi-BP) | channel | true (see functional.latency_slope)
    calib: str = "auto"  # data-driven init: "positive" | "median" (see CSNN.calibrate) | "auto": median for binary, positive for
    #   real | "fan_in" (real mode, no data: w ~ U(-1, 1) / sqrt(fan-in))
    init_from: str = ""  # a checkpoint of the same layers to start from instead of the calibration (e.g. a
    #   real-valued run for a binary one: latent weights w / max|w| and alpha = mean|w| per channel)
    init_layers: int = 0  # with init_from: > 0 takes only the first N spiking layers from the checkpoint (same
    #   shapes there) and calibrates the rest (e.g. a trained csnn's convolutions under a new dense head)
    refit_epochs: int = 0  # > 0: after ``epochs``, this many epochs that train the output layer only, on the
    #   kept model's frozen hidden layers (potential loss + refit_ce_weight x cross-entropy, whatever the
    #   main epochs' loss; a fresh
    #   schedule and weight average); the held-out images choose among all epochs (docs/accuracy.md);
    #   binary mode only (real mode skips it, and logs that)
    refit_ce_weight: float = 1.0  # the cross-entropy weight (ce_weight) of those refit epochs
    refit_out_weight_bits: int = 0  # > 0: the output layer's weight width from the refit on (the model's
    #   out_weight_bits, e.g. 2: ternary); its latent weights restart at its integer weights / qmax
    refit_t_goal: float = 0.0  # the refit's decision time t* of its potential loss, a fraction of T (0: t_goal;
    #   with the spike-time losses, whose t_goal is a deadline, choose it: t_goal >= 1 would mean none)
    distill: str = ""  # a teacher's checkpoint (same input shape and classes, e.g. the real-valued run of the
    #   network): its output spike times' softmax(-t / distill_temp) is a second target of the spike-time
    #   losses (knowledge distillation; functional.distill_terms), in the main epochs, not in a refit
    distill_weight: float = 1.0  # weight of that term ((distill_temp / T)^2 x KL: 1 is on the relative loss's scale)
    distill_temp: float = 5.0  # its temperature in time steps of the student's T
    eval_batch: int = 500
    fused: bool = True  # the CPU training step without autograd (train/fused.py) where it covers the settings
    progress: bool = True

    @staticmethod
    def from_dict(d: dict[str, Any], mode: str | None = None) -> "TrainConfig":
        """The [train] table of a config; its sub-tables [train.real] and [train.binary] hold
        settings for one mode only, which replace the table's own when ``mode`` is that mode."""
        names = {f.name for f in fields(TrainConfig)}
        d = dict(d)
        per_mode = {m: d.pop(m) for m in MODES if m in d}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown [train] settings {sorted(unknown)}; known: {sorted(names)}")
        for m, sub in per_mode.items():
            if not isinstance(sub, dict):
                raise ConfigError(f"[train] {m} = {sub!r}: make it a table [train.{m}] of [train] settings for {m} mode")
            if set(sub) - names:
                raise ConfigError(f"unknown [train.{m}] settings {sorted(set(sub) - names)}; known: {sorted(names)}")
        d.update(per_mode.get(mode, {}))
        tc = TrainConfig(**d)
        tc.validate()
        return tc

    def for_mode(self, mode: str) -> "TrainConfig":
        """This config as ``mode`` trains it: the output refit is a phase of binary training (none in real mode)."""
        return self if mode == "binary" else self.with_refit_epochs(0)

    def with_refit_epochs(self, n: int) -> "TrainConfig":
        """This config with ``n`` refit epochs (0: no refit, and the output keeps its width)."""
        return replace(self, refit_epochs=n, refit_out_weight_bits=self.refit_out_weight_bits if n else 0)

    def validate(self) -> None:
        tc = self
        if tc.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', not {tc.optimizer!r}")
        if tc.calib not in ("auto", "positive", "median", "fan_in"):
            raise ConfigError(f"calib must be 'auto', 'positive', 'median' or 'fan_in', not {tc.calib!r}")
        if tc.augment_shift < 0:
            raise ConfigError(f"augment_shift must be >= 0 pixels, not {tc.augment_shift}")
        if not 0.0 <= tc.label_smoothing < 1.0 or (tc.label_smoothing and tc.loss not in ("ce", "tce")):
            raise ConfigError(f"label_smoothing must be in [0, 1) and needs loss = 'ce' or 'tce' "
                              f"(got {tc.label_smoothing} with loss = {tc.loss!r})")
        if not 0.0 <= tc.augment_erase <= 1.0:
            raise ConfigError(f"augment_erase is a probability in [0, 1], not {tc.augment_erase}")
        if not 0.0 <= tc.dropout < 1.0:
            raise ConfigError(f"dropout={tc.dropout} must be in [0, 1): the probability of silencing a dense layer's input")
        if tc.schedule not in ("cosine", "step", "none"):
            raise ConfigError(f"schedule must be cosine, step or none, not {tc.schedule!r}")
        if tc.refit_epochs < 0:
            raise ConfigError(f"refit_epochs must be >= 0, not {tc.refit_epochs}")
        if tc.min_threshold < 0:
            raise ConfigError(f"min_threshold must be >= 0 (0: no bound on the binary scales), not {tc.min_threshold}")
        if tc.min_threshold_hidden < -1:
            raise ConfigError(f"min_threshold_hidden must be >= -1 (-1: min_threshold, 0: no bound), not {tc.min_threshold_hidden}")
        if not 0.0 <= tc.refit_t_goal <= 1.0:
            raise ConfigError(f"refit_t_goal={tc.refit_t_goal}: a fraction of T in (0, 1], or 0 (the main phase's t_goal)")
        if tc.distill and tc.loss == "potential":
            raise ConfigError("distill works with the spike-time losses (loss = 'relative', 'ce' or 'tce'), not 'potential'")
        if tc.distill and (tc.distill_temp <= 0 or tc.distill_weight < 0):
            raise ConfigError(f"distill_temp must be > 0 time steps and distill_weight >= 0 (not {tc.distill_temp}, {tc.distill_weight})")
        if not 0 <= tc.refit_out_weight_bits <= 8 or (tc.refit_out_weight_bits and not tc.refit_epochs):
            raise ConfigError(f"refit_out_weight_bits={tc.refit_out_weight_bits}: choose 1..8 with refit_epochs > 0, or 0 (keep the width)")


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


# what a slim checkpoint keeps: the model and how it was made (quantize, eval, init_from read these)
SLIM_KEYS = ("format", "version", "net", "train", "state_dict", "epoch", "history", "test_acc", "selected_epoch")


def set_backward(model: CSNN, tc: TrainConfig) -> None:
    """The model's backward settings from [train]: the error normalisation and the
    linearisation of dt/dV (``latency``), which the model's autograd backward reads."""
    model.norm_grad = ("batch" if tc.norm_mode == "batch" else True) if tc.norm_grad else False
    model.latency = tc.latency


def slim_checkpoint(ck: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without what only resuming needs (optimizer state, the raw and last
    weights beside the kept average, the RNG): a fifth of the size of a binary network's,
    for committing. It cannot be resumed (``train`` says so)."""
    return {**{k: ck[k] for k in SLIM_KEYS if k in ck}, "slim": True}


def model_from_checkpoint(ck: dict[str, Any]) -> CSNN:
    model = CSNN(NetConfig.from_dict(ck["net"]))
    model.load_state_dict(ck["state_dict"])
    return model


def load_teacher(path: str | os.PathLike, student: CSNN, dataset: str) -> tuple[CSNN, float]:
    """(the teacher network of ``distill``, frozen, and the factor that puts its spike times on
    the student's clock: T_student / T_teacher). Raise when it does not fit the student."""
    ck = load_checkpoint(path)
    teacher = model_from_checkpoint(ck).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if tuple(teacher.cfg.input_shape) != tuple(student.cfg.input_shape) or teacher.num_classes != student.num_classes:
        raise ConfigError(f"distill = {str(path)!r}: its network ({teacher.cfg.name}: input {tuple(teacher.cfg.input_shape)}, "
                          f"{teacher.num_classes} classes) does not fit the student's (input {tuple(student.cfg.input_shape)}, "
                          f"{student.num_classes} classes); give a teacher trained on the same dataset")  # fmt: skip
    taught = ck.get("train", {}).get("dataset")
    if taught and taught != dataset:
        raise ConfigError(f"distill = {str(path)!r} was trained on {taught}, this run trains on {dataset}: "
                          f"give a teacher trained on {dataset}")  # fmt: skip
    return teacher, student.T / teacher.T


def _kinds_upto(model: CSNN, n: int) -> list[tuple]:
    """(kind, pool kernel, stride, padding) of the layers up to and including the n-th spiking one."""
    out, seen = [], 0
    for kind, k, mod in zip(model.kinds, model.pools, model.layers):
        if seen == n:
            break
        out.append((kind, k) if kind == "pool" else (kind, mod.stride, mod.padding))
        seen += kind != "pool"
    return out


@torch.no_grad()
def init_from_checkpoint(model: CSNN, ck: dict[str, Any], layers: int = 0) -> None:
    """Start ``model`` from a checkpoint of the same layers (real or binary). Into a binary
    model a real one goes as latent weights w / max|w| (signs kept) and per-channel scales
    alpha = mean|w|, the least-squares scale of alpha * sign(w) against w (a k-bit layer:
    alpha = max|w| / qmax, so that alpha times its rounded integers is w to half a step). ``layers`` > 0:
    only the first ``layers`` spiking layers (and the pools between them) must match; the
    others are left for the caller to calibrate. The same network in the same mode (all
    layers) continues from the checkpoint's weights exactly, latent binary weights included:
    a warm restart of the schedule."""
    src = model_from_checkpoint(ck)
    if layers == 0 and {**src.cfg.to_dict(), "name": ""} == {**model.cfg.to_dict(), "name": ""}:
        model.load_state_dict(src.state_dict())
        return
    n = layers or len(model.spiking_layers())
    pairs = list(zip(model.spiking_layers(), src.spiking_layers()))[:n]
    if (layers == 0 and len(model.spiking_layers()) != len(src.spiking_layers())) or len(pairs) < n \
            or n > len(model.spiking_layers()) or _kinds_upto(model, n) != _kinds_upto(src, n) \
            or any(a.weight.shape != b.weight.shape for a, b in pairs):  # fmt: skip
        what = "differ from this network's" if layers == 0 else f"differ from this network's in the first {n} spiking layers"
        raise ConfigError(f"init_from: the checkpoint's layers ({ck['net']['layers']}) {what}")
    for dst, s in pairs:
        w = s.effective()[0].detach().to(dst.weight.dtype) if s.binary else s.weight.detach()
        if dst.binary:
            flat = w.flatten(1)
            wmax = flat.abs().amax(1).clamp_min(1e-12)
            dst.weight.copy_(w / wmax.view(-1, 1, 1, 1))
            # +-1: the least-squares scale mean|w|; k bits: round(w / max|w| * qmax) * max|w| / qmax ~ w
            a = wmax / dst.qmax if dst.weight_bits > 1 else flat.abs().mean(1).clamp_min(1e-12)
            dst.log_alpha.copy_(torch.log(a if dst.log_alpha.numel() > 1 else a.mean().view(1)))
        else:
            dst.weight.copy_(w)


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


def shift_images(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) moved by its own random integer (dy, dx) in
    [-max_shift, max_shift]; pixels moved in from outside are 0 (black: no spike)."""
    if max_shift <= 0:
        return x
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    d = torch.randint(0, 2 * s + 1, (n, 2), generator=g).tolist()
    return torch.stack([padded[i, ..., dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(d)])


def erase_images(x: torch.Tensor, p: float, g: torch.Generator, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing: each image of ``x`` (N, C, H, W), with probability ``p``, gets one
    rectangle of a random area fraction in ``area`` and aspect ratio (h / w, log-uniform) in
    ``aspect`` set to 0 (no spike), at a random place wholly inside the image; a draw whose
    rectangle does not fit is redrawn (up to 10 times, then the image is kept)."""
    if p <= 0:
        return x
    n, hh, ww = x.shape[0], x.shape[-2], x.shape[-1]
    out = x.clone()
    pick = (torch.rand(n, generator=g) < p).tolist()
    la, lb = math.log(aspect[0]), math.log(aspect[1])
    for i in range(n):
        if not pick[i]:
            continue
        for _ in range(10):
            u = torch.rand(4, generator=g).tolist()
            s = (area[0] + (area[1] - area[0]) * u[0]) * hh * ww
            r = math.exp(la + (lb - la) * u[1])
            h, w = int(round(math.sqrt(s * r))), int(round(math.sqrt(s / r)))
            if 0 < h <= hh and 0 < w <= ww:
                y0, x0 = int(u[2] * (hh - h + 1)), int(u[3] * (ww - w + 1))
                out[i, ..., y0 : y0 + h, x0 : x0 + w] = 0
                break
    return out


def augment_images(x: torch.Tensor, max_shift: int, flip: bool, g: torch.Generator, erase: float = 0.0) -> torch.Tensor:
    """The training augmentation: a random left-right mirror of half the images (``flip``),
    then :func:`shift_images`, then :func:`erase_images`. Draws nothing from ``g`` for what
    is off, so a run without flips or erasing sees the same shifts as before the options existed."""
    if flip:
        m = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(m.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
    return erase_images(shift_images(x, max_shift, g), erase, g)


def _make_optimizer(model: torch.nn.Module, tc: TrainConfig, opt: torch.optim.Optimizer | None = None):
    """Optimizer (weights; binary scales alpha at ``alpha_lr_scale`` x lr) and its schedule.
    An existing (resumed) optimizer gets a fresh schedule for ``tc.epochs``."""
    if opt is None:
        weights = [p for n, p in model.named_parameters() if not n.endswith("log_alpha") and p.requires_grad]
        alphas = [p for n, p in model.named_parameters() if n.endswith("log_alpha") and p.requires_grad]
        groups = [{"params": weights, "lr_scale": 1.0}]
        if tc.real_lr_relative and isinstance(model, CSNN) and model.cfg.mode == "real":
            # Adam's step is absolute: lr is meant for weights of size ~0.5 (binary latent
            # weights in [-1, 1]); calibrated real weights are ~3-10x larger, so each layer's
            # rate is scaled by its mean |w| / 0.5 (at the start of training)
            groups = [{"params": [m.weight], "lr_scale": max(float(m.weight.detach().abs().mean()) / 0.5, 1e-6)}
                      for m in model.spiking_layers() if m.weight.requires_grad]  # fmt: skip
        if alphas:
            groups.append({"params": alphas, "lr_scale": tc.alpha_lr_scale})
        for g in groups:
            g["lr"] = tc.lr * g["lr_scale"]
        # Adam fused: one kernel per step for all parameters (PyTorch's CPU default loops over them
        # in Python: a tenth of a batch-8 autograd step, a fifth of a fused one); SGD foreach
        if tc.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        else:
            opt = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay, foreach=True)
    if tc.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.epochs))
    elif tc.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=tc.step_size, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return opt, sched


def refit_net_config(net_cfg: NetConfig, tc: TrainConfig) -> NetConfig:
    """The architecture the refit epochs train and save (the output width may change)."""
    if not tc.refit_out_weight_bits or tc.refit_out_weight_bits == net_cfg.out_weight_bits:
        return net_cfg
    return replace(net_cfg, out_weight_bits=tc.refit_out_weight_bits)


def _enter_refit(model: CSNN, tc: TrainConfig, new_width: bool = False):
    """The refit phase: every spiking layer but the output frozen (``new_width``: the output
    layer first gets the refit's weight width, its latent weights restarting at its integer
    weights / qmax, the same network); an optimizer and schedule for the output layer over
    ``tc.refit_epochs``."""
    out = model.spiking_layers()[-1]
    if tc.refit_out_weight_bits and out.weight_bits != tc.refit_out_weight_bits:
        if new_width:
            with torch.no_grad():
                out.weight.copy_(out.sign() / out.qmax)
        out.set_weight_bits(tc.refit_out_weight_bits)
    for m in model.spiking_layers()[:-1]:
        for p in m.parameters():
            p.requires_grad_(False)
    return _make_optimizer(model, replace(tc, epochs=tc.refit_epochs))


def train(
    net_cfg: NetConfig,
    tc: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
) -> dict[str, Any]:
    """Train and write ``out_dir/checkpoint.pt`` (after every epoch, atomically) and
    ``out_dir/history.json``. With ``resume`` an existing checkpoint there is continued.
    Returns the final checkpoint payload."""
    if net_cfg.mode != "binary" and tc.refit_epochs:
        log.info("the output refit (refit_epochs=%d) is a phase of binary training: %s mode trains %d epochs without it",
                 tc.refit_epochs, net_cfg.mode, tc.epochs)  # fmt: skip
        tc = tc.for_mode(net_cfg.mode)
    tc.validate()
    if net_cfg.output == "potential" and (tc.loss != "ce" or tc.refit_epochs or tc.distill):
        raise ConfigError(f"{net_cfg.name}: output = 'potential' trains with cross-entropy on the output potentials: set "
                          f"loss = 'ce' (not {tc.loss!r}), refit_epochs = 0 and no distill")  # fmt: skip
    rank, world = dist_info()
    out = Path(out_dir)
    n_epochs = tc.epochs + tc.refit_epochs
    refit_cfg = refit_net_config(net_cfg, tc)
    ck_path = out / "checkpoint.pt"
    device = pick_device(tc.device, rank)
    seed_everything(tc.seed)

    train_split = load_split(tc.dataset, "train", tc.data_dir)
    test_split = load_split(tc.dataset, "test", tc.data_dir)
    x_train, y_train = _tensors(train_split, tc.train_subset)
    x_test, y_test = _tensors(test_split, tc.test_subset)
    x_val = y_val = None
    if tc.val_images > 0:
        if tc.val_images >= len(y_train):
            raise ConfigError(f"val_images={tc.val_images}: the training set has only {len(y_train)} images")
        x_train, x_val = x_train[: -tc.val_images], x_train[-tc.val_images :]
        y_train, y_val = y_train[: -tc.val_images], y_train[-tc.val_images :]

    model = CSNN(net_cfg).to(device)
    model.backend = tc.backend
    set_backward(model, tc)
    for i in (int(v) for v in tc.freeze.split(",") if v.strip()):
        for p in model.spiking_layers()[i].parameters():
            p.requires_grad_(False)
    # a teacher that does not fit is refused before the calibration
    teacher, t_scale = load_teacher(tc.distill, model, tc.dataset) if tc.distill else (None, 1.0)
    if teacher is not None:
        teacher.to(device).backend = tc.backend
        log.info("distillation from %s (%s mode, T=%d): weight %g, temperature %g steps", tc.distill, teacher.cfg.mode,
                 teacher.T, tc.distill_weight, tc.distill_temp)  # fmt: skip
    if tc.dropout > 0 and net_cfg.layer_windows == "off":
        raise ConfigError(f"dropout={tc.dropout} needs layer_windows (its kept inputs move to fractional times, which "
                          "only window layers sum); set layer_windows = 'ramp' or dropout = 0")  # fmt: skip
    resuming = resume and ck_path.is_file()
    if not resuming:
        # initialisation first (real mode sizes its learning rates by the weights): from a
        # checkpoint, or data-driven
        if tc.init_from:
            init_from_checkpoint(model, load_checkpoint(Path(tc.init_from)), tc.init_layers)
        if not tc.init_from or tc.init_layers:  # data-driven, all layers or those after the checkpoint's
            g = torch.Generator().manual_seed(tc.seed)
            idx = torch.randperm(len(y_train), generator=g)[: tc.calib_images]
            calib = tc.calib if tc.calib != "auto" else ("median" if net_cfg.mode == "binary" else "positive")
            if calib == "fan_in" and net_cfg.mode == "binary":
                raise ConfigError("calib = 'fan_in' starts real-valued weights; train binary mode with 'positive' or 'median'")
            model.calibrate(x_train[idx].to(device), calib, skip=tc.init_layers if tc.init_from else 0)
    opt, sched = _make_optimizer(model, tc)
    start_epoch, history = 0, []
    in_refit = False  # a resumed refit under way continues
    prev_best: dict[str, Any] | None = None  # with val_images: the best epoch so far

    if resuming:
        ck = load_checkpoint(ck_path)
        if ck.get("slim"):
            raise CheckpointError(f"{ck_path} is a slim checkpoint (the model only, no optimizer state): it cannot be "
                                  "resumed; use a new --out, or start from it with init_from")  # fmt: skip
        start_epoch, history = ck["epoch"], ck["history"]
        in_refit = tc.refit_epochs > 0 and start_epoch > tc.epochs
        if NetConfig.from_dict(ck["net"]).to_dict() != (refit_cfg if in_refit else net_cfg).to_dict():  # settings added later take their defaults
            raise CheckpointError(f"{ck_path} was trained with another architecture; use a new --out or --no-resume")
        # a run that ended on an earlier epoch (val_images) continues from its last one
        prev_best = ck.get("best")
        model.load_state_dict(ck.get("last_state_dict", ck["state_dict"]))
        ema_init = {n: p.detach().clone() for n, p in model.named_parameters()}
        if "train_state_dict" in ck:  # the saved model is the average; training continues from the raw weights
            model.load_state_dict(ck["train_state_dict"])
        if in_refit:
            opt, sched = _enter_refit(model, tc)
        if not (tc.refit_epochs > 0 and start_epoch == tc.epochs):  # (at the boundary the refit starts afresh below)
            try:
                opt.load_state_dict(ck["optimizer"])
            except ValueError as e:
                raise CheckpointError(f"{ck_path}: its optimizer state does not fit this trainer ({e}); use --no-resume") from e
        # rebuild the schedule for this run's epoch count (it may extend the finished run)
        phase_tc, done = (replace(tc, epochs=tc.refit_epochs), start_epoch - tc.epochs) if in_refit else (tc, start_epoch)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = tc.lr * group.get("lr_scale", 1.0)
        opt, sched = _make_optimizer(model, phase_tc, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(done):
                sched.step()
        torch.set_rng_state(ck["rng"])
        log.info("resumed %s at epoch %d", ck_path, start_epoch)

    phase_start = tc.epochs if in_refit else 0  # the refit's average starts afresh
    ema, ema_steps = None, (start_epoch - phase_start) * max(1, len(y_train) // max(1, world) // tc.batch_size)
    if tc.ema > 0:
        ema = ema_init if resuming else {n: p.detach().clone() for n, p in model.named_parameters()}

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights

    T = net_cfg.T

    @torch.no_grad()
    def teacher_times(x: torch.Tensor) -> torch.Tensor:
        """The teacher's output spike times (B, classes) on the student's clock."""
        return teacher(x.to(device)) * t_scale

    teach_all = None  # without augmentation the teacher sees the same images every epoch: its times once
    if teacher is not None and not (tc.augment_shift or tc.augment_flip or tc.augment_erase) and start_epoch < tc.epochs:
        teach_all = torch.cat([teacher_times(x_train[i : i + tc.eval_batch]).cpu()
                               for i in tqdm(range(0, len(y_train), tc.eval_batch), desc="teacher",
                                             disable=not (tc.progress and rank == 0), leave=False)])  # fmt: skip
    why = fused.unsupported(model, tc, device, world) if tc.fused else "fused=false"
    fused_ok = why is None
    log.info("training step: %s", "fused (gradients without autograd)" if fused_ok else f"autograd ({why})")
    kept = (prev_best or {}).get("state_dict") or (ck["state_dict"] if resuming else None)  # the model a refit starts from
    for epoch in range(start_epoch, n_epochs):
        refit = epoch >= tc.epochs
        t_frac = (tc.refit_t_goal or tc.t_goal) if refit else tc.t_goal  # the loss's deadline / decision time
        t_goal = t_frac * T if t_frac < 1 else None
        if refit and epoch == tc.epochs:  # the refit begins: from the kept model, output layer only
            if kept is not None:  # (none with epochs = 0: the refit of an init_from model as it is)
                model.load_state_dict(kept)
            opt, sched = _enter_refit(model, tc, new_width=True)
            if refit_cfg is not net_cfg:  # earlier epochs' models have another output width: not candidates
                prev_best = None
            if tc.ema > 0:
                ema, ema_steps = {n: p.detach().clone() for n, p in model.named_parameters()}, 0
            if world > 1:  # DDP registers the parameters that train when it is built
                ddp_model = torch.nn.parallel.DistributedDataParallel(model)
            log.info("refit: %d epochs of the output layer on the frozen hidden layers (potential loss at t* = %s, "
                     "cross-entropy weight %g)", tc.refit_epochs, f"{t_frac:g} T" if t_frac < 1 else "the first spike",
                     tc.refit_ce_weight)  # fmt: skip
        model.train()
        model.dropout = 0.0 if refit else tc.dropout  # (the refit trains the output layer on the kept hidden layers)
        model.dropout_rng = torch.Generator(device=device).manual_seed(tc.seed * 65537 + epoch * 17 + rank)
        t0 = time.time()
        g = torch.Generator().manual_seed(tc.seed * 100003 + epoch)
        perm = torch.randperm(len(y_train), generator=g)
        perm = perm[rank::world]  # each process its own shard, same number of steps
        g_aug = torch.Generator().manual_seed(tc.seed * 7919 + epoch * 31 + rank + 1)
        steps = len(perm) // tc.batch_size
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{n_epochs}", disable=not (tc.progress and rank == 0))
        run_loss = run_correct = run_n = 0.0
        diag = _Diag(model) if tc.diagnostics else None
        for s in bar:
            bi = perm[s * tc.batch_size : (s + 1) * tc.batch_size]
            xb, yb = augment_images(x_train[bi], tc.augment_shift, tc.augment_flip, g_aug, tc.augment_erase).to(device), y_train[bi].to(device)
            opt.zero_grad(set_to_none=True)
            t_teach = None
            if teach_all is not None and not refit:
                t_teach = teach_all[bi].to(device)
            elif teacher is not None and not refit:
                t_teach = teacher_times(xb)
            if fused_ok:
                loss, outs = fused.step(model, xb, yb, tc, t_goal, refit, t_teach)
            else:
                loss, outs = autograd_step(model, ddp_model, xb, yb, tc, t_goal, refit, t_teach)
            t_out = outs[-1].flatten(1)
            if diag is not None:
                diag.step(model, t_out, yb, T, tc.gamma, t_goal)
            opt.step()
            if tc.homeostasis > 0 and not refit:
                _homeostasis(model, outs, T, tc.fire_min, tc.homeostasis)
            if tc.clamp_weights and net_cfg.mode == "binary":
                with torch.no_grad():
                    for m in model.spiking_layers():
                        m.weight.clamp_(-1.0, 1.0)
            if net_cfg.mode == "binary" and (tc.min_threshold > 0 or tc.min_threshold_hidden > 0):
                with torch.no_grad():
                    layers = model.spiking_layers()
                    for i, m in enumerate(layers):
                        bound = tc.min_threshold if i == len(layers) - 1 or tc.min_threshold_hidden < 0 else tc.min_threshold_hidden
                        if bound > 0 and m.log_alpha.requires_grad:
                            m.log_alpha.clamp_(max=math.log(float(m.theta) / bound))
            if ema is not None:
                ema_steps += 1  # warm-up: short runs average over their own steps, not the initialisation
                d = min(tc.ema, ema_steps / (ema_steps + 9.0))
                # (a frozen parameter stays bit-exact: no rounding of an average)
                trained = [(ema[n], p.detach()) for n, p in model.named_parameters() if p.requires_grad]
                with torch.no_grad():
                    torch._foreach_mul_([e for e, _ in trained], d)
                    torch._foreach_add_([e for e, _ in trained], [p for _, p in trained], alpha=1.0 - d)
            with torch.no_grad():
                # the model's decision rule (earliest spike; if none fires, largest V(T-1))
                pred = model.decide(t_out, outs[-2])
                run_correct += float((pred == yb).sum())
                run_n += len(yb)
                run_loss += loss * len(yb)
            if s % 10 == 0 or s == steps - 1:
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}", acc=f"{100 * run_correct / run_n:.1f}%")
        sched.step()
        raw_state = None
        if ema is not None:  # evaluate and save the averaged model
            raw_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(ema[n])
        test_acc = evaluate(model, x_test, y_test, tc.eval_batch, progress=tc.progress and rank == 0)
        val_acc = evaluate(model, x_val, y_val, tc.eval_batch) if x_val is not None else None
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
        if val_acc is not None:
            rec["val_acc"] = val_acc
        if refit:
            rec["refit"] = True
        if diag is not None:
            rec["diag"] = diag.summary(model, x_test[:1000].to(device), y_test[:1000])
        history.append(rec)
        log.info(
            "epoch %d/%d: loss %.4f train %.2f%% test %.2f%% (%.0f s) fire %s",
            epoch + 1, n_epochs, rec["train_loss"], 100 * rec["train_acc"], 100 * test_acc, rec["seconds"],
            ", ".join(f"{100 * f:.0f}%" for f in fire),
        )  # fmt: skip
        if diag is not None:
            log.info("epoch %d diagnostics: %s", epoch + 1, json.dumps(rec["diag"]))
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "net": (refit_cfg if refit else net_cfg).to_dict(),
            "train": asdict(tc),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "rng": torch.get_rng_state(),
            "test_acc": test_acc,
        }
        if val_acc is not None:  # the best epoch on the held-out images so far
            best = prev_best if prev_best is not None and prev_best["val_acc"] >= val_acc else {
                "epoch": epoch + 1, "val_acc": val_acc, "test_acc": test_acc, "state_dict": payload["state_dict"]}
            payload["best"] = prev_best = best
            if epoch + 1 == n_epochs and best["epoch"] != epoch + 1:  # the run ends: keep the best epoch's model
                payload["last_state_dict"] = payload["state_dict"]  # what a resumed run continues from
                payload["state_dict"], payload["test_acc"] = best["state_dict"], best["test_acc"]
                payload["selected_epoch"] = best["epoch"]
                log.info("kept epoch %d (validation %.2f%%, test %.2f%%) over the last (validation %.2f%%, test %.2f%%)",
                         best["epoch"], 100 * best["val_acc"], 100 * best["test_acc"], 100 * val_acc, 100 * test_acc)  # fmt: skip
        kept = prev_best["state_dict"] if val_acc is not None else payload["state_dict"]
        if raw_state is not None:
            payload["train_state_dict"] = raw_state
            model.load_state_dict(raw_state)
        if rank == 0:
            save_checkpoint(ck_path, payload)
            (out / "history.json").write_text(json.dumps(history, indent=1))
    if world > 1:
        dist.barrier()
    if not history:
        raise CheckpointError(f"nothing to do: {ck_path} already holds {start_epoch} epochs (asked for {n_epochs})")
    return load_checkpoint(ck_path) if rank == 0 or ck_path.is_file() else {}


def autograd_step(model: CSNN, ddp_model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tc: TrainConfig,
                  t_goal: float | None, refit: bool, t_teacher: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:  # fmt: skip
    """Forward, loss and backward of one batch through autograd (the parameters' ``.grad``
    must be cleared). Returns (the loss without the silence penalty, the spike times after
    every layer). ``t_teacher``: a teacher's output times for ``distill`` (spike-time losses).
    ``fused.step`` computes the same without autograd."""
    T = model.T
    outs = ddp_model(images, all_layers=True)
    t_out = outs[-1].flatten(1)
    if model.cfg.output == "potential":  # cross-entropy on V(T-1) / theta_l (CSNN.logits; tc.loss is "ce")
        loss = F.cross_entropy(model.logits(outs[-2]), labels, label_smoothing=tc.label_smoothing)
    elif tc.loss == "potential" or refit:  # (the refit trains the output's potentials, whatever the main loss)
        out_layer = model.layers[-1]
        if out_layer.ramped:
            raise ConfigError("the potential loss (and the output refit) do not cover layer_windows = 'ramp' yet: "
                              "train it with loss = 'relative' and refit_epochs = 0")  # fmt: skip
        loss = potential_loss(t_out, out_layer.potential_times(outs[-2]), out_layer.effective()[0], float(out_layer.theta), labels, T,
                              tc.margin, t_goal, out_layer.stride, out_layer.padding,
                              tc.refit_ce_weight if refit else tc.ce_weight, tc.ce_temp, tc.ce_hidden)  # fmt: skip
    else:
        loss = spike_loss(t_out, labels, T, tc.gamma, tc.loss, t_goal, tc.label_smoothing)
        if t_teacher is not None:  # its gradient, as a surrogate whose value is the distillation loss
            kd, g = distill_terms(t_out, t_teacher, T, tc.distill_temp, tc.distill_weight)
            sur = (g.to(t_out.dtype) * t_out).sum()
            loss = loss + (sur - sur.detach() + kd)
    total = loss
    if tc.fire_weight > 0 and tc.homeostasis <= 0 and not refit:
        hidden = [o for k, o in zip(model.kinds[:-1], outs[1:-1]) if k != "pool"]
        if hidden:
            total = loss + tc.fire_weight * silence_penalty(hidden, T, tc.fire_min)
    total.backward()
    return float(loss.detach()), outs


@torch.no_grad()
def _homeostasis(model: CSNN, outs: list[torch.Tensor], T: int, fire_min: float, step: float) -> None:
    """Hidden channels that fired on less than ``fire_min`` of their positions in this batch
    get a larger scale (a lower integer threshold): a rule outside the gradient, so it does
    not pass through the per-sample error normalisation."""
    for kind, mod, o in zip(model.kinds[:-1], model.layers[:-1], outs[1:-1]):
        if kind == "pool":
            continue
        rate = (o.detach() < T).float().mean(dim=(0, 2, 3))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(rate)
            rate /= torch.distributed.get_world_size()
        low = (rate < fire_min).to(mod.weight.dtype)
        if mod.binary:
            if mod.log_alpha.numel() > 1:
                mod.log_alpha.add_(step * low)
            elif bool(low.any()):
                mod.log_alpha.add_(step)
        else:
            mod.weight.mul_(torch.exp(step * low).view(-1, 1, 1, 1))


@torch.no_grad()
def _fire_rates(model: CSNN, images: torch.Tensor) -> list[float]:
    """Fraction of neurons that fire, per spiking layer (a health figure of training)."""
    outs = model.forward_all(images)
    return [float((o < model.T).float().mean()) for k, o in zip(model.kinds, outs[1:]) if k != "pool"]





class _Diag:
    """Learning diagnostics of one epoch: per-layer gradient norms (of the weights, before
    the optimizer step), the fraction of samples whose output error is exactly zero, and at
    the end of the epoch (on held-out images) output latency, silent outputs, dead channels,
    weights outside [-1, 1] (frozen by the clipped straight-through estimator) and the scales."""

    def __init__(self, model: CSNN):
        self.gnorm = [0.0] * len(model.spiking_layers())
        self.steps = 0
        self.zero_err = 0.0
        self.n = 0

    def step(self, model: CSNN, t_out: torch.Tensor, labels: torch.Tensor, T: int, gamma: float, t_goal: float | None) -> None:
        for i, m in enumerate(model.spiking_layers()):
            if m.weight.grad is not None:
                self.gnorm[i] += float(m.weight.grad.norm())
        self.steps += 1
        with torch.no_grad():
            tgt = relative_targets(t_out.detach(), labels, T, gamma, t_goal)
            self.zero_err += float(((t_out.detach() - tgt).abs().sum(dim=1) == 0).sum())
            self.n += len(labels)

    @torch.no_grad()
    def summary(self, model: CSNN, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        T = model.T
        cls, outs = model.classify(images)
        t_out = outs[-1].flatten(1).cpu()
        first = t_out.min(dim=1).values
        ok = cls.cpu() == labels
        fired = first < T
        layers = [o.cpu() for k, o in zip(model.kinds, outs[1:]) if k != "pool"]
        dead = [int(((o < T).float().mean(dim=(0, 2, 3)) < 0.001).sum()) for o in layers[:-1]]
        frozen, alphas = [], []
        for m in model.spiking_layers():
            frozen.append(round(float((m.weight.detach().abs() > 1).float().mean()), 4))
            if m.binary:
                a = m.alpha().detach()
                alphas.append([round(float(a.min()), 3), round(float(a.max()), 3)])
        hit = ok & fired
        # how far the constant linearisation rho is from each neuron's true slope at its crossing
        slopes = []
        spk = [(mod, o_in, o_out) for kind, mod, o_in, o_out in zip(model.kinds, model.layers, outs[:-1], outs[1:]) if kind != "pool"]
        for mod, o_in, o_out in spk:
            rho = float(mod.theta) / T
            if mod.windows:  # the slope of the layer's own window: S_j of window_sums
                S = window_sums(mod.layer_input(o_in), mod.effective()[0].detach(), T, mod.stride, mod.padding)[1]
                sl = torch.where(o_out < T, S.clamp_min(rho), torch.full_like(S, rho))
            else:
                sl = latency_slope("true", rho, mod.layer_input(o_in), mod.effective()[0].detach(), o_out, T, mod.stride, mod.padding)
            r = (sl[o_out < T] / rho).flatten().double()
            q = np.quantile(r.numpy(), [0.05, 0.5, 0.95]) if r.numel() else np.zeros(3)  # (torch.quantile: <= 2^24 values)
            slopes.append([round(float(v), 2) for v in q])
        return {
            "grad_norm": [float(f"{g / max(1, self.steps):.3g}") for g in self.gnorm],
            "zero_error_frac": round(self.zero_err / max(1, self.n), 4),
            "latency_correct": round(float(first[hit].float().mean()), 2) if hit.any() else float(T),
            "no_output_spike": round(float((~fired).float().mean()), 4),
            "output_fire": round(float((t_out < T).float().mean()), 4),
            "dead_channels": dead,
            "frozen_weights": frozen,
            "alpha_range": alphas,
            "slope_over_rho_p5_p50_p95": slopes,
            "eval_acc": round(float(ok.float().mean()), 4),
        }

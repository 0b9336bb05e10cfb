"""Checkpoint -> model tables.

Binary networks export exactly: +-1 weights (sign(w), sign(0) = +1) and integer thresholds
ceil(theta / alpha) (the same function the training forward pass uses), so the integer
network equals training's forward pass spike for spike. Real-valued networks become
fixed-point: per output channel, w_q = round(w / s) with s = max|w| / (2^(bits-1) - 1) and
integer thresholds ceil(theta / s) (the scale folds into the channel's threshold); this is an approximation whose accuracy ``firstspike eval``
reports.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from firstspike.errors import ConfigError
from firstspike.quantize.modelfile import DECISIONS, Layer, ModelTables, accumulator_bounds, clip_thresholds, sha256_of
from firstspike.train.model import CSNN, NetConfig, SpikingLayer
from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


def _fixed_scale(layer: SpikingLayer, bits: int, shared: bool = False) -> np.ndarray:
    """One scale per output channel: the largest |w| is qmax (``shared``: the layer's largest, for
    every channel, so that the integer potentials of the channels compare as the real ones)."""
    w = layer.weight.detach().double().numpy()
    m = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    if shared:
        m = np.full_like(m, m.max(initial=0.0))
    return np.where(m > 0, m / ((1 << (bits - 1)) - 1), 1.0)


def _fixed_point(layer: SpikingLayer, bits: int, shared: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k-bit weights, thresholds, the scale per output channel: one integer unit in real terms)."""
    w = layer.weight.detach().double().numpy()
    qmax = (1 << (bits - 1)) - 1
    s = _fixed_scale(layer, bits, shared)
    wq = np.clip(np.rint(w / s[:, None, None, None]), -qmax, qmax).astype(np.int32)
    thr = np.ceil(float(layer.theta) / s).astype(np.int64)
    return wq, thr, s


def check_deployable(cfg: NetConfig) -> None:
    """Raise a ConfigError if a network of this architecture cannot become a model file (checked
    by the flow before it trains, so a user does not train for nothing)."""
    if cfg.bias:
        raise ConfigError(f"{cfg.name}: the bias input channel (bias = true) is a training experiment; the model file, "
                          "golden model and RTL do not carry it yet: train without it to deploy")  # fmt: skip
    if cfg.layer_windows == "psp":
        raise ConfigError(f"{cfg.name}: a window per layer without a ramp (layer_windows = 'psp') is a training experiment; the "
                          "model file, golden model and RTL do not carry it: train with layer_windows = 'ramp' or 'off'")  # fmt: skip


def tables_from_model(model: CSNN, weight_bits: int | None = None, meta: dict | None = None) -> ModelTables:
    """Integer tables of a trained network (binary: exact; real: ``weight_bits`` fixed-point)."""
    cfg = model.cfg
    binary = cfg.mode == "binary"
    if binary and weight_bits not in (None, 1):
        raise ConfigError("a binary network exports with 1-bit (+-1) weights; drop --weight-bits")
    if not binary:
        weight_bits = weight_bits or 8
        if not 2 <= weight_bits <= 16:
            raise ConfigError(f"--weight-bits {weight_bits} out of range 2..16")
    check_deployable(cfg)
    T = cfg.T
    layers: list[Layer] = []
    shape = tuple(cfg.input_shape)
    with torch.no_grad():
        outs = model.forward_all(torch.zeros(1, *cfg.input_shape, dtype=torch.uint8))
    last = len(model.layers) - 1
    for i, (kind, k, mod, o) in enumerate(zip(model.kinds, model.pools, model.layers, outs[1:])):
        out_shape = tuple(int(v) for v in o.shape[1:])
        shared = i == last and cfg.output == "potential"  # one scale for all classes (NetConfig.output)
        if kind == "pool":
            layers.append(Layer("pool", shape, out_shape, (k, k), k, 0))  # type: ignore[arg-type]
        else:
            assert isinstance(mod, SpikingLayer)
            if binary:
                w_t, thr_t = mod.integer_weights()
                w, thr, bits = w_t.numpy().astype(np.int32), thr_t.numpy().astype(np.int64), mod.weight_bits
            else:
                w, thr, scale = _fixed_point(mod, weight_bits, shared)  # type: ignore[arg-type]
                bits = weight_bits
            kh, kw = w.shape[2], w.shape[3]
            ramps = None
            if mod.ramped:  # binary: the integer ramps training computes with; fixed point: the ramp in the weights' units
                ramps = mod.ramp()[0].numpy() if binary else np.maximum(1, np.rint(mod.ramp()[0].numpy() / scale))
                ramps = ramps.astype(np.int64)
            if shared:  # an output that never fires: clip_thresholds makes this the highest reachable V + 1
                thr = np.full_like(thr, np.iinfo(np.int64).max // 2)
            sb, pb = accumulator_bounds(w, T, ramps)
            layers.append(Layer(kind, shape, out_shape, (kh, kw), mod.stride, mod.padding, w,  # type: ignore[arg-type]
                                clip_thresholds(thr, w, T, ramps), bits, sb, pb, ramps))  # fmt: skip
        shape = out_shape
    return ModelTables(name=cfg.name, T=T, input_shape=tuple(cfg.input_shape), input_table=model.table.numpy().astype(np.int32),  # type: ignore[arg-type]
                       layers=layers, decision=dict(DECISIONS[cfg.decision_rule]), meta=meta or {},
                       windows=cfg.layer_windows)  # fmt: skip


def quantize_checkpoint(checkpoint: str | os.PathLike, weight_bits: int | None = None) -> tuple[ModelTables, CSNN]:
    """Load a training checkpoint and build its tables; returns (tables, float model).
    Deterministic: quantizing a checkpoint twice gives byte-identical model files."""
    ck = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ck)
    model.eval()
    meta = {
        "source_checkpoint_sha256": sha256_of(checkpoint),
        "source_mode": model.cfg.mode,
        "exact": model.cfg.mode == "binary",
        "dataset": ck.get("train", {}).get("dataset", "?"),
        "float_test_accuracy": round(float(ck.get("test_acc", float("nan"))), 6),
        "epochs": ck.get("epoch"),
    }  # no timestamp: the same checkpoint always gives the same bytes (the flow caches by content)
    tables = tables_from_model(model, weight_bits, meta)
    log.info("quantized %s (%s, T=%d) from %s", model.cfg.name, model.cfg.mode, model.T, Path(checkpoint))
    return tables, model

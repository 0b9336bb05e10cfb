"""Integer golden model: runs exactly what the hardware runs, reading only the model file.

Hardware semantics, per layer and image (an implementation independent of training's
kernels: training gathers the inputs of each output neuron, this one scatters each input
event to its fan-out, in time order, as the core does):

    for t in 0..T-1:
        every input event with t_i = t-1 adds w_ji to the slope I_j of each neuron in its fan-out
        every neuron: V_j += I_j; if not yet fired and V_j >= thr_j: t_j = t
    silent = T; V_j(T-1) is kept (the output decision uses it when nothing fires)

With layer windows ("ramp", model file version 2) a layer runs 2T steps: its inputs' events
(all at t_i < T) arrive in the first T, the neurons may fire only at t = T..2T-1 (their time is
t - T), and from step T + 1 on every slope I_j is the channel's ramp r_j instead of the inputs'
sum; V_j(2T-1) is kept. So t'_j = first t' with A_j + t' r_j >= thr_j, A_j = sum_i w_ji (T - t_i).

Pooling is min-time over k x k windows; the decision rule is the model file's. All
arithmetic is on integers (int64 accumulators; the file's widths bound them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from tqdm import tqdm

from firstspike.errors import InputError
from firstspike.quantize.modelfile import ModelTables, load

log = logging.getLogger(__name__)


@njit(cache=True, parallel=True)
def _spiking_layer(tin, w, thr, T, stride, pad, Ho, Wo, ramps):
    """Spike times and last potentials of one layer; ``ramps`` (Co,) for layer windows, or
    an empty array for the shared window (module docstring)."""
    windowed = len(ramps) > 0
    steps = 2 * T if windowed else T
    fire_from = T if windowed else 0
    B, C, H, W = tin.shape
    Co, _, KH, KW = w.shape
    out = np.full((B, Co, Ho, Wo), T, np.int32)
    vlast = np.zeros((B, Co, Ho, Wo), np.int64)
    for b in prange(B):
        # events bucketed by time (counting sort)
        start = np.zeros(T + 1, np.int64)
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    t = tin[b, c, y, x]
                    if t < T:
                        start[t + 1] += 1
        for t in range(T):
            start[t + 1] += start[t]
        fill = start.copy()
        n_ev = start[T]
        ev = np.empty((n_ev, 3), np.int64)
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    t = tin[b, c, y, x]
                    if t < T:
                        k = fill[t]
                        ev[k, 0] = c
                        ev[k, 1] = y
                        ev[k, 2] = x
                        fill[t] += 1
        cur = np.zeros((Co, Ho, Wo), np.int64)
        pot = np.zeros((Co, Ho, Wo), np.int64)
        ob = out[b]
        for t in range(steps):
            if windowed and t > T:
                for co in range(Co):
                    cur[co, :, :] = ramps[co]
            elif t > 0:
                for k in range(start[t - 1], start[t]):
                    c, y, x = ev[k, 0], ev[k, 1], ev[k, 2]
                    for ky in range(KH):
                        ny = y + pad - ky
                        if ny < 0 or ny % stride != 0:
                            continue
                        oy = ny // stride
                        if oy >= Ho:
                            continue
                        for kx in range(KW):
                            nx = x + pad - kx
                            if nx < 0 or nx % stride != 0:
                                continue
                            ox = nx // stride
                            if ox >= Wo:
                                continue
                            for co in range(Co):
                                cur[co, oy, ox] += w[co, c, ky, kx]
            for co in range(Co):
                th = thr[co]
                for oy in range(Ho):
                    for ox in range(Wo):
                        v = pot[co, oy, ox] + cur[co, oy, ox]
                        pot[co, oy, ox] = v
                        if t >= fire_from and v >= th and ob[co, oy, ox] == T:
                            ob[co, oy, ox] = t - fire_from
        vlast[b] = pot
    return out, vlast


def _min_pool(t: np.ndarray, k: int) -> np.ndarray:
    B, C, H, W = t.shape
    Ho, Wo = H // k, W // k
    return t[:, :, : Ho * k, : Wo * k].reshape(B, C, Ho, k, Wo, k).min(axis=(3, 5))


def decide(t_out: np.ndarray, v_last: np.ndarray, T: int, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Earliest output spike (lowest index on ties); if none fires, the largest
    V(T-1) - threshold with ``thresholds`` (model files' "max-margin"), else the largest
    V(T-1) ("max-potential"); lowest index on ties."""
    fired = t_out.min(axis=1) < T
    score = v_last if thresholds is None else v_last.astype(np.int64) - np.asarray(thresholds, np.int64)[None, :]
    return np.where(fired, np.argmin(t_out, axis=1), np.argmax(score, axis=1)).astype(np.int64)


@dataclass
class GoldenResult:
    classes: np.ndarray  # (N,)
    layer_times: list[np.ndarray] | None  # input times, then every layer's output, (N, C, H, W)
    v_last: np.ndarray  # (N, classes) output potentials at T-1


class GoldenModel:
    """Bit-exact software model of the core. ``run`` and ``classify`` take uint8 images
    (N, H, W) or (N, C, H, W); the hardware runtimes offer the same two calls."""

    def __init__(self, model: ModelTables | str | os.PathLike):
        self.tables = model if isinstance(model, ModelTables) else load(model)
        self.T = self.tables.T

    def encode(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise InputError(f"images must be uint8 (0..255), got {x.dtype}")
        if x.ndim == 3:
            x = x[:, None]
        if tuple(x.shape[1:]) != tuple(self.tables.input_shape):
            raise InputError(f"images of shape {tuple(x.shape[1:])} do not match the model input {tuple(self.tables.input_shape)}: "
                             "use a dataset of that shape (--dataset / --data-dir)")  # fmt: skip
        return self.tables.input_table[x].astype(np.int32)

    def _run_batch(self, images: np.ndarray, keep: bool) -> GoldenResult:
        t = self.encode(images)
        times = [t] if keep else None
        v_last = None
        for ly in self.tables.layers:
            if ly.kind == "pool":
                t = _min_pool(t, ly.kernel[0])
            else:
                ramps = np.asarray(ly.ramps if ly.ramps is not None else (), np.int64)  # empty: the shared window
                t, v = _spiking_layer(np.ascontiguousarray(t), ly.weights, ly.thresholds, self.T, ly.stride, ly.padding,
                                      ly.out_shape[1], ly.out_shape[2], ramps)  # fmt: skip
                v_last = v
            if times is not None:
                times.append(t)
        assert v_last is not None
        vl = v_last.reshape(len(t), -1)
        thr = self.tables.layers[-1].thresholds if self.tables.silent_margin else None
        return GoldenResult(decide(t.reshape(len(t), -1), vl, self.T, thr), times, vl)

    def run(self, images: np.ndarray, keep_times: bool = True, batch: int = 1000, progress: bool = False) -> GoldenResult:
        """Classes, output potentials and (``keep_times``) every layer's spike times."""
        parts = [self._run_batch(images[i : i + batch], keep_times)
                 for i in tqdm(range(0, len(images), batch), desc="golden", disable=not progress, leave=False)]  # fmt: skip
        times = None
        if keep_times:
            times = [np.concatenate([p.layer_times[j] for p in parts]) for j in range(len(parts[0].layer_times))]  # type: ignore[index]
        return GoldenResult(np.concatenate([p.classes for p in parts]), times, np.concatenate([p.v_last for p in parts]))

    def classify(self, images: np.ndarray, batch: int = 1000, progress: bool = False) -> np.ndarray:
        return self.run(images, keep_times=False, batch=batch, progress=progress).classes

    def accuracy(self, images: np.ndarray, labels: np.ndarray, progress: bool = False) -> float:
        return float((self.classify(images, progress=progress) == labels).mean())

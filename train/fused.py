"""One training step with the gradients written out, without autograd (the CPU fast path).

The same forward (the Numba kernels, exact integers in binary mode) and the same gradients
as the autograd path (``SpikeFire.backward``, ``potential_loss``, ``spike_loss``
"relative", ``silence_penalty``, min pooling, the clipped straight-through estimator of
``SpikingLayer.effective``), computed in float64 NumPy: a batch-8 step of autograd is mostly
PyTorch's per-operation overhead on small tensors. tests/test_fused.py checks the gradients
against autograd on random networks and the trained iCE40 network. Settings it does not
cover (``unsupported``) train through autograd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from firstspike.train import kernels
from firstspike.train.functional import _relative_targets, distill_terms, latency_slope

if TYPE_CHECKING:
    from firstspike.train.model import CSNN
    from firstspike.train.trainer import TrainConfig


def unsupported(model: "CSNN", tc: "TrainConfig", device: torch.device, world: int) -> str | None:
    """Why this run needs autograd (None: the fused step covers it)."""
    if device.type != "cpu" or tc.backend == "torch":
        return "a device other than the CPU's Numba kernels"
    if world > 1:
        return "data-parallel training"
    if tc.loss not in ("potential", "relative"):
        return f"loss={tc.loss!r}"
    if model.cfg.output != "spike":
        return f"output={model.cfg.output!r}"
    if model.cfg.layer_windows != "off":
        return "layer_windows"
    if tc.dropout > 0:
        return "dropout"
    return None


def _weights(mod) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(forward weights (int32 or float64), thresholds, w_eff float64, integer weights as
    int32 (binary) or None, alpha float64 (binary) or None): ``SpikingLayer.sign`` and
    ``model.integer_threshold`` (the scales through torch.exp, as the model computes them)."""
    w = mod.weight.detach().numpy()
    if mod.binary:
        a = mod.alpha().detach().double().numpy()
        s, thr, w_eff = _binarise(w.reshape(w.shape[0], -1), a, mod.qmax, mod.weight_bits > 1, float(mod.theta))
        return s.reshape(w.shape), thr, w_eff.reshape(w.shape), s, a
    w64 = w.astype(np.float64)
    return w64, np.full(w.shape[0], float(mod.theta)), w64, None, None


@njit(cache=True)
def _binarise(w, alpha, qmax, kbit, theta):
    """(integer weights int32, integer thresholds int64, alpha * integer weights float64) of
    float32 latent weights w (Co, n): sign (sign(0) = +1), or round(w * qmax) clamped to
    +-qmax for k bits; threshold max(ceil(theta / alpha), 1)."""
    Co, n = w.shape
    s = np.empty((Co, n), np.int32)
    w_eff = np.empty((Co, n))
    thr = np.empty(Co, np.int64)
    q = np.float32(qmax)
    for co in range(Co):
        thr[co] = np.int64(max(np.ceil(theta / alpha[co]), 1.0))
        for j in range(n):
            if kbit:
                v = int(min(max(np.round(w[co, j] * q), -q), q))
            else:
                v = 1 if w[co, j] >= 0 else -1
            s[co, j] = v
            w_eff[co, j] = alpha[co] * v
    return s, thr, w_eff


def _param_grads(mod, g_eff: np.ndarray, s: np.ndarray | None, alpha: np.ndarray | None) -> None:
    """dL/dw_eff -> the gradients of the layer's parameters (accumulated into .grad): the
    clipped straight-through estimator and d/d(log alpha) of w_eff = alpha * s (binary)."""
    w = mod.weight
    if not w.requires_grad:
        return
    if mod.binary:
        gw, ga = _binary_grads(g_eff.reshape(len(alpha), -1), w.detach().numpy().reshape(len(alpha), -1),
                               s.reshape(len(alpha), -1), alpha, float(mod.qmax), bool(mod.clip))  # fmt: skip
        if mod.log_alpha.numel() == 1:
            ga = ga.sum(keepdims=True)
        _accumulate(mod.log_alpha, ga)
    else:
        gw = g_eff
    _accumulate(w, gw)


@njit(cache=True)
def _binary_grads(g_eff, w, s, alpha, qmax, clip):
    """(dL/dw: alpha * qmax * dL/dw_eff, zero where |w| > 1 with ``clip``; dL/d(log alpha)
    per channel: alpha * sum(dL/dw_eff * s)) of a binary layer, rows = channels."""
    Co, n = g_eff.shape
    gw = np.empty((Co, n))
    ga = np.zeros(Co)
    for co in range(Co):
        acc = 0.0
        for j in range(n):
            g = g_eff[co, j]
            gw[co, j] = 0.0 if clip and abs(w[co, j]) > 1.0 else g * alpha[co] * qmax
            acc += g * s[co, j]
        ga[co] = alpha[co] * acc
    return gw, ga


def _layer_input(mod, t: np.ndarray) -> np.ndarray:
    """The spike times a layer computes with: ``t``, plus the bias channel (``SpikingLayer.layer_input``)."""
    return np.concatenate([t, np.zeros_like(t[:, :1])], axis=1) if mod.bias else t


def _accumulate(p: torch.Tensor, g: np.ndarray) -> None:
    if not p.requires_grad:
        return
    t = torch.from_numpy(np.ascontiguousarray(g)).to(p.dtype).view(p.shape)
    p.grad = t if p.grad is None else p.grad + t


def _normalise(gv: np.ndarray, norm) -> np.ndarray:
    """The per-sample error normalisation of SpikeFire.backward."""
    B = gv.shape[0]
    if norm == "batch":
        nrm = max(float(np.sqrt((gv.reshape(B, -1) ** 2).sum(axis=1).mean())), 1e-12)
        return gv / (nrm * B)
    if norm:
        nrm = np.maximum(np.sqrt((gv.reshape(B, -1) ** 2).sum(axis=1)), 1e-12).reshape(-1, 1, 1, 1)
        return gv / (nrm * B)
    return gv


@njit(cache=True)
def _potential_loss(v, labels, theta, margin, ce_weight, ce_temp, ce_hidden):
    """functional.potential_loss from the output potentials v = V(t*) (B, classes):
    (loss, dL/dv for the weights, dL/dv for the inputs); the two differ by the
    cross-entropy's share when it trains the output layer only (not ``ce_hidden``)."""
    B, K = v.shape
    hinge = 0.0
    ce = 0.0
    g_w = np.zeros((B, K))
    g_x = np.zeros((B, K))
    z = np.empty(K)
    for b in range(B):
        for k in range(K):
            z[k] = (v[b, k] - theta) / theta
            if k == labels[b]:
                if margin - z[k] > 0:
                    hinge += margin - z[k]
                    g_x[b, k] = -1.0 / (B * theta)
            elif margin + z[k] > 0:
                hinge += margin + z[k]
                g_x[b, k] = 1.0 / (B * theta)
        g_w[b] = g_x[b]
        if ce_weight > 0:  # cross-entropy of z / ce_temp, through the log-softmax
            zmax = (z / ce_temp).max()
            lse = np.log(np.exp(z / ce_temp - zmax).sum()) + zmax
            for k in range(K):
                logp = z[k] / ce_temp - lse
                hit = 1.0 if k == labels[b] else 0.0
                ce -= ce_weight * hit * logp / B
                g = ce_weight * (np.exp(logp) - hit) / (B * ce_temp * theta)
                g_w[b, k] += g
                if ce_hidden:
                    g_x[b, k] += g
    return hinge / B + ce, g_w, g_x


def step(model: "CSNN", images: torch.Tensor, labels: torch.Tensor, tc: "TrainConfig", t_goal: float | None,
         refit: bool, t_teacher: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:  # fmt: skip
    """Forward, loss and gradients (written to the parameters' ``.grad``, which must be
    cleared) of one batch. Returns (the loss without the silence penalty, as the trainer
    logs it; the spike times after every layer as ``CSNN.forward_all`` returns them).
    ``t_teacher``: a teacher's output times for ``distill`` (the relative loss)."""
    T = model.T
    B = images.shape[0]
    table = model.table.numpy().astype(np.int32)  # functional.encode
    t = table[images.numpy().reshape(B, *model.cfg.input_shape)]
    outs = [t]
    params, pool_idx = [], []
    exact = tc.latency != "rho"  # the backward needs the slopes at the crossings (functional.latency_slope)
    crossings: list[np.ndarray | None] = []
    for kind, k, mod in zip(model.kinds, model.pools, model.layers):
        if kind == "pool":
            neg, idx = F.max_pool2d(-torch.from_numpy(t).float(), k, stride=k, return_indices=True)
            t = (-neg).numpy().astype(np.int32)
            params.append(None)
            crossings.append(None)
            pool_idx.append(idx)
        else:
            wf, thr, w_eff, s_int, alpha = _weights(mod)
            t = _layer_input(mod, t)
            Ho = (t.shape[2] + 2 * mod.padding - wf.shape[2]) // mod.stride + 1
            Wo = (t.shape[3] + 2 * mod.padding - wf.shape[3]) // mod.stride + 1
            t, sl = kernels.fire_forward(t, wf, thr, T, mod.stride, mod.padding, Ho, Wo, slopes=True)
            # in w_eff's units: alpha * the integer slope (binary), the float slope (real)
            crossings.append(None if not exact else sl * alpha.reshape(1, -1, 1, 1) if alpha is not None else sl)
            params.append((w_eff, s_int, alpha))
            pool_idx.append(None)
        outs.append(t)
    n = len(model.layers)
    grads: list[np.ndarray | None] = [None] * (n + 1)  # dL/d(outs[i])

    def add(i: int, g: np.ndarray) -> None:
        grads[i] = g if grads[i] is None else grads[i] + g

    out_mod = model.layers[-1]
    t_out = outs[-1].reshape(B, -1).astype(np.float64)
    if tc.loss == "potential" or refit:  # functional.potential_loss (the output layer is dense)
        w_eff, s_int, alpha = params[-1]
        theta = float(out_mod.theta)
        tau = np.full(B, float(t_goal)) if t_goal is not None else np.minimum(t_out.min(axis=1), T - 1)
        t_in = _layer_input(out_mod, outs[-2])
        x = np.maximum(tau.reshape(-1, 1) - t_in.reshape(B, -1), 0.0)
        wm = w_eff.reshape(w_eff.shape[0], -1)
        ce_weight = tc.refit_ce_weight if refit else tc.ce_weight
        loss, gv_w, gv_x = _potential_loss(x @ wm.T, labels.numpy(), theta, tc.margin, ce_weight, tc.ce_temp,
                                           tc.ce_hidden)  # fmt: skip
        _param_grads(out_mod, (gv_w.T @ x).reshape(w_eff.shape), s_int, alpha)
        add(n - 1, np.ascontiguousarray((-(gv_x @ wm) * (x > 0)).reshape(t_in.shape)[:, : outs[-2].shape[1]]))
        top = n - 1  # the output layer's own backward is not part of this loss
    else:  # functional.spike_loss "relative"
        target = _relative_targets(t_out, labels.numpy(), float(T), float(tc.gamma), -1.0 if t_goal is None else float(t_goal),
                                   False)  # fmt: skip
        e = (t_out - target) / T
        loss = float(0.5 * (e**2).sum(axis=1).mean())
        add(n, (e / (T * B)).reshape(outs[-1].shape))
        if t_teacher is not None:
            kd, g = distill_terms(torch.from_numpy(t_out), t_teacher, T, tc.distill_temp, tc.distill_weight)
            loss += kd
            add(n, g.numpy().reshape(outs[-1].shape))
        top = n
    if tc.fire_weight > 0 and tc.homeostasis <= 0 and not refit:  # functional.silence_penalty
        for i, kind in enumerate(model.kinds[:-1]):
            if kind == "pool":
                continue
            o = outs[i + 1]
            silent = o >= T
            rate = (~silent).sum(axis=(0, 2, 3)) / float(silent[:, 0].size)
            mask = silent & (rate < tc.fire_min).reshape(1, -1, 1, 1)
            cnt = int(mask.sum())
            if cnt > 0:
                add(i + 1, tc.fire_weight * mask / (T * cnt))
    trains = [kind != "pool" and mod.weight.requires_grad for kind, mod in zip(model.kinds, model.layers)]
    for i in range(top - 1, -1, -1):
        g_out = grads[i + 1]
        below = any(trains[:i])
        if g_out is None or not (trains[i] or below):
            continue
        mod = model.layers[i]
        if model.kinds[i] == "pool":
            if below:
                gin = torch.zeros(outs[i].shape, dtype=torch.float64)
                gin.flatten(2).scatter_(2, pool_idx[i].flatten(2), torch.from_numpy(g_out).flatten(2))
                add(i, gin.numpy())
            continue
        w_eff, s_int, alpha = params[i]
        t_in = _layer_input(mod, outs[i])
        cross = crossings[i]
        slope = latency_slope(tc.latency, float(mod.theta) / T, torch.from_numpy(t_in), torch.from_numpy(w_eff),
                              torch.from_numpy(outs[i + 1]), T, mod.stride, mod.padding,
                              None if cross is None else torch.from_numpy(cross))  # fmt: skip
        gv = _normalise(-g_out / (slope.numpy() if isinstance(slope, torch.Tensor) else slope), model.norm_grad)
        gw, gt = kernels.fire_backward(t_in, w_eff, outs[i + 1], np.ascontiguousarray(gv), T, mod.stride,
                                       mod.padding, max(1, min(kernels.num_threads(), B)))  # fmt: skip
        _param_grads(mod, gw, s_int, alpha)
        if below:
            add(i, np.ascontiguousarray(gt[:, : outs[i].shape[1]]))
    return loss, [torch.from_numpy(o).float() for o in outs]

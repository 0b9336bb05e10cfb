"""Event-driven CPU kernels (Numba) for one spiking convolution / dense layer.

A layer maps input spike times ``tin`` (B, C, H, W), integers in 0..T (T = silent), to
output spike times (B, Co, Ho, Wo) with the non-leaky piecewise-linear neuron

    V_j(t) = sum_i w_ji * max(0, t - t_i),   t_j = first t in 0..T-1 with V_j(t) >= thr_j

computed in its incremental (hardware) form: the events of a receptive field are bucketed
by time once (counting sort, shared by all output channels), then per output neuron the
slope I and potential V are stepped through time:

    I(t) = I(t-1) + sum_{i: t_i = t-1} w_ji,   V(t) = V(t-1) + I(t),   I(0) = V(0) = 0.

Work per layer is O(positions * (fan-in + Co * (events + T))): proportional to synaptic
events plus neurons x T, never T dense convolutions. A dense layer is a convolution whose
kernel covers the whole input. Weights are int32 (binary +-1, exact) or float64.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _field(tin_b, oy, ox, stride, pad, KH, KW, T, u_t, u_k, u_p):
    """The firing inputs (t < T) of one receptive field, in input order: fills u_t (time),
    u_k (flat kernel index c*KH*KW+ky*KW+kx) and u_p (flat input index c*H*W+y*W+x);
    returns their number."""
    C, H, W = tin_b.shape
    ne = 0
    for c in range(C):
        for ky in range(KH):
            y = oy * stride - pad + ky
            if y < 0 or y >= H:
                continue
            for kx in range(KW):
                x = ox * stride - pad + kx
                if x < 0 or x >= W:
                    continue
                t = tin_b[c, y, x]
                if t < T:
                    u_t[ne] = t
                    u_k[ne] = (c * KH + ky) * KW + kx
                    u_p[ne] = (c * H + y) * W + x
                    ne += 1
    return ne


@njit(cache=True, nogil=True)
def _gather(tin_b, oy, ox, stride, pad, KH, KW, T, s):
    """The firing inputs of one receptive field in time order (stable counting sort) in the
    scratch ``s`` = (cnt, ev_t, ev_k, ev_p, u_t, u_k, u_p) of ``_scratch``: ev_t (time),
    ev_k (flat kernel index), ev_p (flat input index); returns their number."""
    cnt, ev_t, ev_k, ev_p, u_t, u_k, u_p = s
    ne = _field(tin_b, oy, ox, stride, pad, KH, KW, T, u_t, u_k, u_p)
    for t in range(T + 1):
        cnt[t] = 0
    for e in range(ne):
        cnt[u_t[e] + 1] += 1
    for t in range(T):
        cnt[t + 1] += cnt[t]
    for e in range(ne):
        pos = cnt[u_t[e]]
        cnt[u_t[e]] += 1
        ev_t[pos] = u_t[e]
        ev_k[pos] = u_k[e]
        ev_p[pos] = u_p[e]
    return ne


@njit(cache=True)
def _scratch(T, n):
    """Per-image work arrays for n events: the step counts and sorted (time, kernel index,
    input position) of _gather, then its unsorted ones (those of _field)."""
    return (np.empty(T + 1, np.int64), np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64))  # fmt: skip


def fire_forward(tin: np.ndarray, w: np.ndarray, thr: np.ndarray, T: int, stride: int, pad: int, Ho: int,
                 Wo: int, slopes: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Output spike times (B, Co, Ho, Wo) int32 of one layer; see module docstring.

    tin: (B, C, H, W) int32 in 0..T; w: (Co, C, KH, KW) int32 or float64; thr: (Co,).
    Integer weights take ``fire_forward_binned`` (sums in any order are exact), float
    weights ``fire_forward_events`` (the hardware's order of additions). ``slopes``: also
    return every neuron's slope at its crossing, the values of ``crossing_slope`` (integers
    for integer weights, float64 in crossing_slope's order of additions otherwise), which the
    stepping computes anyway.
    """
    if w.dtype.kind != "i":
        out, sl = fire_forward_events(tin, w, thr, T, stride, pad, Ho, Wo)
    else:
        n = w[0].size
        bound = (int(np.abs(w).max()) if w.size else 0) * n * T  # |V| never exceeds it
        acc = np.int32 if bound < 2**31 - 1 else np.int64
        out, sl = fire_forward_binned(tin, w.astype(acc), np.asarray(thr, np.int64), T, stride, pad, Ho, Wo)
    return (out, sl) if slopes else out


@njit(cache=True, parallel=True)
def fire_forward_binned(tin, w, thr, T, stride, pad, Ho, Wo):
    """``fire_forward`` for integer weights, all output channels of a position at once:
    the receptive field's weights are summed per input time into hist[t_i + 1, co], then
    I and V are stepped through time for every channel together (loops over channels the
    compiler vectorises), until all have fired. The same integers as the per-neuron order.
    Returns (times, slopes at the crossings)."""
    B, C, H, W = tin.shape
    Co, _, KH, KW = w.shape
    n = C * KH * KW
    wt = np.ascontiguousarray(w.reshape(Co, n).T)  # (n, Co): one input's weights to every channel
    out = np.empty((B, Co, Ho, Wo), np.int32)
    slo = np.empty((B, Co, Ho, Wo), w.dtype)
    for b in prange(B):
        hist = np.zeros((T + 1, Co), w.dtype)
        cur = np.zeros(Co, w.dtype)
        pot = np.zeros(Co, w.dtype)
        sl = np.zeros(Co, w.dtype)
        fired = np.empty(Co, np.int32)
        _, _, _, _, u_t, u_k, u_p = _scratch(T, n)
        tin_b = tin[b]
        for oy in range(Ho):
            for ox in range(Wo):
                tmin, tmax = T, -1
                for e in range(_field(tin_b, oy, ox, stride, pad, KH, KW, T, u_t, u_k, u_p)):
                    t = u_t[e]
                    row = wt[u_k[e]]
                    for co in range(Co):
                        hist[t + 1, co] += row[co]
                    tmin = min(tmin, t)
                    tmax = max(tmax, t)
                left = Co
                for co in range(Co):
                    cur[co] = 0
                    pot[co] = 0
                    sl[co] = 0
                    fired[co] = T
                    if thr[co] <= 0:  # V(0) = 0 reaches it at step 0
                        fired[co] = 0
                        left -= 1
                # V(t) = 0 up to t = tmin (no input before); I(t) = I(t-1) + hist[t] up to the
                # last input's step tmax + 1, after which I is constant
                tend = min(T, tmax + 2)
                for t in range(tmin + 1, tend):
                    if left == 0:
                        break
                    left = 0
                    for co in range(Co):  # branch-free: the compiler vectorises it
                        cur[co] += hist[t, co]
                        pot[co] += cur[co]
                        hit = (fired[co] == T) & (pot[co] >= thr[co])
                        fired[co] = t if hit else fired[co]
                        sl[co] += cur[co] * hit  # (a select here stops the vectorising)
                        left += fired[co] == T
                # after the stepping I is the sum of all inputs, but for those at T - 1 (past
                # the last step when tend = T): the slope of the later crossings and at T
                rest = tmax + 2 > T
                for co in range(Co):
                    if fired[co] == T:
                        sl[co] = cur[co] + hist[T, co] if rest else cur[co]
                if left > 0 and tend < T:
                    # V(tend - 1 + k) = V(tend - 1) + k I: the first k >= 1 that reaches thr
                    for co in range(Co):
                        if fired[co] == T and cur[co] > 0:
                            tf = tend - 1 + (thr[co] - pot[co] + cur[co] - 1) // cur[co]
                            if tf < T:
                                fired[co] = tf
                for t in range(tmin + 1, tmax + 2):
                    for co in range(Co):
                        hist[t, co] = 0
                for co in range(Co):
                    out[b, co, oy, ox] = fired[co]
                    slo[b, co, oy, ox] = sl[co]
    return out, slo


@njit(cache=True, parallel=True)
def fire_forward_events(tin, w, thr, T, stride, pad, Ho, Wo):
    """``fire_forward`` neuron by neuron, the events of the receptive field in time order.
    Returns (times, slopes at the crossings)."""
    B, C, H, W = tin.shape
    Co, _, KH, KW = w.shape
    n = C * KH * KW
    wf = w.reshape(Co, n)
    out = np.empty((B, Co, Ho, Wo), np.int32)
    slo = np.empty((B, Co, Ho, Wo), w.dtype)
    for b in prange(B):
        scr = _scratch(T, n)
        ev_t, ev_k = scr[1], scr[2]
        tin_b = tin[b]
        for oy in range(Ho):
            for ox in range(Wo):
                ne = _gather(tin_b, oy, ox, stride, pad, KH, KW, T, scr)
                for co in range(Co):
                    th = thr[co]
                    cur = wf[co, 0] - wf[co, 0]
                    pot = cur
                    e = 0
                    fired = T
                    for t in range(T):
                        while e < ne and ev_t[e] < t:
                            cur += wf[co, ev_k[e]]
                            e += 1
                        pot += cur
                        if pot >= th:
                            fired = t
                            break
                    if fired == T:  # the slope at T: all inputs
                        while e < ne:
                            cur += wf[co, ev_k[e]]
                            e += 1
                    out[b, co, oy, ox] = fired
                    slo[b, co, oy, ox] = cur
    return out, slo


@njit(cache=True, parallel=True)
def fire_backward(tin, w, tout, gv, T, stride, pad, nchunks):
    """STiDi-BP backward of one layer from spike times only.

    gv = dL/dV_j (B, Co, Ho, Wo) float64. Returns (dL/dw (Co, C, KH, KW), dL/dt_in):
        dL/dw_ji  = sum dL/dV_j * max(0, t_j - t_i)
        dL/dt_i   = sum_j dL/dV_j * (-w_ji) * [t_i < t_j]
    Silent neurons count as firing at T (t_j = T). Per position, every firing input
    updates the output channels that have an error there (no sorting of the events).
    """
    B, C, H, W = tin.shape
    Co, _, KH, KW = w.shape
    _, _, Ho, Wo = tout.shape
    n = C * KH * KW
    wt = np.ascontiguousarray(w.reshape(Co, n).T)  # (n, Co)
    gw_part = np.zeros((nchunks, n, Co), np.float64)
    gtin = np.zeros((B, C * H * W), np.float64)
    for ch in prange(nchunks):
        gwc = gw_part[ch]
        g = np.empty(Co, np.float64)
        tj = np.empty(Co, np.int64)
        act = np.empty(Co, np.int64)
        _, _, _, _, u_t, u_k, u_p = _scratch(T, n)
        for b in range(ch * B // nchunks, (ch + 1) * B // nchunks):
            tin_b = tin[b]
            gt_b = gtin[b]
            for oy in range(Ho):
                for ox in range(Wo):
                    na = 0  # the channels with an error here, their error and time
                    tmax = 0
                    for co in range(Co):
                        gc = gv[b, co, oy, ox]
                        if gc != 0.0:
                            act[na] = co
                            g[na] = gc
                            tj[na] = tout[b, co, oy, ox]
                            tmax = max(tmax, tj[na])
                            na += 1
                    if na == 0:
                        continue
                    for e in range(_field(tin_b, oy, ox, stride, pad, KH, KW, tmax, u_t, u_k, u_p)):
                        ti = u_t[e]  # (< tmax: inputs no channel here saw before its spike drop out)
                        row = gwc[u_k[e]]
                        wk = wt[u_k[e]]
                        acc = 0.0
                        for a in range(na):
                            d = tj[a] - ti
                            if d > 0:
                                co = act[a]
                                row[co] += g[a] * d
                                acc += g[a] * wk[co]
                        gt_b[u_p[e]] -= acc
    gw = np.zeros((n, Co), np.float64)
    for ch in range(nchunks):
        gw += gw_part[ch]
    return np.ascontiguousarray(gw.T).reshape(Co, C, KH, KW), gtin.reshape(B, C, H, W)


@njit(cache=True, parallel=True)
def crossing_slope(tin, w, tout, T, stride, pad):
    """Slope I_j(t_j) = sum_{i: t_i < t_j} w_ji of every neuron at its crossing step (the
    true sensitivity of its spike time is dt_j/dV_j = -1 / I_j(t_j)); silent neurons get the
    slope at T. w float64 (B, Co, Ho, Wo) result."""
    B, C, H, W = tin.shape
    Co, _, KH, KW = w.shape
    _, _, Ho, Wo = tout.shape
    n = C * KH * KW
    wf = w.reshape(Co, n)
    out = np.zeros((B, Co, Ho, Wo), np.float64)
    for b in prange(B):
        scr = _scratch(T, n)
        ev_t, ev_k = scr[1], scr[2]
        tin_b = tin[b]
        for oy in range(Ho):
            for ox in range(Wo):
                ne = _gather(tin_b, oy, ox, stride, pad, KH, KW, T, scr)
                for co in range(Co):
                    tj = tout[b, co, oy, ox]
                    acc = 0.0
                    for e in range(ne):
                        if ev_t[e] >= tj:
                            break
                        acc += wf[co, ev_k[e]]
                    out[b, co, oy, ox] = acc
    return out


def num_threads() -> int:
    """Threads the Numba kernels use (set with NUMBA_NUM_THREADS or numba.set_num_threads)."""
    return int(numba.get_num_threads())

"""Per-time-step PyTorch implementation of the same layer (any device, e.g. CUDA).

Straightforward: for every time step t it runs one dense convolution of the inputs that
fired at t-1 and updates (slope, potential) of every neuron. Its cost is T dense
convolutions per layer, which suits a GPU; on a CPU the event-driven Numba kernels in
:mod:`firstspike.train.kernels` are much faster (see bench/train_speed.py). Both give
identical spike times (tests/test_exactness.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight


def fire_forward(tin: torch.Tensor, w: torch.Tensor, thr: torch.Tensor, T: int, stride: int, pad: int) -> torch.Tensor:
    """Output spike times (B, Co, Ho, Wo), float tensor of integers 0..T."""
    dtype = w.dtype
    cur = pot = None
    out = None
    fired = None
    th = thr.to(dtype).view(1, -1, 1, 1)
    for t in range(T):
        if t == 0:
            d = F.conv2d(torch.zeros_like(tin, dtype=dtype), w, stride=stride, padding=pad)
            cur = torch.zeros_like(d)
            pot = torch.zeros_like(d)
            out = torch.full_like(d, float(T))
            fired = torch.zeros_like(d, dtype=torch.bool)
        else:
            d = F.conv2d((tin == t - 1).to(dtype), w, stride=stride, padding=pad)
            cur = cur + d
        pot = pot + cur
        new = (pot >= th) & ~fired
        out = torch.where(new, torch.full_like(out, float(t)), out)
        fired = fired | new
    return out


def fire_backward(
    tin: torch.Tensor, w: torch.Tensor, tout: torch.Tensor, gv: torch.Tensor, T: int, stride: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same formulas as the Numba kernel, one step at a time.

    max(0, t_j - t_i) = #{s : t_i <= s < t_j}, so dL/dw = sum_s wgrad([t_i <= s], gv [s < t_j]);
    dL/dt_i = -sum_s [t_i = s] * igrad(gv [t_j > s]).
    """
    dtype = gv.dtype
    gw = torch.zeros_like(w, dtype=dtype)
    gtin = torch.zeros(tin.shape, dtype=dtype, device=tin.device)
    wd = w.to(dtype)
    for s in range(T):
        g_s = gv * (tout > s).to(dtype)
        gw += conv2d_weight((tin <= s).to(dtype), w.shape, g_s, stride=stride, padding=pad)
        gi = conv2d_input(tin.shape, wd, g_s, stride=stride, padding=pad)
        gtin -= gi * (tin == s).to(dtype)
    return gw, gtin

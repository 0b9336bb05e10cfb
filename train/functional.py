"""Spike-time layer as a custom autograd Function, input coding, pooling, decision, loss.

Definitions follow docs/algorithm.md (the project's reference): discrete time 0..T-1,
silent = T, at most one spike per neuron, backward from spike times only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from firstspike.train import kernels, stepwise

BACKENDS = ("auto", "numba", "torch")


def input_table(T: int, gamma: float = 1.0) -> np.ndarray:
    """256-entry pixel -> spike time table: t = floor((255 - p) * T / 256), p = 0 silent (T).
    ``gamma`` != 1 bends the code: t = floor((1 - (p / 255) ** gamma) * T), clipped to T - 1
    (gamma < 1: dim pixels spike earlier). The table travels in the model file, so the golden
    model and the RTL use exactly what training used."""
    p = np.arange(256, dtype=np.int64)
    if gamma == 1.0:
        table = ((255 - p) * T) // 256
    else:
        table = np.minimum(np.floor((1.0 - (p / 255.0) ** gamma) * T), T - 1).astype(np.int64)
    table[0] = T
    return table.astype(np.int32)


def encode(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, [C,] H, W) -> spike times (B, C, H, W) float32 via the input table."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return table.to(images.device)[images.long()].float()


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


class SpikeFire(torch.autograd.Function):
    """t_out = first crossing of V_j(t) = sum_i w_ji max(0, t - t_i) over thr_j.

    Inputs: t_in (spike times, float), w_eff (weights the gradient refers to: real weights,
    or alpha * sign(w) in binary mode), w_fwd / thr_fwd (what the forward pass computes
    with: the same reals in float64, or exact integers +-1 and ceil(theta / alpha)).
    Backward (STiDi-BP): dL/dV_j = -dL/dt_j / rho, then the formulas in kernels.fire_backward.
    """

    @staticmethod
    def forward(ctx, t_in, w_eff, w_fwd, thr_fwd, rho: float, T: int, stride: int, pad: int, backend: str, norm: bool,
                latency: str = "rho"):
        Ho = (t_in.shape[2] + 2 * pad - w_fwd.shape[2]) // stride + 1
        Wo = (t_in.shape[3] + 2 * pad - w_fwd.shape[3]) // stride + 1
        if backend == "numba":
            tin_np = t_in.detach().cpu().numpy().astype(np.int32)
            wf = w_fwd.detach().cpu().numpy()
            wf = wf.astype(np.int32) if not wf.dtype.kind == "f" else wf.astype(np.float64)
            th = thr_fwd.detach().cpu().numpy()
            th = th.astype(np.int64) if wf.dtype.kind == "i" else th.astype(np.float64)
            out = torch.from_numpy(kernels.fire_forward(tin_np, wf, th, T, stride, pad, Ho, Wo)).to(t_in.dtype)
        else:
            out = stepwise.fire_forward(t_in.detach(), w_fwd.detach().double(), thr_fwd.detach().double(), T, stride, pad)
            out = out.to(t_in.dtype)
        ctx.save_for_backward(t_in, w_eff, out)
        ctx.cfg = (rho, T, stride, pad, backend, norm, latency)
        return out

    @staticmethod
    def backward(ctx, g_out):
        t_in, w_eff, t_out = ctx.saved_tensors
        rho, T, stride, pad, backend, norm, latency = ctx.cfg
        gv = normalise_error(-g_out.double() / latency_slope(latency, rho, t_in, w_eff, t_out, T, stride, pad), norm)
        if backend == "numba":
            gw, gt = kernels.fire_backward(
                t_in.detach().cpu().numpy().astype(np.int32),
                w_eff.detach().cpu().numpy().astype(np.float64),
                t_out.detach().cpu().numpy().astype(np.int32),
                np.ascontiguousarray(gv.cpu().numpy()),
                T,
                stride,
                pad,
                max(1, min(kernels.num_threads(), t_in.shape[0])),
            )
            gw = torch.from_numpy(gw)
            gt = torch.from_numpy(gt)
        else:
            gw, gt = stepwise.fire_backward(t_in.detach(), w_eff.detach().double(), t_out, gv, T, stride, pad)
        gw = gw.to(device=w_eff.device, dtype=w_eff.dtype)
        gt = gt.to(device=t_in.device, dtype=t_in.dtype) if ctx.needs_input_grad[0] else None
        return gt, gw, None, None, None, None, None, None, None, None, None


def normalise_error(gv: torch.Tensor, norm) -> torch.Tensor:
    """The error dL/dV of a layer, normalised per sample (``norm`` true: unit norm, averaged
    over the batch like the loss; "batch": unit RMS over the batch; false: unchanged)."""
    if norm == "batch":  # unit RMS per-sample norm over the batch: samples keep their relative sizes
        nrm = gv.flatten(1).norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12)
        return gv / (nrm * gv.shape[0])
    if norm:  # unit-norm error per sample, averaged over the (local) batch like the loss
        nrm = gv.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return gv / (nrm * gv.shape[0])
    return gv


F32_EXACT = 2**24  # integers below this are exact in float32, and so is every sum of them that stays below it


_WINDOW_F32 = [True]  # false inside float64_windows()


@contextmanager
def float64_windows() -> Iterator[None]:
    """Window layers in float64 throughout, as before ``window_dtype`` (bench/train_speed.py's baseline)."""
    _WINDOW_F32[0] = False
    try:
        yield
    finally:
        _WINDOW_F32[0] = True


def window_dtype(w: torch.Tensor, T: int, device: torch.device) -> torch.dtype:
    """The precision of a window layer's convolutions, float32 only where it changes nothing
    that is exact and on the CPU (elsewhere float64; CUDA's TF32 convolutions round):
    - integer weights (binary mode's ``w_fwd``): float32 when no sum can reach 2^24 (fan-in x T
      x max |w|), so every partial sum of the integer products is the exact integer in any
      order, as in float64, at an eighth of the time;
    - real weights: the weights' own dtype (float32 parameters: float32, a ``.double()`` network
      keeps float64); a real-valued layer's spike times are float results either way, its
      deployment is the fixed-point model the golden model runs (quantize/).
    tests/test_windows.py checks the float32 sums against float64 at the trained models' sizes."""
    if device.type != "cpu" or not _WINDOW_F32[0]:
        return torch.float64
    if not w.is_floating_point():
        bound = w[0].numel() * T * int(w.abs().max()) if w.numel() else 0
        return torch.float32 if bound < F32_EXACT else torch.float64
    return torch.float32 if w.dtype == torch.float32 else torch.float64


def _window_inputs(t_in: torch.Tensor, T: int, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 where an input fired, T - t_i where it fired and 0 elsewhere), in ``dt``."""
    fired = (t_in < T).to(dt)
    return fired, (T - t_in.to(dt)) * fired


def window_sums(t_in: torch.Tensor, w: torch.Tensor, T: int, stride: int, pad: int,
                slopes: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(A, S) of a layer with its own time window (``NetConfig.layer_windows``): its inputs
    spike in the window before its own, so at step t' of its window every input has arrived
    and V_j(t') = sum_i w_ji (T + t' - t_i) = A_j + t' S_j, A_j = sum_i w_ji (T - t_i),
    S_j = sum_i w_ji over the inputs that fired (None without ``slopes``: a ramp replaces it).
    Returned as float64; computed in ``window_dtype`` (exact integers for integer weights)."""
    dt = window_dtype(w, T, t_in.device)
    fired, a = _window_inputs(t_in, T, dt)
    wd = w.to(dt)
    A = F.conv2d(a, wd, stride=stride, padding=pad).double()
    return A, (F.conv2d(fired, wd, stride=stride, padding=pad).double() if slopes else None)


def window_crossing(A: torch.Tensor, S: torch.Tensor, thr: torch.Tensor, T: int) -> torch.Tensor:
    """First t' in 0..T-1 with A + t' S >= thr (thr per output channel; S per neuron, or per
    channel (1, Co, 1, 1): a ramp), else T (silent). Exact for integers: ceil of a float64
    quotient of integers below 2^26 is the integer one."""
    need = thr.double().view(1, -1, 1, 1).to(A.device) - A
    pos = S > 0  # (a ramp: per channel, broadcast; no full-size temporaries for it)
    t = torch.ceil(need / torch.where(pos, S, 1.0))  # where S <= 0: need itself, read only where need <= 0
    return torch.where(pos | (need <= 0), t.clamp_(0.0, float(T)), float(T))


class WindowFire(torch.autograd.Function):
    """``SpikeFire`` for a layer with its own time window (``NetConfig.layer_windows``): the
    layer fires only after every input spike of the window before has arrived, so
    t'_j = first t' with A_j + t' S_j >= thr_j (``window_sums``): dense convolutions, no time loop.
    With a ramp (``ramp_fwd``: per output channel, in the forward's units) the inputs' slope S_j
    is replaced by the ramp at the window's start, V_j(t') = A_j + t' r: the spike time is then
    a clipped, quantised ReLU of A_j, t' = T - floor(A_j / r) for r T = thr.
    Backward (STiDi-BP): dL/dV_j = -dL/dt_j / rho (or / S_j, the exact slope, with
    ``latency = "true"``; with a ramp / its effective value ``ramp_eff``, exact, and no error
    that pushes a neuron past either end of its window: not earlier than 0, not later than silent), dV_j/dw_ji =
    T + t'_j - t_i (with a ramp T - t_i), dV_j/dt_i = -w_ji for the inputs that fired (silent
    neurons count as t' = T; silent inputs get no gradient, as in SpikeFire)."""

    @staticmethod
    def forward(ctx, t_in, w_eff, w_fwd, thr_fwd, rho: float, T: int, stride: int, pad: int, norm, latency: str = "rho",
                ramp_fwd=None, ramp_eff=None):  # fmt: skip
        # real mode: w_fwd is w_eff in float64; the sums take the parameters' precision (window_dtype)
        w_sum = w_fwd if not w_fwd.is_floating_point() else w_eff
        A, S = window_sums(t_in.detach(), w_sum.detach(), T, stride, pad, slopes=ramp_fwd is None)
        if ramp_fwd is not None:
            S = ramp_fwd.detach().double().view(1, -1, 1, 1).to(A.device)
        out = window_crossing(A, S, thr_fwd.detach(), T).to(t_in.dtype)
        ctx.save_for_backward(t_in, w_eff, out, ramp_eff.detach() if ramp_eff is not None else None)
        ctx.cfg = (rho, T, stride, pad, norm, latency)
        return out

    @staticmethod
    def backward(ctx, g_out):
        t_in, w_eff, t_out, ramp = ctx.saved_tensors
        rho, T, stride, pad, norm, latency = ctx.cfg
        dt = window_dtype(w_eff, T, t_in.device)  # gradients: the weights' precision on the CPU
        slope = rho
        if ramp is not None:
            slope = ramp.to(dt).view(1, -1, 1, 1)
        elif latency == "true":
            _, S = window_sums(t_in.detach(), w_eff.detach(), T, stride, pad)
            slope = torch.where(t_out < T, S.clamp_min(rho), rho).to(dt)
        elif latency != "rho":
            raise ValueError(f"latency={latency!r}: a layer with its own window takes 'rho' or 'true'")
        gv = -g_out.to(dt) / slope
        if ramp is not None:  # clipped at both ends: a neuron at t' = 0 cannot fire earlier, a silent one cannot fire later
            gv.masked_fill_(((t_out == 0) & (gv < 0)) | ((t_out >= T) & (gv > 0)), 0.0)
        gv = normalise_error(gv, norm)
        fired, a = _window_inputs(t_in.detach(), T, dt)
        wd = w_eff.detach().to(dt)
        gw = torch.nn.grad.conv2d_weight(a, wd.shape, gv, stride=stride, padding=pad)
        if ramp is None:
            gw = gw + torch.nn.grad.conv2d_weight(fired, wd.shape, gv * t_out.to(dt), stride=stride, padding=pad)
        gt = None
        if ctx.needs_input_grad[0]:
            gt = (-torch.nn.grad.conv2d_input(t_in.shape, wd, gv, stride=stride, padding=pad) * fired).to(t_in.dtype)
        return gt, gw.to(w_eff.dtype), None, None, None, None, None, None, None, None, None, None


class RampReLU(torch.autograd.Function):
    """A ramp layer (``WindowFire`` with a ramp, real mode) as a dense activation: with its input
    times read as a = (T - t) / T, the layer's spike time is T - t' = clip(floor(T z / theta), 0, T)
    for z = sum_i w_ji a_i (its A_j / T), so ``RampReLU.apply(z, T, theta)`` returns (T - t') / T,
    a clipped, quantised ReLU. Its straight-through gradient is the trainer's: 1 / theta, zero where it
    would push a neuron past either end of its window (earlier than 0, later than silent; ``WindowFire``)
    and, with ``silent_grad`` false, at silent neurons (a hidden layer's: the layer above passes no
    error to inputs that did not fire; the output's get one, so true there). bench/accuracy_ceiling.py
    trains ramp networks' forward with it; tests/test_windows.py checks it against the spiking model."""

    @staticmethod
    def forward(ctx, z, T: int, theta: float, quantise: bool = True, silent_grad: bool = True):
        a = torch.clamp(torch.floor(z * (T / theta)), 0, T) / T if quantise else torch.clamp(z / theta, 0, 1)
        ctx.save_for_backward(a)
        ctx.theta, ctx.silent_grad = theta, silent_grad
        return a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        silent = (a <= 0) & (g > 0) if ctx.silent_grad else a <= 0
        stop = ((a >= 1) & (g < 0)) | silent
        return torch.where(stop, torch.zeros_like(g), g / ctx.theta), None, None, None, None


LATENCY = ("rho", "channel", "true")


def latency_slope(kind: str, rho: float, t_in, w_eff, t_out, T: int, stride: int, pad: int,
                  crossing: torch.Tensor | None = None):  # fmt: skip
    """The slope that linearises dt_j/dV_j = -1/slope in the backward.

    "rho": STiDi-BP, one constant per layer (theta_l / T). "true": each neuron's own slope
    at its crossing, I_j(t_j) = sum_{i: t_i < t_j} w_ji (exact derivative of the linearly
    interpolated crossing; not STiDi-BP's, but csnn_ice40's and csnn_fc256's default, where it
    trains better); silent neurons and slopes below rho
    use rho. "channel": a constant per output channel, the batch median of the crossing
    slopes of its firing neurons (rho where none fires), floored at rho: still a linear
    approximation with no per-neuron dependence, but in binary mode it cancels the
    per-channel scale alpha, which "rho" lets weigh every channel's error by alpha.
    ``crossing``: the slopes at the crossings when the forward already computed them
    (``kernels.fire_forward(..., slopes=True)``), else ``kernels.crossing_slope`` here."""
    if kind == "rho":
        return rho
    slope = crossing if crossing is not None else torch.from_numpy(
        kernels.crossing_slope(
            t_in.detach().cpu().numpy().astype(np.int32),
            w_eff.detach().cpu().numpy().astype(np.float64),
            t_out.detach().cpu().numpy().astype(np.int32),
            T, stride, pad,
        )  # fmt: skip
    ).to(t_out.device)
    fired = t_out < T
    if kind == "true":
        return torch.where(fired, slope.clamp_min(rho), torch.full_like(slope, rho))
    if kind == "channel":
        s = torch.where(fired, slope, torch.full_like(slope, float("nan"))).transpose(0, 1).flatten(1)
        med = torch.nan_to_num(torch.nanmedian(s, dim=1).values, nan=rho).clamp_min(rho)
        return med.view(1, -1, 1, 1)
    raise ValueError(f"unknown latency linearisation {kind!r}; use one of {LATENCY}")


def min_pool(t: torch.Tensor, k: int) -> torch.Tensor:
    """Earliest spike in each k x k window (stride k); gradient goes to the winner."""
    return -F.max_pool2d(-t, k, stride=k)


def decide(t_out: torch.Tensor, v_last: torch.Tensor, T: int, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Class = earliest output spike (lowest index on ties); if none fires, the largest
    V(T-1) - threshold with ``thresholds`` (the "margin" rule: the output nearest its own
    threshold), else the largest V(T-1) (the "potential" rule of older models); lowest index
    on ties. The one definition used everywhere."""
    fired = t_out.min(dim=1).values < T
    by_time = torch.argmin(t_out, dim=1)
    score = v_last if thresholds is None else v_last - thresholds.to(v_last.dtype).view(1, -1)
    by_v = torch.argmax(score, dim=1)
    return torch.where(fired, by_time, by_v)


def relative_targets(t_out: torch.Tensor, labels: torch.Tensor, T: int, gamma: float, t_goal: float | None = None) -> torch.Tensor:
    """S4NN/BS4NN relative targets: the correct class aims at the earliest output time tau,
    others firing before tau + gamma are pushed to min(tau + gamma, T); if nothing fired the
    correct class aims at T - gamma and the others stay at T.

    ``t_goal`` (time steps, optional): a deadline; tau is replaced by min(tau, t_goal), so a
    correct class that fires first but after the deadline is still pulled earlier (and the
    others by the same margin), which moves the decisions away from the end of the window.
    Targets carry no gradient: computed on the CPU (``_relative_targets``, one small loop
    instead of a dozen tensor operations a training step) and returned on t_out's device."""
    t = t_out.detach()
    tgt = _relative_targets(t.cpu().double().numpy(), labels.cpu().numpy(), float(T), float(gamma),
                            -1.0 if t_goal is None else float(t_goal), t.dtype == torch.float32)  # fmt: skip
    return torch.from_numpy(tgt).to(device=t.device, dtype=t.dtype)


@njit(cache=True)
def _relative_targets(t, labels, T, gamma, t_goal, single):
    """``relative_targets`` on float64 arrays (t_goal < 0: no deadline); ``single``: tau and
    tau + gamma rounded as float32 tensors compute them (the sum of two float32 values is
    exact in float64, so rounding it once equals float32 addition)."""
    B, K = t.shape
    out = np.empty((B, K))
    for b in range(B):
        tau = t[b].min()
        if t_goal >= 0:
            tau = min(tau, np.float32(t_goal) if single else t_goal)
        if tau >= T:  # nothing fired
            out[b, :] = T
            out[b, labels[b]] = T - gamma
            continue
        lim = np.float32(tau + np.float32(gamma)) if single else tau + gamma
        push = min(lim, T)
        for k in range(K):
            out[b, k] = push if t[b, k] < lim else t[b, k]
        out[b, labels[b]] = tau
    return out


def spike_loss(t_out: torch.Tensor, labels: torch.Tensor, T: int, gamma: float, kind: str = "relative",
               t_goal: float | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of 0.5 * sum_k e_k^2, e_k = (t_k - target_k) / T ("relative"),
    or a temporal cross-entropy on -t_k / T * 10 ("tce") or on -t_k / gamma ("ce");
    ``smoothing`` > 0: the cross-entropies' targets are label-smoothed (1 - s on the class,
    s / K spread over all K)."""
    if kind == "relative":
        e = (t_out - relative_targets(t_out, labels, T, gamma, t_goal)) / T
        return 0.5 * (e**2).sum(dim=1).mean()
    if kind == "tce":
        return F.cross_entropy(-t_out / T * 10.0, labels, label_smoothing=smoothing)
    if kind == "ce":
        # cross-entropy on -t / gamma (gamma steps = one logit unit); a silent output other
        # than the correct class cannot fire later, so it gets no gradient (its weights would
        # otherwise shrink without bound)
        silent_other = (t_out.detach() >= T) & ~F.one_hot(labels, t_out.shape[1]).bool()
        t = torch.where(silent_other, t_out.detach(), t_out)
        return F.cross_entropy(-t / gamma, labels, label_smoothing=smoothing)
    raise ValueError(f"unknown loss {kind!r}; use 'relative', 'ce' or 'tce'")


def distill_terms(t_out: torch.Tensor, t_teacher: torch.Tensor, T: int, tau: float,
                  weight: float) -> tuple[float, torch.Tensor]:
    """Knowledge distillation on the output spike times: ``weight`` x (tau / T)^2 x the mean
    over the batch of KL(p_teacher || p_student), p = softmax(-t / tau) (tau in time steps;
    the (tau / T)^2 puts its gradient on the scale of the relative loss's). Returns (the loss,
    dL/dt_out (B, classes), float64). A silent output (t >= T) cannot fire later: the error
    that would push it later is dropped (as the cross-entropy loss does)."""
    t = t_out.detach().double()
    log_ps = F.log_softmax(-t / tau, dim=1)
    log_pt = F.log_softmax(-t_teacher.detach().double().to(t.device) / tau, dim=1)
    scale = weight * (tau / T) ** 2
    loss = scale * float((log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean())
    grad = scale * (log_pt.exp() - log_ps.exp()) / (tau * t.shape[0])  # d/dt of -sum p_t log p_s
    grad = torch.where((t >= T) & (grad < 0), torch.zeros_like(grad), grad)
    return loss, grad


def potential_loss(
    t_out: torch.Tensor,
    t_in: torch.Tensor,
    w_eff: torch.Tensor,
    theta: float,
    labels: torch.Tensor,
    T: int,
    margin: float,
    t_star: float | None = None,
    stride: int = 1,
    pad: int = 0,
    ce_weight: float = 0.0,
    ce_temp: float = 0.1,
    ce_hidden: bool = False,
) -> torch.Tensor:
    """Output loss on the potentials at a decision time t* (the forward pass is unchanged).

    t* = ``t_star`` (a fixed step), or if None the earliest output spike (T - 1 if none
    fires). The fixed time is the one to use: with t* = the earliest spike, the loss rewards
    hidden neurons for firing before whatever output fired first, outputs then fire earlier
    still, and training spirals into decisions taken on the first few hidden spikes.
    The decision is right with a margin iff at t* the correct output is at or above its
    threshold and every other output is below its own: with z_k = (V_k(t*) - theta) / theta,
    the loss is the hinge relu(margin - z_c) + sum_{k != c} relu(margin + z_k), averaged
    over the batch. V_k(t*) = sum_i w_ki max(0, t* - t_i) is linear in the weights, so its
    gradients are exact: dV/dw_ki = max(0, t* - t_i), dV/dt_i = -w_ki [t_i < t*] (the
    STiDi-BP formulas with every output evaluated at the common time t* instead of its own
    spike time); the hidden layers below keep the STiDi-BP backward. ``ce_weight`` > 0 adds
    that much cross-entropy of the logits z / ``ce_temp``: an error on every image, also on those
    whose hinge is met; it trains the output layer only (its inputs detached), unless ``ce_hidden``."""
    if t_star is None:
        tau = t_out.detach().flatten(1).min(dim=1).values.clamp(max=float(T - 1))
    else:
        tau = torch.full((t_out.shape[0],), float(t_star), dtype=t_in.dtype, device=t_in.device)
    x = F.relu(tau.view(-1, 1, 1, 1).to(t_in.dtype) - t_in)  # relu: no gradient for t_i = t* (as [t_i < t*])
    v = F.conv2d(x.to(w_eff.dtype), w_eff, stride=stride, padding=pad).flatten(1)
    z = (v - theta) / theta
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    h = onehot * F.relu(margin - z) + (1 - onehot) * F.relu(margin + z)
    loss = h.sum(dim=1).mean()
    if ce_weight > 0:
        zc = z if ce_hidden else (F.conv2d(x.detach().to(w_eff.dtype), w_eff, stride=stride, padding=pad).flatten(1) - theta) / theta
        loss = loss + ce_weight * F.cross_entropy(zc / ce_temp, labels)
    return loss


def silence_penalty(hidden: list[torch.Tensor], T: int, fire_min: float) -> torch.Tensor:
    """Keeps hidden channels alive: for every channel whose firing fraction in the batch is
    below ``fire_min``, the mean of t/T over its silent neurons. Silent neurons count as
    firing at T, so the STiDi-BP backward turns this into weight increases from the inputs
    that did fire (neurons without any input get no gradient)."""
    total = hidden[0].new_zeros(())
    for t in hidden:
        silent = t >= T
        counts = torch.stack([(~silent).float().sum(dim=(0, 2, 3)), torch.full((t.shape[1],), float(silent[:, 0].numel()), device=t.device)])
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # rates of the global batch, as in one process
            world = torch.distributed.get_world_size()
        low_now = (counts[0] / counts[1] < fire_min).view(1, -1, 1, 1)
        mask = (silent & low_now).float()
        n = mask.sum().reshape(1)
        if world > 1:
            torch.distributed.all_reduce(n)
        if n.item() > 0:
            # DDP averages the ranks' gradients: scale so the sum equals the global-batch mean
            total = total + world * (t * mask).sum() / (T * n[0])
    return total

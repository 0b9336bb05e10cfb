"""Rung: training forward pass. The fast event-driven kernels (Numba) and the per-time-step
PyTorch path equal an independent, direct evaluation of

    V_j(t) = sum_i w_ji max(0, t - t_i),   t_j = first t in 0..T-1 with V_j(t) >= thr_j (else T)

on random networks and inputs (hypothesis), in binary (+-1, integer thresholds) and real
mode; the incremental (slope, potential) form gives the same integers; the custom backward
equals the formulas of docs/algorithm.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstspike.quantize.golden import decide as golden_decide
from firstspike.train import kernels, stepwise
from firstspike.train.functional import SpikeFire, decide, input_table, relative_targets
from firstspike.train.model import CSNN, LayerSpec, NetConfig, integer_threshold

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- independent references -------------------------------------------------------------
def patches(tin: np.ndarray, KH: int, KW: int, stride: int, pad: int, T: int) -> np.ndarray:
    """(B, Ho, Wo, C, KH, KW) input times of every receptive field; padding is silent (T)."""
    B, C, H, W = tin.shape
    x = np.full((B, C, H + 2 * pad, W + 2 * pad), T, dtype=np.int64)
    x[:, :, pad : pad + H, pad : pad + W] = tin
    Ho = (H + 2 * pad - KH) // stride + 1
    Wo = (W + 2 * pad - KW) // stride + 1
    out = np.empty((B, Ho, Wo, C, KH, KW), dtype=np.int64)
    for oy in range(Ho):
        for ox in range(Wo):
            out[:, oy, ox] = x[:, :, oy * stride : oy * stride + KH, ox * stride : ox * stride + KW]
    return out


def direct_times(tin, w, thr, T, stride, pad) -> tuple[np.ndarray, np.ndarray]:
    """Direct form: V(t) for every t as a sum over inputs; first crossing. Returns (times, V)."""
    Co, C, KH, KW = w.shape
    P = patches(tin, KH, KW, stride, pad, T)  # B,Ho,Wo,n
    B, Ho, Wo = P.shape[:3]
    P = P.reshape(B, Ho, Wo, -1)
    wf = w.reshape(Co, -1)
    ts = np.arange(T)
    # (B,Ho,Wo,n,T): max(0, t - t_i)
    R = np.maximum(0, ts[None, None, None, None, :] - P[..., None])
    V = np.einsum("bhwnt,cn->bchwt", R.astype(w.dtype), wf)  # (B,Co,Ho,Wo,T)
    cross = V >= np.asarray(thr).reshape(1, Co, 1, 1, 1)
    first = np.where(cross.any(-1), cross.argmax(-1), T)
    return first.astype(np.int64), V


def incremental_times(tin, w, thr, T, stride, pad) -> np.ndarray:
    """Incremental (hardware) form with two accumulators per neuron, step by step."""
    Co, C, KH, KW = w.shape
    P = patches(tin, KH, KW, stride, pad, T).reshape(tin.shape[0], -1, C * KH * KW)
    B, L, n = P.shape
    wf = w.reshape(Co, n)
    out = np.full((B, Co, L), T, dtype=np.int64)
    for b in range(B):
        for pos in range(L):
            for co in range(Co):
                cur = pot = 0
                for t in range(T):
                    if t > 0:
                        cur += wf[co][P[b, pos] == t - 1].sum()
                    pot += cur
                    if pot >= thr[co]:
                        out[b, co, pos] = t
                        break
    Ho = (tin.shape[2] + 2 * pad - KH) // stride + 1
    return out.reshape(B, Co, Ho, -1)


@st.composite
def layer_case(draw, binary: bool):
    T = draw(st.integers(2, 24))
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 3))
    K = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, K - 1))
    H = draw(st.integers(K, 6))
    W = draw(st.integers(K, 6))
    Co = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # times: many ties, silent inputs, sometimes all silent or all at t=0
    style = draw(st.sampled_from(["random", "silent", "zero", "few"]))
    if style == "random":
        tin = rng.integers(0, T + 1, size=(B, C, H, W))
    elif style == "silent":
        tin = np.full((B, C, H, W), T)
    elif style == "zero":
        tin = np.zeros((B, C, H, W), dtype=np.int64)
    else:
        tin = rng.choice([0, T // 2, T], size=(B, C, H, W))
    if binary:
        w = rng.choice([-1, 1], size=(Co, C, K, K)).astype(np.int32)
        thr = rng.integers(1, 3 * C * K * K * T // 4 + 2, size=Co).astype(np.int64)
        if draw(st.booleans()):
            thr[0] = draw(st.sampled_from([1, 10**9]))  # extreme thresholds
    else:
        # dyadic values: every partial sum is exact in float64, in any order
        w = rng.integers(-64, 65, size=(Co, C, K, K)).astype(np.float64) / 16.0
        thr = rng.integers(-8, 8 * T, size=Co).astype(np.float64) / 4.0
    return tin.astype(np.int32), w, thr, T, stride, pad


def run_numba(tin, w, thr, T, stride, pad):
    Co, C, KH, KW = w.shape
    Ho = (tin.shape[2] + 2 * pad - KH) // stride + 1
    Wo = (tin.shape[3] + 2 * pad - KW) // stride + 1
    return kernels.fire_forward(tin, w, thr, T, stride, pad, Ho, Wo).astype(np.int64)


def run_torch(tin, w, thr, T, stride, pad):
    out = stepwise.fire_forward(torch.from_numpy(tin).double(), torch.from_numpy(w).double(), torch.from_numpy(thr).double(), T, stride, pad)
    return out.numpy().astype(np.int64)


@SETTINGS
@given(data=st.data())
def test_binned_integer_kernel_equals_the_event_order_kernel(data) -> None:
    """The integer kernel (all channels of a position at once, hist of weights per time) and
    the per-neuron event-order kernel give the same times: multi-bit weights, thresholds at
    or below zero (fire at step 0) and above any reachable potential, int32 and int64 sums.
    Both also return every neuron's slope at its crossing (at T when silent), equal to
    ``crossing_slope``'s: the fused training step takes its exact slopes from the forward."""
    tin, w, thr, T, stride, pad = data.draw(layer_case(True))
    w = w * data.draw(st.sampled_from([1, 3, 127]))
    thr = thr + data.draw(st.sampled_from([0, -2, 10**6]))
    Co, C, KH, KW = w.shape
    Ho = (tin.shape[2] + 2 * pad - KH) // stride + 1
    Wo = (tin.shape[3] + 2 * pad - KW) // stride + 1
    wf = w.astype(np.float64)
    ref, ref_slope = kernels.fire_forward_events(tin, wf, thr.astype(np.float64), T, stride, pad, Ho, Wo)
    assert np.array_equal(ref_slope, kernels.crossing_slope(tin, wf, ref, T, stride, pad))
    for acc in (np.int32, np.int64):
        out, slope = kernels.fire_forward_binned(tin, w.astype(acc), thr, T, stride, pad, Ho, Wo)
        assert np.array_equal(out, ref) and np.array_equal(slope, ref_slope)
    assert np.array_equal(kernels.fire_forward(tin, w, thr, T, stride, pad, Ho, Wo), ref)
    out, slope = kernels.fire_forward(tin, w, thr, T, stride, pad, Ho, Wo, slopes=True)
    assert np.array_equal(out, ref) and np.array_equal(slope, ref_slope)


@SETTINGS
@given(data=st.data())
def test_real_forward_slopes_equal_crossing_slope(data) -> None:
    """Float weights: the forward's slopes at the crossings are crossing_slope's to the bit
    (the same additions in the same order), for firing and silent neurons; weights that are
    not dyadic, so the order of the additions shows."""
    tin, w, thr, T, stride, pad = data.draw(layer_case(False))
    w = w * (1.0 + np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).normal(0.0, 0.1, w.shape))
    Co, C, KH, KW = w.shape
    Ho = (tin.shape[2] + 2 * pad - KH) // stride + 1
    Wo = (tin.shape[3] + 2 * pad - KW) // stride + 1
    out, slope = kernels.fire_forward(tin, w, thr, T, stride, pad, Ho, Wo, slopes=True)
    assert np.array_equal(slope, kernels.crossing_slope(tin, w, out, T, stride, pad))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "real"])
@SETTINGS
@given(data=st.data())
def test_forward_equals_direct_evaluation(binary: bool, data) -> None:
    tin, w, thr, T, stride, pad = data.draw(layer_case(binary))
    ref, _ = direct_times(tin, w, thr, T, stride, pad)
    assert np.array_equal(run_numba(tin, w, thr, T, stride, pad), ref)
    assert np.array_equal(run_torch(tin, w, thr, T, stride, pad), ref)


@SETTINGS
@given(data=st.data())
def test_incremental_form_equals_direct(data) -> None:
    tin, w, thr, T, stride, pad = data.draw(layer_case(True))
    ref, _ = direct_times(tin, w, thr, T, stride, pad)
    assert np.array_equal(incremental_times(tin, w, thr, T, stride, pad), ref)


def test_reference_is_not_trivial() -> None:
    """Guard: the random cases above contain firing and silent neurons, so equality means something."""
    rng = np.random.default_rng(1)
    tin = rng.integers(0, 9, size=(4, 2, 6, 6)).astype(np.int32)
    w = rng.choice([-1, 1], size=(3, 2, 3, 3)).astype(np.int32)
    thr = np.array([5, 20, 40])
    ref, _ = direct_times(tin, w, thr, 8, 1, 1)
    assert (ref < 8).any() and (ref == 8).any() and len(np.unique(ref)) > 3
    assert np.array_equal(run_numba(tin, w, thr, 8, 1, 1), ref)


# --- whole network: binary forward pass is exactly the integer network -------------------
def small_net(T: int, mode: str, out_weight_bits: int = 1, input_gamma: float = 1.0, hidden_bits: int = 0) -> CSNN:
    cfg = NetConfig(
        name="t",
        T=T,
        mode=mode,
        out_weight_bits=out_weight_bits,
        input_gamma=input_gamma,
        input_shape=(1, 10, 10),
        layers=[
            LayerSpec("conv", channels=3, kernel=3, padding=1, weight_bits=hidden_bits),
            LayerSpec("pool", kernel=2),
            LayerSpec("conv", channels=4, kernel=3, stride=1, padding=0, weight_bits=hidden_bits),
            LayerSpec("fc", channels=5),
        ],
    )
    return CSNN(cfg)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(4, 40), style=st.sampled_from(["random", "zeros", "full"]),
       out_bits=st.sampled_from([1, 2, 4]), gamma=st.sampled_from([1.0, 0.5]), hidden_bits=st.sampled_from([0, 0, 2, 3]))  # fmt: skip
def test_binary_network_is_integer_network(seed: int, T: int, style: str, out_bits: int, gamma: float, hidden_bits: int) -> None:
    """Binary hidden layers (+-1, or k-bit: ``LayerSpec.weight_bits``) and a 1/2/4-bit output
    layer compute exactly the integer network, with the linear or a bent input code."""
    torch.manual_seed(seed)
    net = small_net(T, "binary", out_bits, gamma, hidden_bits)
    assert [m.weight_bits for m in net.spiking_layers()] == [max(hidden_bits, 1)] * 2 + [out_bits]
    with torch.no_grad():
        for m in net.spiking_layers():
            m.log_alpha.uniform_(-1.0, 4.0)
    g = torch.Generator().manual_seed(seed)
    if style == "random":
        x = torch.randint(0, 256, (3, 10, 10), generator=g, dtype=torch.uint8)
    else:
        x = torch.full((3, 10, 10), 0 if style == "zeros" else 255, dtype=torch.uint8)
    with torch.no_grad():
        outs = net.forward_all(x)
    table = input_table(T, gamma)
    t = table[x.numpy()][:, None].astype(np.int32)
    assert np.array_equal(outs[0].numpy().astype(np.int64), t)
    i = 1
    for kind, k, mod in zip(net.kinds, net.pools, net.layers):
        if kind == "pool":
            B, C, H, W = t.shape
            t = t[:, :, : H // k * k, : W // k * k].reshape(B, C, H // k, k, W // k, k).min(axis=(3, 5))
        else:
            lw = mod.weight.detach().numpy().astype(np.float64)
            if mod.weight_bits == 1:
                w = np.where(lw >= 0, 1, -1).astype(np.int32)
            else:  # round half to even, as torch.round
                q = 2 ** (mod.weight_bits - 1) - 1
                w = np.clip(np.rint(lw.astype(np.float32) * np.float32(q)), -q, q).astype(np.int32)
            alpha = torch.exp(mod.log_alpha.detach()).numpy().astype(np.float64)  # alpha is a float32 value
            thr = np.ceil(float(mod.theta) / alpha)
            thr = np.maximum(thr, 1).astype(np.int64)
            t, _ = direct_times(t, w, thr, T, mod.stride, mod.padding)
        assert np.array_equal(outs[i].numpy().astype(np.int64), t), f"layer {i} ({kind})"
        i += 1


def test_integer_threshold_folding() -> None:
    a = torch.tensor([0.5, 3.0, 7.0])
    assert integer_threshold(10.0, a).tolist() == [20.0, 4.0, 2.0]


# --- backward ----------------------------------------------------------------------------
def naive_grads(tin, w, tout, gv, stride, pad):
    B, C, H, W = tin.shape
    Co, _, K, _ = w.shape
    _, _, Ho, Wo = tout.shape
    gw = np.zeros(w.shape)
    gt = np.zeros(tin.shape)
    for b in range(B):
        for co in range(Co):
            for oy in range(Ho):
                for ox in range(Wo):
                    tj, g = tout[b, co, oy, ox], gv[b, co, oy, ox]
                    for c in range(C):
                        for ky in range(K):
                            for kx in range(K):
                                y, x = oy * stride - pad + ky, ox * stride - pad + kx
                                if 0 <= y < H and 0 <= x < W and tin[b, c, y, x] < tj:
                                    gw[co, c, ky, kx] += g * (tj - tin[b, c, y, x])
                                    gt[b, c, y, x] += g * -w[co, c, ky, kx]
    return gw, gt


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_backward_equals_formulas(data) -> None:
    tin, w, thr, T, stride, pad = data.draw(layer_case(False))
    tout = run_numba(tin, w, thr, T, stride, pad).astype(np.int32)
    rng = np.random.default_rng(0)
    gv = rng.normal(size=tout.shape)
    gv[rng.random(tout.shape) < 0.2] = 0.0
    ref_w, ref_t = naive_grads(tin, w, tout, gv, stride, pad)
    gw, gt = kernels.fire_backward(tin, w, tout, gv, T, stride, pad, 2)
    np.testing.assert_allclose(gw, ref_w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gt, ref_t, rtol=1e-10, atol=1e-10)
    tw, tt = stepwise.fire_backward(
        torch.from_numpy(tin), torch.from_numpy(w), torch.from_numpy(tout), torch.from_numpy(gv), T, stride, pad
    )
    np.testing.assert_allclose(tw.numpy(), ref_w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(tt.numpy(), ref_t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_autograd_function_uses_linearised_latency(backend: str) -> None:
    """dL/dV = -dL/dt / rho feeds the formulas; gradients flow to inputs and weights."""
    rng = np.random.default_rng(3)
    T, rho = 16, 0.75
    tin = torch.from_numpy(rng.integers(0, T + 1, size=(2, 2, 5, 5)).astype(np.float64)).requires_grad_()
    w = torch.from_numpy(rng.integers(-8, 9, size=(3, 2, 3, 3)) / 8.0).requires_grad_()
    thr = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    out = SpikeFire.apply(tin, w, w.detach(), thr, rho, T, 1, 1, backend, False)
    g = torch.from_numpy(rng.normal(size=out.shape))
    out.backward(g)
    ref_w, ref_t = naive_grads(
        tin.detach().numpy().astype(np.int32), w.detach().numpy(), out.detach().numpy().astype(np.int32), -g.numpy() / rho, 1, 1
    )
    np.testing.assert_allclose(w.grad.numpy(), ref_w, atol=1e-9)
    np.testing.assert_allclose(tin.grad.numpy(), ref_t, atol=1e-9)
    assert np.abs(ref_w).sum() > 0


# --- coding, decision, loss --------------------------------------------------------------
def test_input_table() -> None:
    t = input_table(64)
    assert t.shape == (256,) and t[0] == 64 and t[255] == 0 and t[1] == (254 * 64) // 256
    assert (np.diff(t[1:]) <= 0).all()
    for T in (8, 32, 64, 256):
        for gamma in (0.3, 0.5, 2.0):
            b = input_table(T, gamma)  # bent code: monotone, p = 0 silent, p = 255 at 0, all in 0..T-1
            assert b[0] == T and b[255] == 0 and (b[1:] <= T - 1).all() and (np.diff(b[1:]) <= 0).all()
            assert (b[1:] <= input_table(T)[1:]).all() == (gamma < 1)  # gamma < 1: every pixel as early or earlier


def test_decision_rule() -> None:
    T = 10
    t = torch.tensor([[3.0, 2.0, 2.0], [10.0, 10.0, 10.0], [10.0, 10.0, 10.0], [0.0, 10.0, 0.0]])
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 5.0, 5.0], [-3.0, -3.0, -4.0], [0.0, 0.0, 0.0]])
    assert decide(t, v, T).tolist() == [1, 1, 0, 0]
    # the margin rule: if no output fired, the largest V - thr (lowest index on ties); image 1's
    # margins are 1, -1, 3 (class 2, where V alone says 1), image 2's -3, -9, -6 (class 0)
    thr = torch.tensor([0.0, 6.0, 2.0])
    assert decide(t, v, T, thr).tolist() == [1, 2, 0, 0]
    assert decide(t[1:2], v[1:2], T, torch.tensor([0.0, 4.0, 4.0])).tolist() == [0]  # margins 1, 1, 1: lowest
    g = golden_decide(t.numpy().astype(np.int64), v.numpy().astype(np.int64), T, thr.numpy().astype(np.int64))
    assert g.tolist() == [1, 2, 0, 0]  # the golden model's copy of the rule agrees


def test_relative_targets() -> None:
    T, gamma = 20, 3.0
    t = torch.tensor([[5.0, 6.0, 12.0, 20.0], [4.0, 4.0, 19.0, 20.0], [20.0, 20.0, 20.0, 20.0]])
    y = torch.tensor([1, 0, 2])
    tg = relative_targets(t, y, T, gamma)
    assert tg[0].tolist() == [8.0, 5.0, 12.0, 20.0]
    assert tg[1].tolist() == [4.0, 7.0, 19.0, 20.0]
    assert tg[2].tolist() == [20.0, 20.0, 17.0, 20.0]
    assert tg.dtype == t.dtype
    # a deadline of 4.5 steps: tau = min(first spike, 4.5), also where nothing fired
    tg = relative_targets(t, y, T, gamma, t_goal=4.5)
    assert tg.tolist() == [[7.5, 4.5, 12.0, 20.0], [4.0, 7.0, 19.0, 20.0], [20.0, 20.0, 4.5, 20.0]]


def _relative_targets_torch(t: torch.Tensor, labels: torch.Tensor, T: int, gamma: float, t_goal: float | None) -> torch.Tensor:
    """The rule in tensor operations (the trainer's form before it moved to Numba), as reference."""
    tau = t.min(dim=1, keepdim=True).values
    if t_goal is not None:
        tau = torch.clamp(tau, max=float(t_goal))
    target = torch.where(t < tau + gamma, torch.clamp(tau + gamma, max=float(T)).expand_as(t), t)
    onehot = torch.nn.functional.one_hot(labels, t.shape[1]).bool()
    target = torch.where(onehot, tau.expand_as(t), target)
    silent = tau.squeeze(1) >= T
    if silent.any():
        none = torch.full_like(t[silent], float(T))
        none[onehot[silent]] = float(T - gamma)
        target[silent] = none
    return target


@SETTINGS
@given(data=st.data())
def test_relative_targets_equal_tensor_form(data) -> None:
    """Bit for bit in float32 and float64, fractional gamma and deadlines, silent images."""
    T, B, K = data.draw(st.integers(2, 40)), data.draw(st.integers(1, 8)), data.draw(st.integers(2, 10))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    t = torch.from_numpy(rng.integers(0, T + 1, size=(B, K))).to(dtype)
    if data.draw(st.booleans()):
        t[0] = T
    y = torch.from_numpy(rng.integers(0, K, size=B))
    gamma = data.draw(st.sampled_from([1.0, 3.0, 2.5, 0.7, 1 / 3]))
    t_goal = data.draw(st.sampled_from([None, 0.0, T / 3, 0.45 * T, 0.5 * T, T + 2.0]))
    got = relative_targets(t, y, T, gamma, t_goal)
    assert got.dtype == dtype and torch.equal(got, _relative_targets_torch(t, y, T, gamma, t_goal))
    # a case where float32 rounding of the deadline shows (tau + gamma = 5.1666670 in float32)
    t, y = torch.tensor([[5.0, 7.0, 7.0, 8.0, 8.0, 5.0]]), torch.tensor([5])
    assert torch.equal(relative_targets(t, y, 8, 2.5, 8 / 3), _relative_targets_torch(t, y, 8, 2.5, 8 / 3))


def test_training_step_same_on_both_backends() -> None:
    """The per-time-step PyTorch backend (the one CUDA users run) and the Numba kernels give
    the same spike times, loss and gradients on a real training step."""
    from firstspike.data import load_split
    from firstspike.train.functional import spike_loss
    from firstspike.train.model import load_config

    cfg, _ = load_config("csnn_tiny")
    split = load_split("mnist", "train")
    x = torch.from_numpy(split.images[:16].copy())
    y = torch.from_numpy(split.labels[:16].copy())
    torch.manual_seed(0)
    net = CSNN(cfg)
    net.calibrate(x)
    net.norm_grad = True
    res = {}
    for be in ("numba", "torch"):
        net.backend = be
        net.zero_grad()
        out = net(x)
        loss = spike_loss(out, y, cfg.T, 3.0)
        loss.backward()
        res[be] = (out.detach().clone(), float(loss.detach()), [p.grad.clone() for p in net.parameters()])
    assert torch.equal(res["numba"][0], res["torch"][0])
    assert res["numba"][1] == res["torch"][1]
    for a, b in zip(res["numba"][2], res["torch"][2]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

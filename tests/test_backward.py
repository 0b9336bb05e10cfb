"""The STiDi-BP backward of a whole network against an independent computation, and the
measurements the learning diagnostics rest on.

* A dense PyTorch autograd surrogate (no custom Function, no Numba kernel): each layer's
  spike time written as t_sur = t - (V_j(t_j) - V_j(t_j).detach()) / rho, with
  V_j(t_j) = sum_i w_ji max(0, t_j - t_i) at the (detached) forward spike times, has
  exactly the linearised-latency gradients dt_j/dV_j = -1/rho. The network's gradients
  (conv -> min-pool -> conv -> fc, per-sample normalisation on or off, binary scales)
  must equal the surrogate's.
* The crossing slope I_j(t_j) (the true sensitivity is -1/I_j(t_j)) equals V(t_j) - V(t_j - 1).
* Calibration leaves no channel of the iCE40 network silent on its calibration images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from firstspike.train import kernels
from firstspike.train.functional import min_pool
from firstspike.train.model import CSNN, LayerSpec, NetConfig, load_config


class _NormGrad(torch.autograd.Function):
    """Identity forward; backward divides each sample's gradient by (its L2 norm x batch)."""

    @staticmethod
    def forward(ctx, v):
        return v.view_as(v)

    @staticmethod
    def backward(ctx, g):
        n = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
        return g / (n * g.shape[0])


def _surrogate_layer(t_in, w, t_out, rho, stride, pad, norm):
    """Dense autograd version of one spiking layer's backward (forward values = t_out)."""
    B, C, H, W = t_in.shape
    Co, _, KH, KW = w.shape
    patches = F.unfold(t_in, (KH, KW), padding=pad, stride=stride)  # (B, C*KH*KW, L)
    # zero padding must read as "silent" (drives nothing): pad with T via a mask of ones
    ones = F.unfold(torch.ones_like(t_in), (KH, KW), padding=pad, stride=stride)
    tj = t_out.detach().flatten(2)  # (B, Co, L)
    x = torch.relu(tj.unsqueeze(2) - patches.unsqueeze(1)) * ones.unsqueeze(1)  # (B, Co, K, L)
    v = (w.reshape(1, Co, -1, 1) * x).sum(dim=2).view_as(t_out)
    if norm:
        v = _NormGrad.apply(v)
    return t_out.detach() - (v - v.detach()) / rho


def _net(mode: str, images: torch.Tensor) -> CSNN:
    cfg = NetConfig(
        name="bw", T=16, mode=mode, input_shape=(2, 10, 10),
        layers=[LayerSpec("conv", 4, 3, 1, 1), LayerSpec("pool", 0, 2), LayerSpec("conv", 5, 3, 1, 0), LayerSpec("fc", 3)],
    )  # fmt: skip
    torch.manual_seed(0)
    net = CSNN(cfg).double()
    net.backend = "numba"
    net.calibrate(images, "positive")
    return net


def check_against_surrogate(net: CSNN, images: torch.Tensor, gen: torch.Generator, layer_surrogate, atol: float = 1e-7) -> None:
    """The network's gradients (weights and binary scales) under a loss that touches every output
    (firing or silent) and the first hidden layer's times equal those of the same loss through
    ``layer_surrogate(mod, t_in, t_fwd)``, a dense autograd version of each spiking layer whose
    forward values are ``t_fwd``. ``atol`` is relative to each gradient's largest entry."""
    outs = net.forward_all(images)
    T = net.T
    assert 0 < float((outs[-1] < T).double().mean()) < 1, "test case should have firing and silent outputs"
    coef = torch.randn(outs[-1].shape, generator=gen, dtype=torch.float64)
    loss = (outs[-1].double() * coef).sum() + 0.1 * (outs[1].double() ** 2).mean()
    net.zero_grad()
    loss.backward()
    got = [m.weight.grad.clone() for m in net.spiking_layers()]
    got_alpha = [m.log_alpha.grad.clone() for m in net.spiking_layers() if m.binary]

    # independent computation
    net.zero_grad()
    t = outs[0].double()
    sur = [t]
    for kind, k, mod, t_fwd in zip(net.kinds, net.pools, net.layers, outs[1:]):
        t = min_pool(t, k) if kind == "pool" else layer_surrogate(mod, t, t_fwd.double())
        assert torch.equal(t.detach(), t_fwd.double())
        sur.append(t)
    ((sur[-1] * coef).sum() + 0.1 * (sur[1] ** 2).mean()).backward()
    for a, m in zip(got, net.spiking_layers()):
        assert m.weight.grad.abs().max() > 0
        torch.testing.assert_close(a, m.weight.grad, rtol=1e-4, atol=atol * float(a.abs().max()))  # spike times are float32
    for a, m in zip(got_alpha, [m for m in net.spiking_layers() if m.binary]):
        torch.testing.assert_close(a, m.log_alpha.grad, rtol=1e-4, atol=atol * float(a.abs().max()))


@pytest.mark.parametrize("mode", ["binary", "real"])
@pytest.mark.parametrize("norm", [False, True])
def test_network_backward_equals_dense_autograd_surrogate(mode: str, norm: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 2, 10, 10), generator=gen, dtype=torch.uint8)
    images[images < 90] = 0  # some silent inputs
    net = _net(mode, images)
    net.norm_grad = norm
    T = net.T
    check_against_surrogate(net, images, gen, lambda mod, t, t_fwd: _surrogate_layer(
        t, mod.effective()[0], t_fwd, float(mod.theta) / T, mod.stride, mod.padding, norm))  # fmt: skip


def test_crossing_slope_is_the_last_potential_step() -> None:
    """I_j(t_j) from the kernel = V_j(t_j) - V_j(t_j - 1) evaluated directly."""
    rng = np.random.default_rng(0)
    T = 20
    tin = rng.integers(0, T + 1, size=(3, 2, 7, 7)).astype(np.int32)
    w = rng.normal(size=(4, 2, 3, 3))
    thr = np.full(4, 6.0)
    tout = kernels.fire_forward(tin, w, thr, T, 1, 1, 7, 7)
    slope = kernels.crossing_slope(tin, w, tout, T, 1, 1)
    x = torch.from_numpy(tin).double()
    wt = torch.from_numpy(w)
    tj = torch.from_numpy(tout).double()

    def v_at(tt):  # V_j(tt_j) with per-neuron evaluation times
        patches = F.unfold(x, 3, padding=1)
        ones = F.unfold(torch.ones_like(x), 3, padding=1)
        r = torch.relu(tt.flatten(2).unsqueeze(2) - patches.unsqueeze(1)) * ones.unsqueeze(1)
        return (wt.reshape(1, 4, -1, 1) * r).sum(2).view_as(tt)

    ref = v_at(tj) - v_at(tj - 1)
    np.testing.assert_allclose(slope, ref.numpy(), atol=1e-9)
    fired = tout < T
    assert fired.any() and (~fired).any()
    # at a crossing the potential rose to the threshold: the slope of a firing neuron is > 0
    assert (slope[fired & (tout > 0)] > 0).all()


def test_calibration_leaves_no_silent_channel() -> None:
    """With random +-1 kernels about half the channels have a median peak potential <= 0;
    the original calibration then set their threshold to the channel maximum (silent on
    nearly every image). The default ("positive") must give every channel a real rate."""
    from firstspike.data import load_split

    cfg, _ = load_config("csnn_ice40")
    x = torch.from_numpy(load_split("mnist", "train").images[:256].copy())
    rates = {}
    for method in ("median", "positive"):
        torch.manual_seed(0)
        net = CSNN(cfg)
        net.calibrate(x, method)
        outs = net.forward_all(x)
        hidden = [o for k, o in zip(net.kinds, outs[1:]) if k == "conv"]
        rates[method] = min(float((o < net.T).float().mean(dim=(0, 2, 3)).min()) for o in hidden)
    assert rates["positive"] >= 0.03, rates
    assert rates["median"] < 0.03, rates  # the failure the fix addresses (so this test can fail)


def test_fan_in_start() -> None:
    """calib = "fan_in": real weights U(-1, 1) / sqrt(fan-in) in every spiking layer (after ``skip``:
    those keep theirs), no data; binary mode refuses it."""
    from dataclasses import replace

    cfg, _ = load_config("csnn_fashion_ramp")
    torch.manual_seed(0)
    net = CSNN(replace(cfg, mode="real"))
    first = net.spiking_layers()[0].weight.detach().clone()
    net.calibrate(torch.zeros(0), "fan_in", skip=1)
    assert torch.equal(net.spiking_layers()[0].weight, first)
    for m in net.spiking_layers()[1:]:
        bound = m.weight[0].numel() ** -0.5
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().mean()) > 0.4 * bound  # U(-b, b): mean |w| = b / 2
    with pytest.raises(ValueError, match="binary"):
        CSNN(cfg).calibrate(torch.zeros(0), "fan_in")
    from firstspike.errors import ConfigError
    from firstspike.train.trainer import TrainConfig

    with pytest.raises(ConfigError, match="calib must be"):  # a misspelt start is refused with the config
        TrainConfig.from_dict({"calib": "fanin"})


def test_potential_loss_gradients_are_exact() -> None:
    """potential_loss: V_k(t*) = sum_i w_ki max(0, t* - t_i) is linear in w, so its weight
    gradient is hinge' x max(0, t* - t_i) / theta and its input gradient -w_ki [t_i < t*]."""
    from firstspike.train.functional import potential_loss

    gen = torch.Generator().manual_seed(0)
    T, theta, margin, t_star = 16, 16.0, 0.1, 9.0
    t_in = torch.randint(0, T + 1, (4, 3, 2, 2), generator=gen).double().requires_grad_()
    w = (torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    labels = torch.tensor([0, 1, 4, 2])
    t_out = torch.full((4, 5), float(T))
    loss = potential_loss(t_out, t_in, w, theta, labels, T, margin, t_star)
    loss.backward()
    x = torch.clamp(t_star - t_in.detach(), min=0)
    v = torch.einsum("bchw,kchw->bk", x, w.detach())
    z = (v - theta) / theta
    onehot = F.one_hot(labels, 5).double()
    # d loss / d z: -1 where the correct output is below margin, +1 where another is above -margin
    dz = (-onehot * (margin - z > 0) + (1 - onehot) * (margin + z > 0)) / len(labels)
    ref_w = torch.einsum("bk,bchw->kchw", dz / theta, x)
    ref_t = -torch.einsum("bk,kchw->bchw", dz / theta, w.detach()) * (t_in.detach() < t_star)
    torch.testing.assert_close(w.grad, ref_w)
    torch.testing.assert_close(t_in.grad, ref_t)
    assert dz.abs().sum() > 0
    # margins satisfied (correct output far above its threshold at t*, the others far below) -> zero loss
    t0 = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    w_ok = torch.full((5, 3, 2, 2), -1.0, dtype=torch.float64)
    w_ok[2] = 1.0  # V_2(t*) = 12 * 9 = 108 >> theta, the others -108
    assert float(potential_loss(t_out[:1], t0, w_ok, theta, torch.tensor([2]), T, margin, t_star)) == 0.0
    assert float(potential_loss(t_out[:1], t0, w_ok, theta, torch.tensor([3]), T, margin, t_star)) > 0.0
    # ce_weight: the cross-entropy of z / ce_temp on top, an error even where the hinge is met
    zc = torch.where(torch.arange(5) == 2, 108.0, -108.0).double() / theta - 1
    ce = float(potential_loss(t_out[:1], t0, w_ok, theta, torch.tensor([2]), T, margin, t_star, ce_weight=0.5, ce_temp=4.0))
    assert ce == pytest.approx(0.5 * float(F.cross_entropy(zc.view(1, -1) / 4.0, torch.tensor([2])))) and ce > 0
    # its error reaches the input times only with ce_hidden (else the output layer alone learns from it)
    for hidden in (False, True):
        ti = t0.clone().requires_grad_()
        potential_loss(t_out[:1], ti, w_ok, theta, torch.tensor([2]), T, margin, t_star, ce_weight=0.5, ce_temp=4.0,
                       ce_hidden=hidden).backward()  # fmt: skip
        assert (ti.grad.abs().sum() > 0) == hidden

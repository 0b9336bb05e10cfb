"""The fused training step (train/fused.py, no autograd) against the autograd step the
trainer otherwise runs: the same spike times after every layer and the same gradients of
every parameter, on random networks and settings (hypothesis) and on the iCE40 network
with MNIST images; and the trainer picks it where it covers the settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstspike.data import load_split
from firstspike.train import fused
from firstspike.train.model import CSNN, LayerSpec, NetConfig, load_config
from firstspike.train.trainer import TrainConfig, _enter_refit, autograd_step, set_backward


def _grads(model: CSNN) -> dict[str, np.ndarray]:
    return {n: (p.grad.double().numpy().copy() if p.grad is not None else np.zeros(p.shape))
            for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip


def _both(model: CSNN, images, labels, tc: TrainConfig, t_goal, refit: bool, t_teacher=None):
    """(loss, outs, grads) of the autograd step and of the fused step on the same model."""
    res = []
    for fn in ("autograd", "fused"):
        model.zero_grad(set_to_none=True)
        if fn == "autograd":
            loss, outs = autograd_step(model, model, images, labels, tc, t_goal, refit, t_teacher)
        else:
            loss, outs = fused.step(model, images, labels, tc, t_goal, refit, t_teacher)
        res.append((loss, [o.detach().float() for o in outs], _grads(model)))
    return res


def _assert_same(res, tol: float) -> None:
    (la, oa, ga), (lf, of, gf) = res
    assert len(oa) == len(of)
    for a, f in zip(oa, of):
        assert torch.equal(a, f.view_as(a))  # spike times: exact
    assert lf == pytest.approx(la, rel=1e-5, abs=1e-7)
    assert ga.keys() == gf.keys()
    for name in ga:
        scale = max(np.abs(ga[name]).max(), 1e-6)
        if name.endswith("log_alpha"):  # a sum over the layer's weights, which can cancel to ~0 (1e-16), where
            # autograd's float32 spike-time gradients leave ~1e-7 of rounding: measured against its terms' size
            scale = max(scale, 1e-2 * np.abs(ga[name.removesuffix("log_alpha") + "weight"]).sum())
        err = np.abs(ga[name] - gf[name]).max() / scale
        assert err < tol, f"{name}: relative difference {err:.2e}"


@st.composite
def _case(draw):
    T = draw(st.integers(6, 24))
    mode = draw(st.sampled_from(["binary", "real"]))
    pool = draw(st.booleans())
    c1, c2 = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    hb = draw(st.sampled_from([0, 0, 2]))  # k-bit hidden layers (LayerSpec.weight_bits): the STE scaled by qmax
    layers = [LayerSpec("conv", c1, 3, 1, draw(st.integers(0, 1)), weight_bits=hb)]
    if pool:
        layers.append(LayerSpec("pool", 0, 2))
    layers.append(LayerSpec("conv", c2, 3, draw(st.integers(1, 2)), 0, weight_bits=hb))
    if draw(st.booleans()):  # a hidden fc layer (fc -> fc)
        layers.append(LayerSpec("fc", draw(st.integers(1, 6)), weight_bits=hb))
    layers.append(LayerSpec("fc", draw(st.integers(2, 5))))
    cfg = NetConfig(name="f", T=T, mode=mode, input_shape=(draw(st.integers(1, 2)), 12, 12), layers=layers,
                    per_channel_alpha=draw(st.booleans()), clip=draw(st.booleans()), bias=draw(st.booleans()))  # fmt: skip
    tc = TrainConfig(
        loss=draw(st.sampled_from(["potential", "relative"])),
        norm_grad=draw(st.booleans()), norm_mode=draw(st.sampled_from(["sample", "batch"])),
        fire_weight=draw(st.sampled_from([0.0, 1.0])), fire_min=draw(st.sampled_from([0.05, 0.6])),
        ce_weight=draw(st.sampled_from([0.0, 0.5])), ce_hidden=draw(st.booleans()),
        margin=draw(st.sampled_from([0.1, 0.3])), gamma=draw(st.sampled_from([1.0, 3.0])),
        refit_out_weight_bits=draw(st.sampled_from([0, 2])) if mode == "binary" else 0,
        latency=draw(st.sampled_from(["rho", "rho", "true", "channel"])),
        distill_weight=draw(st.sampled_from([0.5, 2.0])), distill_temp=draw(st.sampled_from([1.0, 5.0])),
    )  # fmt: skip
    t_goal = draw(st.sampled_from([None, 0.5 * T]))
    refit = mode == "binary" and draw(st.booleans())
    # a teacher's output times (distill; the spike-time loss's main epochs only), silent ones (T) among them
    teach = draw(st.booleans()) and tc.loss == "relative" and not refit
    t_teacher = torch.tensor(draw(st.lists(st.integers(0, T), min_size=5 * layers[-1].channels,
                                           max_size=5 * layers[-1].channels)), dtype=torch.float32).view(5, -1) if teach else None  # fmt: skip
    return cfg, tc, t_goal, refit, t_teacher, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_fused_step_equals_autograd_on_random_networks(case) -> None:
    cfg, tc, t_goal, refit, t_teacher, seed = case
    torch.manual_seed(seed)
    model = CSNN(cfg).double()  # float64 parameters: autograd's own rounding out of the comparison
    set_backward(model, tc)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (5, *cfg.input_shape), generator=g, dtype=torch.uint8)
    images[images < 100] = 0  # silent pixels, as in MNIST
    labels = torch.randint(0, cfg.layers[-1].channels, (5,), generator=g)
    with torch.no_grad():
        for m in model.spiking_layers():
            if m.binary:
                m.log_alpha.uniform_(-1.0, 1.5)  # from mostly silent to mostly firing layers
                m.weight.uniform_(-1.3, 1.3)  # some latent weights beyond the clip
            else:
                m.weight.mul_(3.0)
    if refit:
        _enter_refit(model, tc, new_width=True)
    _assert_same(_both(model, images, labels, tc, t_goal, refit, t_teacher), 1e-5)  # (spike-time gradients are float32 in autograd)


@pytest.mark.parametrize("refit", [False, True])
def test_fused_step_equals_autograd_on_the_ice40_network(refit: bool) -> None:
    """csnn_ice40 with its own training settings, calibrated on MNIST, batches of 8 images."""
    cfg, table = load_config("csnn_ice40")
    tc = TrainConfig.from_dict(table)
    split = load_split("mnist", "train")
    images, labels = torch.from_numpy(split.images[:256].copy()), torch.from_numpy(split.labels[:256].astype(np.int64))
    torch.manual_seed(0)
    model = CSNN(cfg)
    set_backward(model, tc)  # as the trainer does (the config's normalisation and slopes)
    model.calibrate(images[:256])
    if refit:
        _enter_refit(model, tc, new_width=True)
    t_goal = (tc.refit_t_goal or tc.t_goal) * cfg.T if refit else tc.t_goal * cfg.T
    for i in range(0, 32, 8):
        _assert_same(_both(model, images[i : i + 8], labels[i : i + 8], tc, t_goal, refit), 1e-4)  # float32 as trained


def test_trainer_chooses_the_fused_step_where_it_covers_the_settings() -> None:
    cfg, table = load_config("csnn_ice40")
    model = CSNN(cfg)
    tc = TrainConfig.from_dict(table)
    cpu = torch.device("cpu")
    assert fused.unsupported(model, tc, cpu, 1) is None
    assert fused.unsupported(model, dataclasses.replace(tc, latency="true"), cpu, 1) is None  # the exact slopes too
    assert "loss" in fused.unsupported(model, dataclasses.replace(tc, loss="tce"), cpu, 1)
    assert "data-parallel" in fused.unsupported(model, tc, cpu, 2)
    assert fused.unsupported(model, dataclasses.replace(tc, backend="torch"), cpu, 1) is not None

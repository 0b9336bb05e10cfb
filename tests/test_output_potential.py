"""``output = "potential"``: the output layer never fires and the class is the largest V(T-1).

* The logits (V(T-1) / theta_l with the effective weights) and their gradients are the
  linear formulas of the potential, in both window modes.
* A binary network's output layer has one scale for all classes, so the trained logits rank
  the classes as the integer potentials the hardware compares.
* Exported, its output thresholds lie above any reachable potential and the model file's rule
  is "max-potential": the golden model and the core (Amaranth's simulator) decide every image
  as training does (random networks also go through tests/test_golden.py's property test).
* Training refuses the settings it does not cover, and a small network learns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from firstspike.errors import ConfigError
from firstspike.quantize import modelfile
from firstspike.quantize.export import tables_from_model
from firstspike.quantize.golden import GoldenModel
from firstspike.train import fused
from firstspike.train.model import CSNN, LayerSpec, NetConfig, load_config
from firstspike.train.trainer import TrainConfig, load_checkpoint, model_from_checkpoint, train

T = 12


def _net(mode: str, windows: str, seed: int = 0) -> tuple[CSNN, np.ndarray]:
    cfg = NetConfig(name="pot", T=T, mode=mode, input_shape=(1, 8, 8), output="potential", layer_windows=windows,
                    layers=[LayerSpec("conv", channels=3, kernel=3, padding=1), LayerSpec("pool", kernel=2),
                            LayerSpec("fc", channels=6), LayerSpec("fc", channels=5)])  # fmt: skip
    torch.manual_seed(seed)
    net = CSNN(cfg)
    x = np.random.default_rng(seed).integers(0, 256, size=(24, 8, 8)).astype(np.uint8)
    net.calibrate(torch.from_numpy(x), "positive")
    return net, x


@pytest.mark.parametrize("windows", ["off", "ramp"])
@pytest.mark.parametrize("mode", ["real", "binary"])
def test_logits_are_the_potential_at_the_windows_end_with_its_gradients(mode: str, windows: str) -> None:
    net, x = _net(mode, windows)
    out = net.layers[-1]
    outs = net.forward_all(torch.from_numpy(x))
    assert (outs[-1] == T).all()  # the output layer never fires
    t_in = outs[-2].detach().double().flatten(1).requires_grad_(True)
    logits = net.logits(t_in.view_as(outs[-2]))
    w_eff = out.effective()[0].detach().double().flatten(1)
    theta = float(out.theta)
    fired = t_in.detach() < T
    if windows == "ramp":  # V(T-1) = sum_i w_i (T - t_i) + (T-1) r over the inputs that fired
        term = torch.where(fired, T - t_in.detach(), torch.zeros_like(t_in))
        want = (term @ w_eff.T + (T - 1) * out.ramp()[1].double()) / theta
    else:  # V(T-1) = sum_i w_i max(0, T-1 - t_i)
        term = torch.clamp(T - 1 - t_in.detach(), min=0.0)
        want = (term @ w_eff.T) / theta
    np.testing.assert_allclose(logits.detach().double().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # value: alpha times the integer potentials the decision compares (binary: one alpha)
    v_int = out.potential_at(outs[-2], T - 1).detach().flatten(1)
    if mode == "binary":
        assert out.log_alpha.numel() == 1
        np.testing.assert_allclose(logits.detach().double().numpy(), (out.alpha()[0].detach().double() * v_int / theta).numpy(), rtol=1e-5)
    # gradients: d logit_k / d t_i = -w_ki / theta_l for an input in the sum, 0 for a silent one
    g = torch.randn_like(logits)
    (logits * g).sum().backward()
    live = fired if windows == "ramp" else t_in.detach() < T - 1
    want_gt = -(g.double() @ w_eff) / theta * live
    np.testing.assert_allclose(t_in.grad.numpy(), want_gt.numpy(), rtol=1e-5, atol=1e-6)
    if mode == "real":  # d logit_k / d w_ki = the input's term / theta_l
        np.testing.assert_allclose(out.weight.grad.double().flatten(1).numpy(), (g.double().T @ term / theta).numpy(), rtol=1e-5, atol=1e-6)


def _spiking_twin(net: CSNN) -> CSNN:
    """The same weights with ``output = "spike"`` (its output layer fires at its thresholds)."""
    twin = CSNN(dataclasses.replace(net.cfg, output="spike"))
    state = net.state_dict()
    key = f"layers.{len(net.layers) - 1}.log_alpha"  # the one scale, per class
    state[key] = state[key].expand_as(twin.state_dict()[key]).clone()
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("windows", ["off", "ramp"])
def test_exported_potential_output_equals_golden_model_and_core(windows: str) -> None:
    from firstspike.hw.plan import plan_core
    from firstspike.sim.pysim import run_pysim
    from firstspike.sim.vectors import expected

    net, x = _net("binary", windows, seed=3)
    cls, outs = net.classify(torch.from_numpy(x))
    tables = modelfile.decode(modelfile.encode(tables_from_model(net)))
    assert tables.decision["if_silent"] == "max-potential"
    out = tables.layers[-1]
    _, hi = modelfile.potential_range(out.weights, T, out.ramps)
    assert (out.thresholds == hi + 1).all()  # above any reachable potential: never fires
    assert "outputs never fire" in modelfile.summary(tables)  # `firstspike info` says so
    assert "outputs never fire" not in modelfile.summary(tables_from_model(_spiking_twin(net)))
    res = GoldenModel(tables).run(x)
    assert [int((o.numpy().astype(np.int64) != r).sum()) for o, r in zip(outs, res.layer_times)] == [0] * len(outs)
    np.testing.assert_array_equal(res.classes, cls.numpy())
    np.testing.assert_array_equal(res.classes, net.logits(outs[-2]).argmax(1).numpy())
    assert len(np.unique(res.classes)) > 1  # the case decides, not a constant
    got = run_pysim(plan_core(tables, lanes=2), x[:3])
    np.testing.assert_array_equal(got.classes, expected(tables, x[:3]).classes)
    np.testing.assert_array_equal(got.classes, cls.numpy()[:3])


def test_potential_output_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="output='vote'"):
        NetConfig(name="x", layers=[LayerSpec("fc", channels=2)], output="vote").validate()
    cfg, table = load_config("csnn_tiny")
    cfg.output = "potential"
    tc = TrainConfig.from_dict(table)  # csnn_tiny trains with the relative spike-time loss
    with pytest.raises(ConfigError, match="loss = 'ce'"):
        train(cfg, tc, tmp_path, resume=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    why = fused.unsupported(CSNN(cfg), tc, torch.device("cpu"), 1)
    assert why is not None and "potential" in why


@pytest.mark.slow
def test_small_potential_output_network_learns_and_exports_exactly(tmp_path: Path) -> None:
    cfg, table = load_config("csnn_tiny")
    cfg.output = "potential"
    tc = TrainConfig.from_dict(table)
    tc.loss = "ce"
    tc.epochs, tc.train_subset, tc.test_subset, tc.progress, tc.diagnostics = 2, 4000, 500, False, False
    ck = train(cfg, tc, tmp_path, resume=False)
    # 51.8% measured (the spike-time output with the same cross-entropy budget: 16.8%); chance 10%
    assert ck["test_acc"] >= 0.4, f"test accuracy {100 * ck['test_acc']:.1f}% after 2 x 4000 images"
    assert ck["history"][-1]["train_loss"] < ck["history"][0]["train_loss"]
    model = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"))
    from firstspike.data import load_split

    te = load_split("mnist", "test")
    x = te.images[:300]
    cls, outs = model.classify(torch.from_numpy(x.copy()))
    res = GoldenModel(tables_from_model(model)).run(x)
    assert [int((o.numpy().astype(np.int64) != r).sum()) for o, r in zip(outs, res.layer_times)] == [0] * len(outs)
    assert int((cls.numpy() != res.classes).sum()) == 0


def test_training_dropout_reaches_the_output_layers_inputs() -> None:
    """With ``dropout``, the logits read dropped inputs as forward_all's dense layers do (the
    same generator draws gives the same mask); in evaluation they read the inputs unchanged."""
    net, x = _net("real", "ramp")
    net.eval()
    t_in = net.forward_all(torch.from_numpy(x))[-2]
    clean = net.logits(t_in)
    net.train()
    net.dropout = 0.5
    net.dropout_rng = torch.Generator().manual_seed(3)
    dropped = net.logits(t_in)
    net.dropout_rng = torch.Generator().manual_seed(3)
    t_dropped = net._dropped(t_in)
    net.dropout = 0.0
    np.testing.assert_allclose(dropped.detach().numpy(), net.logits(t_dropped).detach().numpy(), rtol=1e-6)
    assert not torch.allclose(dropped, clean)
    net.eval()
    net.dropout = 0.5
    np.testing.assert_array_equal(net.logits(t_in).detach().numpy(), clean.detach().numpy())

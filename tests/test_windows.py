"""A window per layer (``layer_windows``; "ramp" deploys: model file version 2): every spiking layer fires
only after all spikes of the window before have arrived.

* The dense forward (``functional.WindowFire``) equals a step-by-step simulation of the
  piecewise-linear neuron on the absolute clock (inputs at t_i, firing allowed at T..2T-1).
* The backward of a whole network equals a dense autograd surrogate of the linearised
  latency (dt_j/dV_j = -1/rho, V_j at the detached spike time of the layer's own window).
* The potentials the decision and the potential loss read are those of the same clock.
* The model file refuses such a network (the golden model and the RTL do not carry it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from firstspike.errors import ConfigError
from firstspike.quantize.export import check_deployable
from firstspike.train.functional import RampReLU, WindowFire, min_pool
from firstspike.train.model import CSNN, LayerSpec, NetConfig
from test_backward import check_against_surrogate

ROOT = Path(__file__).resolve().parent.parent


def _stepped(t_in: np.ndarray, w: np.ndarray, thr: np.ndarray, T: int, stride: int, pad: int,
             ramp: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Reference: the incremental neuron on the absolute clock 0..2T-1 (I(t) = I(t-1) + the
    weights of inputs at t-1, V(t) = V(t-1) + I(t)), firing allowed only at T..2T-1; the
    layer's time is t - T (T: silent). With ``ramp`` (per channel) I = ramp after step T."""
    B, C, H, W = t_in.shape
    Co, _, KH, KW = w.shape
    tp = np.pad(t_in, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=T)
    Ho, Wo = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    out = np.full((B, Co, Ho, Wo), T, np.int64)
    for b in range(B):
        for co in range(Co):
            for y in range(Ho):
                for x in range(Wo):
                    patch = tp[b, :, y * stride : y * stride + KH, x * stride : x * stride + KW]
                    cur = pot = 0
                    for t in range(1, 2 * T):
                        cur = ramp[co] if ramp is not None and t > T else cur + w[co][(patch == t - 1) & (patch < T)].sum()
                        pot += cur
                        if t >= T and pot >= thr[co]:
                            out[b, co, y, x] = t - T
                            break
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(2, 12), stride=st.integers(1, 2), pad=st.integers(0, 1),
       binary=st.booleans(), ramped=st.booleans())  # fmt: skip
def test_window_forward_equals_the_stepped_neuron(seed: int, T: int, stride: int, pad: int, binary: bool, ramped: bool) -> None:
    rng = np.random.default_rng(seed)
    t_in = rng.integers(0, T + 1, (2, 2, 5, 5))
    if binary:
        w = rng.choice([-1, 1], (3, 2, 3, 3))
        thr = rng.integers(1, 4 * T, 3)
    else:  # dyadic reals: the stepped sums are exact, so both orders of addition agree
        w = rng.integers(-8, 9, (3, 2, 3, 3)) / 4.0
        thr = rng.integers(1, 16 * T, 3) / 4.0
    ramp = (rng.integers(1, 5, 3) / (1 if binary else 4.0)) if ramped else None
    r = torch.tensor(ramp) if ramped else None
    got = WindowFire.apply(torch.tensor(t_in, dtype=torch.float32), torch.tensor(w, dtype=torch.float32),
                           torch.tensor(w), torch.tensor(thr), 1.0, T, stride, pad, False, "rho", r, r)  # fmt: skip
    np.testing.assert_array_equal(got.numpy().astype(np.int64), _stepped(t_in, w, thr, T, stride, pad, ramp))


def _cfg(mode: str, windows: str = "psp") -> NetConfig:
    return NetConfig(
        name="win", T=16, mode=mode, input_shape=(2, 10, 10), layer_windows=windows,
        layers=[LayerSpec("conv", 4, 3, 1, 1), LayerSpec("pool", 0, 2), LayerSpec("conv", 5, 3, 1, 0), LayerSpec("fc", 3)],
    )  # fmt: skip


def _surrogate(t_in, w, t_out, rho, stride, pad, T, slope=None, ramped=False):
    """Dense autograd version of one windowed layer: V_j = sum_i w_ji (T + t'_j - t_i) over
    the inputs that fired (t'_j detached; with a ramp sum_i w_ji (T - t_i) + t'_j r),
    t_sur = t' - (V_j - V_j.detach()) / slope."""
    fired = (t_in.detach() < T).double()
    v = F.conv2d((T - t_in) * fired, w, stride=stride, padding=pad)
    if not ramped:
        v = v + t_out.detach() * F.conv2d(fired, w, stride=stride, padding=pad)
    if ramped:  # the ends of the window: no error pushes a neuron earlier than 0 or later than silent
        v = _ClipEnds.apply(v, t_out.detach(), T)
    return t_out.detach() - (v - v.detach()) / (rho if slope is None else slope)


class _ClipEnds(torch.autograd.Function):
    """Identity forward; backward drops dL/dV < 0 at t' = 0 and dL/dV > 0 at t' = T."""

    @staticmethod
    def forward(ctx, v, t, T):
        ctx.save_for_backward(t)
        ctx.T = T
        return v.view_as(v)

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        drop = ((t == 0) & (g < 0)) | ((t >= ctx.T) & (g > 0))
        return torch.where(drop, torch.zeros_like(g), g), None, None


@pytest.mark.parametrize("mode", ["binary", "real"])
@pytest.mark.parametrize("latency,windows", [("rho", "psp"), ("true", "psp"), ("rho", "ramp")])
def test_window_network_backward_equals_dense_autograd_surrogate(mode: str, latency: str, windows: str) -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 2, 10, 10), generator=gen, dtype=torch.uint8)
    images[images < 90] = 0
    torch.manual_seed(0)
    net = CSNN(_cfg(mode, windows)).double()
    net.calibrate(images, "positive")
    net.latency = latency
    T = net.T

    def layer(mod, t, t_fwd):
        w_eff = mod.effective()[0]
        rho = float(mod.theta) / T
        slope = None
        if windows == "ramp":  # the exact slope: the ramp, alpha times its integer in binary mode
            slope = mod.ramp()[1].view(1, -1, 1, 1)
        elif latency == "true":  # the layer's own slope S_j = sum of the fired inputs' weights, floored at rho
            s = F.conv2d((t.detach() < T).double(), w_eff.detach(), stride=mod.stride, padding=mod.padding)
            slope = torch.where(t_fwd < T, s.clamp_min(rho), torch.full_like(s, rho))
        return _surrogate(t, w_eff, t_fwd, rho, mod.stride, mod.padding, T, slope, windows == "ramp")

    check_against_surrogate(net, images, gen, layer, atol=1e-6)


def _real_ramp_net(gen: torch.Generator, n: int, seed: int) -> tuple[CSNN, torch.Tensor]:
    """A float64 real-valued ramp network of ``_cfg``, calibrated on ``n`` sparse random images (drawn from ``gen``)."""
    images = torch.randint(0, 256, (n, 2, 10, 10), generator=gen, dtype=torch.uint8)
    images[images < 90] = 0
    torch.manual_seed(seed)
    net = CSNN(_cfg("real", "ramp")).double()
    net.calibrate(images, "positive")
    return net, images


def test_ramp_network_is_a_dense_network_of_ramp_relus() -> None:
    """A real-valued ramp network, forward and backward, equals the dense network of ``RampReLU``s on
    a = (T - t) / T that bench/accuracy_ceiling.py --activation ramp trains: every layer's spike
    times, and every weight's gradient under a loss on the output times (silent hidden neurons get
    no error, silent outputs do)."""
    gen = torch.Generator().manual_seed(7)
    net, images = _real_ramp_net(gen, 6, 1)
    T, spiking = net.T, net.spiking_layers()
    with torch.no_grad():  # outputs at both ends of their window: some silent, some at t' = 0
        spiking[-1].weight.mul_(4.0)
    outs = net.forward_all(images)
    coef = torch.randn(outs[-1].shape, generator=gen, dtype=torch.float64)
    (outs[-1].double() * coef).sum().backward()
    got = [m.weight.grad.clone() for m in spiking]

    net.zero_grad()
    a = (T - outs[0].double()) / T
    for kind, k, mod, t_fwd in zip(net.kinds, net.pools, net.layers, outs[1:]):
        if kind == "pool":
            a = F.max_pool2d(a, k)
        else:
            z = F.conv2d(a, mod.effective()[0], stride=mod.stride, padding=mod.padding)
            a = RampReLU.apply(z, T, float(mod.theta) / T, True, mod is spiking[-1])
            assert 0 < float((a > 0).double().mean()) < 1  # silent and firing neurons in every layer
        assert torch.equal(T - T * a.detach(), t_fwd.double())
    ((T - T * a) * coef).sum().backward()
    assert float((a == 0).double().mean()) > 0 and float((a >= 1).double().mean()) > 0  # both ends of the output's window
    for g, m in zip(got, spiking):
        assert m.weight.grad.abs().max() > 0
        torch.testing.assert_close(g, m.weight.grad, rtol=1e-5, atol=1e-7 * float(g.abs().max()))  # float32 spike times


@pytest.mark.parametrize("windows", ["psp", "ramp"])
def test_window_potentials_and_calibration_use_the_layers_own_clock(windows: str) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (8, 2, 10, 10), generator=gen, dtype=torch.uint8)
    images[images < 120] = 0
    torch.manual_seed(1)
    net = CSNN(_cfg("binary", windows))
    net.calibrate(images, "positive")
    outs = net.forward_all(images)
    T = net.T
    for kind, mod, t_in, t_out in zip(net.kinds, net.layers, outs[:-1], outs[1:]):
        if kind == "pool":
            continue
        assert 0 < float((t_out < T).float().mean()), "calibration should leave neurons firing"
        _, w, thr = mod.effective()
        # V at every step of the layer's window, by the definition on the absolute clock
        for step in (0, T // 2, T - 1):
            fired = (t_in < T).double()
            if windows == "ramp":
                want = F.conv2d((T - t_in.double()) * fired, w.double(), stride=mod.stride, padding=mod.padding)
                want = want + step * mod.ramp()[0].view(1, -1, 1, 1)
            else:
                want = F.conv2d((T + step - t_in.double()) * fired, w.double(), stride=mod.stride, padding=mod.padding)
            torch.testing.assert_close(mod.potential_at(t_in, float(step)), want, rtol=0, atol=0)
        # a neuron fires at its first step with V >= thr
        v = torch.stack([mod.potential_at(t_in, float(s)) for s in range(T)])
        first = torch.where((v >= thr.view(1, 1, -1, 1, 1)).any(0), (v >= thr.view(1, 1, -1, 1, 1)).double().argmax(0), T)
        assert torch.equal(first.to(t_out.dtype), t_out)


def test_model_file_refuses_windows_without_a_ramp() -> None:
    with pytest.raises(ConfigError, match="layer_windows"):
        check_deployable(_cfg("binary"))
    with pytest.raises(ConfigError, match="layer_windows"):
        NetConfig(name="x", layers=[LayerSpec("fc", 3)], layer_windows="on").validate()


def _ramp_net(T: int = 12) -> tuple[CSNN, np.ndarray]:
    cfg = NetConfig(name="ramp", T=T, mode="binary", input_shape=(1, 10, 10), layer_windows="ramp",
                    layers=[LayerSpec("conv", 4, 3, 1, 1), LayerSpec("pool", 0, 2), LayerSpec("conv", 5, 3, 1, 0),
                            LayerSpec("fc", 6), LayerSpec("fc", 4)])  # fmt: skip
    torch.manual_seed(2)
    net = CSNN(cfg)
    x = np.random.default_rng(2).integers(0, 256, size=(16, 10, 10)).astype(np.uint8)
    x[x < 100] = 0
    net.calibrate(torch.from_numpy(x), "positive")
    with torch.no_grad():  # scales of 1/16 .. 2: ramps of 16 .. 1 (theta / T = 1 in effective units)
        for m in net.spiking_layers():
            m.log_alpha.uniform_(-2.8, 0.7)
    return net, x


def test_ramp_network_through_the_model_file_equals_the_golden_model() -> None:
    from firstspike.quantize import modelfile
    from firstspike.quantize.export import tables_from_model
    from firstspike.quantize.golden import GoldenModel

    net, x = _ramp_net()
    tables = tables_from_model(net)
    data = modelfile.encode(tables)
    assert tables.version == 2 and data[8:10] == (2).to_bytes(2, "little")
    back = modelfile.decode(data)
    assert back.windows == "ramp"
    assert [list(ly.ramps) for ly in back.spiking] == [list(m.ramp()[0].long().numpy()) for m in net.spiking_layers()]
    assert len({int(r) for ly in back.spiking for r in ly.ramps}) > 1
    with torch.no_grad():
        cls, outs = net.classify(torch.from_numpy(x))
    res = GoldenModel(back).run(x)
    for i, (o, t) in enumerate(zip(outs, res.layer_times)):
        np.testing.assert_array_equal(o.numpy().astype(np.int64), t, err_msg=f"layer {i}")
    np.testing.assert_array_equal(cls.numpy(), res.classes)
    hidden = np.concatenate([t.ravel() for t in res.layer_times[1:-1]])
    T = net.T
    assert (hidden == 0).any() and (hidden == T).any() and ((hidden > 0) & (hidden < T)).any(), "saturated, silent and graded"


def test_ramp_model_file_defects_are_refused() -> None:
    import json

    from firstspike.quantize import modelfile
    from firstspike.quantize.export import tables_from_model

    tables = tables_from_model(_ramp_net()[0])
    data = modelfile.encode(tables)
    pre = modelfile._PRE
    _, version, _, hlen = pre.unpack_from(data)
    header = json.loads(data[pre.size : pre.size + hlen])
    payload = data[pre.size + hlen : -32]

    def build(h: dict, v: int = 2) -> bytes:
        import hashlib

        hb = json.dumps(h).encode()
        body = pre.pack(modelfile.MAGIC, v, 0, len(hb)) + hb + payload
        return body + hashlib.sha256(body).digest()

    assert modelfile.decode(build(header)).windows == "ramp"
    with pytest.raises(modelfile.ModelFileError, match="version 1"):
        modelfile.decode(build(header, 1))
    with pytest.raises(modelfile.ModelFileError, match="unknown layer windows"):
        modelfile.decode(build({**header, "windows": "psp"}))
    h = json.loads(json.dumps(header))
    del h["layers"][0]["ramps"]
    with pytest.raises(modelfile.ModelFileError, match="malformed"):
        modelfile.decode(build(h))
    zero = bytearray(payload)
    ref = header["layers"][0]["ramps"]
    zero[ref["offset"] : ref["offset"] + 4] = (0).to_bytes(4, "little")
    payload = bytes(zero)
    with pytest.raises(modelfile.ModelFileError, match="ramp below 1"):
        modelfile.decode(build(header))


def test_power_of_two_ramps() -> None:
    """``ramp_pow2``: every binary layer's integer ramp is a power of two, the nearest in log2 to
    theta / (T alpha); the golden model runs them like any ramp."""
    from firstspike.quantize.export import tables_from_model
    from firstspike.quantize.golden import GoldenModel

    net, x = _ramp_net()
    net.cfg.ramp_pow2 = True
    for m in net.spiking_layers():
        m.ramp_pow2 = True
        r = m.ramp()[0]
        assert torch.equal(r, torch.exp2(torch.log2(r).round()))
        want = torch.clamp(torch.exp2(torch.round(torch.log2(1.0 / m.alpha().double()))), min=1.0)
        assert torch.equal(r, want)
    assert len({int(v) for m in net.spiking_layers() for v in m.ramp()[0]}) > 1
    with torch.no_grad():
        cls, outs = net.classify(torch.from_numpy(x))
    res = GoldenModel(tables_from_model(net)).run(x)
    for o, t in zip(outs, res.layer_times):
        np.testing.assert_array_equal(o.numpy().astype(np.int64), t)
    np.testing.assert_array_equal(cls.numpy(), res.classes)


def test_core_runs_an_exported_ramp_network() -> None:
    """An exported network with layer windows on the core (Amaranth's simulator): every layer's
    spike times, V(T-1), the class and the first output step equal the golden model's."""
    from firstspike.hw.plan import plan_core
    from firstspike.quantize.export import tables_from_model
    from firstspike.sim.pysim import run_pysim
    from firstspike.sim.vectors import compare_streams, expected

    tables = tables_from_model(_ramp_net()[0])
    images = np.random.default_rng(5).integers(0, 256, size=(2, *tables.input_shape)).astype(np.uint8)
    plan = plan_core(tables, lanes=4)
    assert plan.windowed and plan.steps == (len(plan.layers) + 1) * tables.T
    got, want = run_pysim(plan, images), expected(tables, images)
    assert sum(compare_streams(tables, got.stream, want.stream).values()) == 0
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.times, want.first_time)


@pytest.mark.parametrize("config, checkpoint", [
    ("csnn_fashion_ramp", "fashion-mnist_binary_csnn_fashion_ramp.pt"),
    ("csnn_fashion_ramp", "fashion-mnist_real_csnn_fashion_ramp.pt"),
    ("csnn_ramp", "mnist_binary_csnn_ramp.pt"),
    ("csnn_ramp", "mnist_real_csnn_ramp.pt"),
    ("csnn_fc256_ramp", "mnist_binary_csnn_fc256_ramp.pt"),
    ("csnn_fashion_fc256_ramp", "fashion-mnist_real_csnn_fashion_fc256_ramp.pt"),
    ("csnn_fashion_fc256_ramp", "fashion-mnist_binary_csnn_fashion_fc256_ramp.pt"),
    ("csnn_fashion_fc256_ramp_m4", "fashion-mnist_binary_csnn_fashion_fc256_ramp_m4.pt"),  # 4-bit first and output layers
    ("csnn_fashion_fc256_ramp_pot", "fashion-mnist_real_csnn_fashion_fc256_ramp_pot.pt"),  # decision by potential
    ("csnn_fashion_fc256_ramp_pot", "fashion-mnist_binary_csnn_fashion_fc256_ramp_pot.pt"),
    ("csnn_fashion_fc256_ramp_m4_pot", "fashion-mnist_binary_csnn_fashion_fc256_ramp_m4_pot.pt"),
])
def test_ramp_config_is_the_recipe_of_the_committed_model(config: str, checkpoint: str) -> None:
    """A built-in ramp config, in the committed model's mode, reproduces that model's run: the network
    and every training setting the checkpoint records ([train.real] in real mode). Not compared: what
    the CLI or the machine chooses (dataset, seed, device...), and in real mode the binary scales' bound."""
    from dataclasses import asdict

    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, load_checkpoint

    net, train = load_config(config)
    ck = load_checkpoint(ROOT / "bench" / "results" / checkpoint)
    mode = ck["net"]["mode"]
    # (ramp_pow2 and output came after these runs: their defaults, off and "spike", are what they trained)
    assert {**net.to_dict(), "name": ck["net"]["name"], "mode": mode} == {"ramp_pow2": False, "output": "spike", **ck["net"]}
    tc = asdict(TrainConfig.from_dict(train, mode).for_mode(mode))
    sys.path.insert(0, str(ROOT / "bench"))
    from accuracy_ablations import NOT_RECIPE  # the settings that do not change what a run learns

    skip = {"dataset", *NOT_RECIPE["train"]}
    if mode == "real":
        skip |= {"min_threshold", "min_threshold_hidden"}
    if ck["train"].get("init_from"):  # the start is the command's (--init-from), and a committed model
        skip.add("init_from")
        assert (ROOT / ck["train"]["init_from"]).is_file(), ck["train"]["init_from"]
    recorded = {k: v for k, v in ck["train"].items() if k not in skip}
    assert {k: tc[k] for k in recorded} == recorded


@pytest.mark.parametrize("checkpoint", ["fashion-mnist_binary_csnn_fashion_fc256_ramp.pt", "mnist_binary_csnn_fc256_ramp.pt",
                                        "fashion-mnist_binary_csnn_fashion_fc256_ramp_m4.pt"])  # fmt: skip
def test_window_sums_in_float32_are_the_float64_integers_of_the_trained_models(checkpoint: str) -> None:
    """The CPU computes a binary window layer's sums in float32 (``window_dtype``: eight times
    faster than float64); at the committed models' sizes, on real images, every sum A_j and S_j of
    every layer must still be the exact integer float64 gives (no convolution algorithm that rounds)."""
    from firstspike.data import load_split
    from firstspike.train.functional import window_dtype, window_sums
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(ROOT / "bench" / "results" / checkpoint)
    model = model_from_checkpoint(ck)
    split = load_split(ck["train"]["dataset"], "test")
    outs = model.forward_all(torch.from_numpy(split.images[:48].copy()))
    checked, largest = 0, 0.0
    for kind, mod, t_in in zip(model.kinds, model.layers, outs[:-1]):
        if kind == "pool":
            continue
        w = mod.effective()[1]
        assert window_dtype(w, model.T, t_in.device) == torch.float32
        A, S = window_sums(t_in, w, model.T, mod.stride, mod.padding)
        fired = (t_in < model.T).double()
        want_A = F.conv2d((model.T - t_in.double()) * fired, w.double(), stride=mod.stride, padding=mod.padding)
        want_S = F.conv2d(fired, w.double(), stride=mod.stride, padding=mod.padding)
        assert torch.equal(A, want_A) and torch.equal(S, want_S)
        largest = max(largest, float(A.detach().abs().max()))
        checked += 1
    assert checked == len(model.spiking_layers())
    assert largest > 2**8  # beyond what a reduced-precision (bfloat16) convolution would keep exact


def test_window_dtype_is_float32_only_where_it_is_exact_on_the_cpu() -> None:
    from firstspike.train.functional import F32_EXACT, window_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small = torch.ones(8, 32, 5, 5, dtype=torch.int32)  # fan-in 800 x T 64 x 1
    assert window_dtype(small, 64, cpu) == torch.float32
    assert window_dtype(small, 64, cuda) == torch.float64  # CUDA's TF32 convolutions round
    wide = torch.full((8, 32, 5, 5), 7, dtype=torch.int32)
    assert 800 * 64 * 7 < F32_EXACT <= 800 * 4096 * 7
    assert window_dtype(wide, 64, cpu) == torch.float32
    assert window_dtype(wide, 4096, cpu) == torch.float64  # sums that could reach 2^24
    assert window_dtype(torch.zeros(3, 4, dtype=torch.float32), 64, cpu) == torch.float32  # real weights: their own precision
    assert window_dtype(torch.zeros(3, 4, dtype=torch.float64), 64, cpu) == torch.float64


def test_dropout_is_inverted_on_the_dense_inputs_and_off_in_evaluation(tmp_path: Path) -> None:
    """``dropout``: in training each input of a dense layer is silenced with probability p and the
    kept values T - t grow by 1 / (1 - p), so a dense layer's sums A_j keep their mean; the dropped
    inputs get no gradient; evaluation (``eval()``) computes the undropped network, bit for bit."""
    from firstspike.train.functional import window_sums
    from firstspike.train.trainer import TrainConfig, train

    net, images = _real_ramp_net(torch.Generator().manual_seed(3), 4, 4)
    ref = [t.detach().clone() for t in net.forward_all(images)]
    fc = net.spiking_layers()[-1]
    t_fc = ref[-2]  # the dense layer's input times, undropped
    assert 0 < float((t_fc < net.T).double().mean()) < 1
    net.train()
    net.dropout, net.dropout_rng = 0.25, torch.Generator().manual_seed(5)
    draws = torch.stack([net._dropped(t_fc) for _ in range(4000)])
    fired = t_fc < net.T
    dropped = (draws >= net.T) & fired
    assert abs(float(dropped.double().mean()) / float(fired.double().mean()) - 0.25) < 0.01
    kept = draws[~dropped & fired.expand_as(draws)]
    assert torch.allclose(net.T - kept, ((net.T - t_fc) / 0.75).expand_as(draws)[~dropped & fired.expand_as(draws)])
    A = torch.stack([window_sums(d, fc.weight.detach(), net.T, fc.stride, fc.padding, slopes=False)[0] for d in draws[:1000]])
    A0 = window_sums(t_fc, fc.weight.detach(), net.T, fc.stride, fc.padding, slopes=False)[0]
    assert torch.allclose(A.mean(0), A0, atol=4 * float(A.std(0).max()) / 1000**0.5)  # unbiased within 4 standard errors
    # gradient: only through the kept inputs
    t_in = t_fc.clone().requires_grad_(True)
    d = net._dropped(t_in)
    d.sum().backward()
    g = t_in.grad
    assert torch.equal(g == 0, (d >= net.T).detach()) and torch.allclose(g[g != 0], torch.tensor(1 / 0.75, dtype=g.dtype))
    # training differs, evaluation does not
    assert not all(torch.equal(a, b) for a, b in zip(net.forward_all(images), ref))
    net.eval()
    assert all(torch.equal(a, b) for a, b in zip(net.forward_all(images), ref))
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="dropout"):
            TrainConfig(dropout=bad).validate()
    with pytest.raises(ConfigError, match="needs layer_windows"):
        train(NetConfig(name="x", T=16, mode="real", input_shape=(1, 28, 28), layers=[LayerSpec("fc", 10)]),
              TrainConfig(dropout=0.2, epochs=1, train_subset=64, test_subset=64), tmp_path / "run")  # fmt: skip

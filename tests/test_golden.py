"""Rung: integer golden model. It reads only the model file and must equal training's
forward pass (binary mode) on every spike time of every layer, and on the class, for random
networks (hypothesis: ties, silent neurons, all-silent outputs, extreme thresholds, all-0 and
all-255 images) and for the trained default MNIST model on a sample of test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstspike.data import load_split
from firstspike.quantize import modelfile
from firstspike.quantize.export import quantize_checkpoint, tables_from_model
from firstspike.quantize.golden import GoldenModel
from firstspike.train import kernels
from firstspike.train.model import CSNN, LayerSpec, NetConfig

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "bench" / "results" / "mnist_binary.pt"


def compare(model: CSNN, golden: GoldenModel, images: np.ndarray) -> tuple[list[int], int]:
    """Spike-time mismatches per layer (input first) and class mismatches."""
    with torch.no_grad():
        cls, outs = model.classify(torch.from_numpy(images.copy()))
    res = golden.run(images)
    mism = [int((o.numpy().astype(np.int64) != t).sum()) for o, t in zip(outs, res.layer_times)]
    assert len(mism) == len(model.layers) + 1
    return mism, int((cls.numpy() != res.classes).sum())


@st.composite
def random_net(draw) -> tuple[CSNN, np.ndarray]:
    T = draw(st.integers(2, 40))
    side = draw(st.integers(6, 12))
    layers = []
    h = side
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(1, 3))
        stride = draw(st.integers(1, 2))
        pad = draw(st.integers(0, k - 1))
        nh = (h + 2 * pad - k) // stride + 1
        if nh < 2:
            break
        layers.append(LayerSpec("conv", channels=draw(st.integers(1, 4)), kernel=k, stride=stride, padding=pad))
        h = nh
        if draw(st.booleans()) and h >= 2:
            layers.append(LayerSpec("pool", kernel=2))
            h //= 2
    if draw(st.booleans()):  # a hidden fc layer (fc -> fc, as csnn_fc256)
        layers.append(LayerSpec("fc", channels=draw(st.integers(1, 12))))
    layers.append(LayerSpec("fc", channels=draw(st.integers(1, 10))))
    cfg = NetConfig(name="rand", T=T, mode="binary", input_shape=(1, side, side), layers=layers,
                    per_channel_alpha=draw(st.booleans()), out_weight_bits=draw(st.sampled_from([1, 1, 2, 3, 8])),
                    silent_rule=draw(st.sampled_from(["margin", "potential"])), output=draw(st.sampled_from(["spike", "spike", "potential"])),
                    layer_windows=draw(st.sampled_from(["off", "off", "ramp"])))  # fmt: skip
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    net = CSNN(cfg)
    # alpha spans tiny (huge thresholds: silent) to large (threshold 1: fires at the first event)
    lo, hi = sorted((draw(st.floats(-6.0, 6.0)), draw(st.floats(-6.0, 6.0))))
    with torch.no_grad():
        for m in net.spiking_layers():
            m.log_alpha.uniform_(lo, hi + 1e-3)
            if draw(st.booleans()):  # many equal weights -> many ties
                m.weight.copy_(torch.where(torch.rand_like(m.weight) < 0.8, 1.0, -1.0))
            elif m.weight_bits > 1 and draw(st.booleans()):  # k-bit output layer: the extreme integers
                m.weight.copy_(torch.where(torch.rand_like(m.weight) < 0.5, 1.0, -1.0) * draw(st.floats(0.0, 1.0)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 6))
    style = draw(st.sampled_from(["random", "zeros", "full", "sparse", "few-levels"]))
    if style == "random":
        x = rng.integers(0, 256, size=(n, side, side))
    elif style == "zeros":
        x = np.zeros((n, side, side))
    elif style == "full":
        x = np.full((n, side, side), 255)
    elif style == "sparse":
        x = rng.integers(0, 256, size=(n, side, side)) * (rng.random((n, side, side)) < 0.1)
    else:
        x = rng.choice([0, 1, 128, 255], size=(n, side, side))
    return net, x.astype(np.uint8)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_net())
def test_golden_equals_training_forward_random_networks(case) -> None:
    net, x = case
    tables = modelfile.decode(modelfile.encode(tables_from_model(net)))  # through the file format
    mism, cls = compare(net, GoldenModel(tables), x)
    assert mism == [0] * len(mism) and cls == 0, f"spike-time mismatches per layer {mism}, class mismatches {cls}"


def test_random_cases_cover_silence_and_ties() -> None:
    """Guard: a fixed case with silent outputs and tied spike times does occur and agrees."""
    cfg = NetConfig(name="g", T=8, mode="binary", input_shape=(1, 6, 6),
                    layers=[LayerSpec("conv", channels=2, kernel=3, padding=1), LayerSpec("fc", channels=3)])  # fmt: skip
    torch.manual_seed(0)
    net = CSNN(cfg)
    with torch.no_grad():
        net.layers[0].log_alpha.fill_(2.0)
        net.layers[1].log_alpha.fill_(-8.0)  # output threshold unreachable: all outputs silent
    x = np.random.default_rng(0).integers(0, 256, size=(4, 6, 6)).astype(np.uint8)
    g = GoldenModel(tables_from_model(net))
    res = g.run(x)
    assert (res.layer_times[-1] == 8).all()  # all-silent outputs: decided by V(T-1) - threshold
    hidden = res.layer_times[1]
    assert len(np.unique(hidden)) < hidden.size  # ties
    mism, cls = compare(net, g, x)
    assert mism == [0, 0, 0] and cls == 0


def test_fixed_point_golden_equals_integer_reference() -> None:
    """Real-valued nets export as fixed-point ints; the golden model runs exactly those ints."""
    cfg = NetConfig(name="r", T=16, mode="real", input_shape=(1, 8, 8),
                    layers=[LayerSpec("conv", channels=3, kernel=3, padding=1), LayerSpec("pool", kernel=2), LayerSpec("fc", channels=4)])  # fmt: skip
    torch.manual_seed(1)
    net = CSNN(cfg)
    x = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8)).astype(np.uint8)
    net.calibrate(torch.from_numpy(x))
    tables = tables_from_model(net, weight_bits=4)
    res = GoldenModel(tables).run(x)
    t = tables.input_table[x][:, None]
    for ly, got in zip(tables.layers, res.layer_times[1:]):
        if ly.kind == "pool":
            k = ly.kernel[0]
            B, C, H, W = t.shape
            t = t.reshape(B, C, H // k, k, W // k, k).min(axis=(3, 5))
        else:
            assert np.abs(ly.weights).max() <= 7
            t = kernels.fire_forward(t.astype(np.int32), ly.weights, ly.thresholds, tables.T, ly.stride, ly.padding,
                                     ly.out_shape[1], ly.out_shape[2])  # fmt: skip
        assert np.array_equal(got, t)


@pytest.mark.parametrize("checkpoint", [TRAINED.name, "mnist_binary_csnn_fc256.pt", "mnist_binary_csnn_fc256_ramp.pt"])
def test_trained_default_model_sample(checkpoint: str) -> None:
    """The trained binary MNIST models (committed: csnn, csnn_fc256 with its hidden dense layer,
    and csnn_fc256 with layer windows) on 300 test images: zero spike-time and class mismatches, and
    accuracy well above chance."""
    path = TRAINED.parent / checkpoint
    assert path.is_file(), f"{path} missing: run bench/accuracy.py"
    tables, model = quantize_checkpoint(path)
    test = load_split("mnist", "test")
    x, y = test.images[:300], test.labels[:300]
    g = GoldenModel(tables)
    mism, cls = compare(model, g, x)
    assert mism == [0] * len(mism) and cls == 0, f"mismatches per layer {mism}, classes {cls}"
    assert g.accuracy(x, y) > 0.8


@pytest.mark.parametrize("bad", ["float", "shape"])
def test_golden_rejects_bad_images(bad: str) -> None:
    cfg = NetConfig(name="b", T=4, mode="binary", input_shape=(1, 4, 4), layers=[LayerSpec("fc", channels=2)])
    g = GoldenModel(tables_from_model(CSNN(cfg)))
    x = np.zeros((1, 4, 4), np.float32) if bad == "float" else np.zeros((1, 5, 5), np.uint8)
    with pytest.raises(ValueError):
        g.run(x)

"""Rung: the generated Verilog on real simulators (Icarus 11 and Verilator 5.48) through
cocotb 2.1's Python runner, bit for bit against the golden model: every layer's spike
times, the output potentials V(T-1), the class and the first output spike step.

* random small networks (property-style, fixed seeds so CI is reproducible), in batch mode
  (simulator runs free) and handshake mode (Python drives valid/ready with stalls);
* the trained default binary MNIST model on a sample of test images, on both simulators;
* `firstspike verify` end to end, and the error for a missing simulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firstspike.cli import main
from firstspike.data import load_split
from firstspike.quantize.export import quantize_checkpoint
from firstspike.quantize.modelfile import save
from firstspike.sim import rtl
from firstspike.sim.vectors import compare_streams, expected, random_images, random_tables

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "bench" / "results" / "mnist_binary.pt"
SIMS = ["icarus", "verilator"]


@pytest.fixture
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-build")


@pytest.fixture
def trained() -> tuple:
    tables, _ = quantize_checkpoint(TRAINED)
    test = load_split("mnist", "test")
    return tables, test


@pytest.mark.slow
def test_trained_hidden_dense_model_sample(build_root: Path) -> None:
    """The committed csnn_fc256 (conv, pool, conv, pool, fc256, fc10) on Verilator at the ULX3S's
    64 lanes, test images spread over the set: every layer's spike times equal the golden model's."""
    tables, _ = quantize_checkpoint(TRAINED.parent / "mnist_binary_csnn_fc256.pt")
    assert [ly.kind for ly in tables.layers][-2:] == ["fc", "fc"]
    test = load_split("mnist", "test")
    images = test.images[np.linspace(0, len(test) - 1, 6).astype(int)][:, None]
    b = rtl.build(tables, sim="verilator", lanes=64, build_root=build_root, max_images=6)
    assert_exact(tables, rtl.run_images(b, images), images)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, dataset, weight_bits", [
    ("fashion-mnist_binary_csnn_fashion_ramp.pt", "fashion-mnist", None),
    ("fashion-mnist_binary_csnn_fashion_fc256_ramp.pt", "fashion-mnist", None),  # + a hidden fc256, from the real run
    ("fashion-mnist_binary_csnn_fashion_fc256_ramp_m4.pt", "fashion-mnist", None),  # the same with 4-bit first and output layers
    ("fashion-mnist_binary_csnn_fashion_fc256_ramp_pot.pt", "fashion-mnist", None),  # deciding by potential (no output fires)
    ("fashion-mnist_binary_csnn_fashion_fc256_ramp_m4_pot.pt", "fashion-mnist", None),  # the same with 4-bit first and output layers
    ("mnist_real_csnn_ramp.pt", "mnist", 4),  # the real-valued 99.38% network as 4-bit weights
])  # fmt: skip
def test_trained_layer_windows_model_sample(checkpoint: str, dataset: str, weight_bits: int | None, build_root: Path) -> None:
    """The committed models with layer windows (binary, binary with 4-bit first and output layers,
    and a real-valued one quantised to 4-bit weights) on Verilator at the ULX3S's 64 lanes, test images spread over the set: every value
    equals the golden model's."""
    tables, _ = quantize_checkpoint(TRAINED.parent / checkpoint, weight_bits=weight_bits)
    assert tables.windows == "ramp"
    test = load_split(dataset, "test")
    images = test.images[np.linspace(0, len(test) - 1, 6).astype(int)][:, None]
    b = rtl.build(tables, sim="verilator", lanes=64, build_root=build_root, max_images=6)
    assert_exact(tables, rtl.run_images(b, images), images)


def assert_exact(tables, res: rtl.SimResult, images: np.ndarray) -> None:
    want = expected(tables, images)
    mism = compare_streams(tables, res.stream, want.stream)
    assert sum(mism.values()) == 0, mism
    np.testing.assert_array_equal(res.classes, want.classes)
    np.testing.assert_array_equal(res.times, want.first_time)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_networks_batch_and_handshake(sim: str, seed: int, build_root: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1000 + seed)
    # seed 1: binary hidden layers with a 3-bit output layer (NetConfig.out_weight_bits); seeds 0 and 2: registered
    # state reads (plan_core read_reg, the iCEBreaker's core)
    tables = random_tables(rng, weight_bits=4 if seed == 2 else 1, in_channels=1 + seed % 2, out_weight_bits=3 if seed == 1 else None)
    images = random_images(rng, 4, tables.input_shape)
    b = rtl.build(tables, sim=sim, lanes=int(rng.integers(1, 5)), build_root=build_root, max_images=16, read_reg=seed != 1)
    assert_exact(tables, rtl.run_images(b, images, tmp_path / "batch"), images)
    assert_exact(tables, rtl.run_images(b, images, tmp_path / "hs", testcase="handshake", stall_seed=seed), images)


@pytest.mark.parametrize("sim", SIMS)
def test_random_networks_with_layer_windows(sim: str, build_root: Path, tmp_path: Path) -> None:
    """Layer windows with ramps (model file version 2) in the Verilog: (layers + 1) x T steps, every
    value equal to the golden model's, free-running and with stalls."""
    rng = np.random.default_rng(93)  # conv, pool, fc, fc; outputs fire at different steps, two classes
    tables = random_tables(rng, side=8, T=12, max_channels=4, in_channels=2, hidden_fc=1, windows=True, fire_bias=0.5)
    assert [ly.kind for ly in tables.layers] == ["conv", "pool", "fc", "fc"]
    images = random_images(rng, 4, tables.input_shape)
    b = rtl.build(tables, sim=sim, lanes=3, build_root=build_root, max_images=16, read_reg=True)
    assert_exact(tables, rtl.run_images(b, images, tmp_path / "batch"), images)
    assert_exact(tables, rtl.run_images(b, images, tmp_path / "hs", testcase="handshake", stall_seed=3), images)


@pytest.mark.parametrize("sim", SIMS)
def test_hidden_fc_layer(sim: str, build_root: Path, tmp_path: Path) -> None:
    """conv -> fc -> fc (a hidden dense layer, as csnn_fc256): every layer's spike times equal the golden model's."""
    seed = next(s for s in range(100) if (t := random_tables(np.random.default_rng(s), side=8, hidden_fc=1, fire_bias=0.3))
                and [ly.kind for ly in t.layers][-2:] == ["fc", "fc"] and t.layers[0].kind == "conv")  # fmt: skip
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, side=8, hidden_fc=1, fire_bias=0.3)
    images = random_images(rng, 4, tables.input_shape)
    b = rtl.build(tables, sim=sim, lanes=3, build_root=build_root, max_images=4)
    assert_exact(tables, rtl.run_images(b, images, tmp_path / "batch"), images)


@pytest.mark.slow
@pytest.mark.parametrize("sim,n", [("verilator", 24), ("icarus", 1)])
def test_trained_default_model_sample(sim: str, n: int, trained: tuple, build_root: Path) -> None:
    """The trained default binary MNIST network, test images spread over the set."""
    tables, test = trained
    idx = np.linspace(0, len(test) - 1, n).astype(int)
    images = test.images[idx][:, None]
    b = rtl.build(tables, sim=sim, lanes=32, build_root=build_root, max_images=n)
    res = rtl.run_images(b, images)
    assert_exact(tables, res, images)
    assert (res.cycles > 0).all()


def test_verify_cli_both_simulators(tmp_path: Path, build_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`firstspike verify` on a small network over real MNIST images (28x28), 2 jobs."""
    rng = np.random.default_rng(5)
    tables = random_tables(rng, side=28, max_layers=1, max_channels=3)
    model = save(tables, tmp_path / "m.fsm")
    out = tmp_path / "v.json"
    rc = main(["verify", str(model), "--sim", "both", "--images", "6", "--jobs", "2", "--chunk", "3", "--lanes", "2",
               "--build-dir", str(build_root), "--json", str(out), "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "icarus: 6 images, 0 mismatches" in text and "verilator: 6 images, 0 mismatches" in text
    import json

    d = json.loads(out.read_text())
    assert [r["sim"] for r in d] == ["verilator", "icarus"]
    assert all(r["class_mismatches"] == 0 and r["rtl_accuracy"] == r["golden_accuracy"] for r in d)


def test_missing_simulator_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(rtl.SimulatorError, match="apt-get install iverilog"):
        rtl.check_simulator("icarus")
    with pytest.raises(rtl.SimulatorError, match="unknown simulator"):
        rtl.check_simulator("modelsim")
    monkeypatch.undo()
    with pytest.raises(rtl.SimulatorError, match="cxx_opt '-O9'"):
        rtl.build(random_tables(np.random.default_rng(1), side=8), cxx_opt="-O9", build_root="/nonexistent")


def test_verify_reports_mismatches(tmp_path: Path, build_root: Path) -> None:
    """A core built from other tables than the golden model's must be caught, as numbers."""
    rng = np.random.default_rng(8)
    tables = random_tables(rng, side=8, T=12, fire_bias=0.3)
    images = random_images(rng, 4, tables.input_shape)
    b = rtl.build(tables, sim="verilator", lanes=2, build_root=build_root, max_images=4)
    res = rtl.run_images(b, images)
    other = random_tables(np.random.default_rng(8), side=8, T=12, fire_bias=0.3)
    for ly in other.layers:
        if ly.kind != "pool":
            ly.thresholds = np.maximum(ly.thresholds - 3, 0)
    want = expected(other, images)
    mism = compare_streams(other, res.stream, want.stream)
    assert mism["input"] == 0 and sum(mism.values()) > 0


def test_verify_images_of_the_wrong_shape(tmp_path: Path, build_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An 8x8 model against 28x28 MNIST: exit 2 naming both shapes, before any simulator build."""
    model = save(random_tables(np.random.default_rng(3), side=8), tmp_path / "m8.fsm")
    assert main(["verify", str(model), "--images", "2", "--build-dir", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "(1, 28, 28) do not match the model input (1, 8, 8)" in caplog.text
    assert not (tmp_path / "b").exists()

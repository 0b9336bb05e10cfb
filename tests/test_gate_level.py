"""Rung: Yosys's post-synthesis netlists of both FPGA families, with their cell models, on
Verilator, against the golden model and the RTL, at the sizes users run.

* the gate-level core of the trained iCEBreaker model (28x28 input, memories in block RAM
  on both families), every layer's spike times, the class and the cycle count against the
  RTL;
* a random 28x28 network on both netlists;
* a random network with 4-bit weights and layer windows (w (T - t_i): the ECP5 netlist's
  MULT18X18D blocks, with firstspike's model) on both netlists;
* an exported network that decides by potential (no output fires) on both netlists;
* a netlist that uses a cell Yosys does not model (a blackbox, or no module at all) and
  firstspike has no model for is refused with a clear error.

The block-RAM check of both families (memories alone, every cycle) is in test_memcheck.py,
the multiplier check in test_dspcheck.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from firstspike.data import load_split
from firstspike.quantize.export import quantize_checkpoint
from firstspike.sim import rtl
from firstspike.sim.vectors import compare_streams, expected, random_images, random_tables

ROOT = Path(__file__).resolve().parent.parent
ICE40_MODEL = ROOT / "bench" / "results" / "ice40_binary.pt"
BRAM = {"ice40": "SB_RAM40_4K", "ecp5": "DP16KD"}  # the families' block-RAM cells
O0 = "-O0"  # a few images each: the C++ compiles in 2/3 of -O2's time and simulates them in seconds


def test_blackbox_helpers(tmp_path: Path) -> None:
    text = "(* blackbox *)\nmodule A(input x);\nendmodule\nmodule B(output y);\nassign y = 1;\nendmodule\n"
    assert rtl.blackboxes(text) == {"A"}
    assert "module A" not in rtl.drop_modules(text, {"A"}) and "module B" in rtl.drop_modules(text, {"A"})
    net = "module top(input clk);\n  LUT4 #(\n    .INIT(16'h1)\n  ) \\u0  (\n    .A(clk)\n  );\n  SB_HFOSC u1 (.CLKHF(x));\nendmodule\n"
    assert rtl.netlist_cells(net) == {"LUT4", "SB_HFOSC"}
    # SB_HFOSC is a blackbox in Yosys's iCE40 models and firstspike has no model for it
    (tmp_path / "gl.v").write_text(net)
    with pytest.raises(rtl.SimulatorError, match=r"SB_HFOSC \(a blackbox in Yosys's ice40/cells_sim.v\)"):
        rtl.gate_level_models(tmp_path, "ice40", tmp_path / "gl.v")
    # a cell that no Yosys model file declares at all (MULT18X18D is only in cells_bb_ecp5.v)
    (tmp_path / "gl.v").write_text(net.replace("SB_HFOSC", "MULT18X18D").replace("LUT4", "TRELLIS_FF"))
    with pytest.raises(rtl.SimulatorError, match=r"MULT18X18D \(no module in Yosys's ice40/cells_sim.v\)"):
        rtl.gate_level_models(tmp_path, "ice40", tmp_path / "gl.v")
    # the ECP5 set-up: Yosys's models (its DP16KD blackbox dropped), then firstspike's two
    (tmp_path / "gl.v").write_text(net.replace("SB_HFOSC", "MULT18X18D").replace("LUT4", "DP16KD"))
    got = rtl.gate_level_models(tmp_path, "ecp5", tmp_path / "gl.v")
    assert [p.name for p in got] == ["cells_sim_ecp5_fs.v", "ecp5_dp16kd.v", "ecp5_mult18x18d.v"]
    kept = got[0].read_text()  # the rest of Yosys's models, through its includes (TRELLIS_FF, LUT4, ...)
    assert "DP16KD" not in rtl.modules(kept) and '`include "cells_ff.vh"' in kept
    assert rtl.modules(got[2].read_text()) == {"MULT18X18D"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_gate_level_trained_ice40_model(family: str, tmp_path: Path) -> None:
    """The trained iCEBreaker network (issue 11's failing case) at the board's 2 lanes (on the
    iCE40 with the board's registered state reads): netlist = golden model on every value, and
    = RTL on cycles."""
    tables, _ = quantize_checkpoint(ICE40_MODEL)
    test = load_split("mnist", "test")
    idx = np.linspace(0, len(test) - 1, 4).astype(int)
    images = test.images[idx][:, None]
    rr = family == "ice40"
    gl = rtl.build(tables, sim="verilator", lanes=2, build_root=tmp_path, max_images=4, gate_level=family, read_reg=rr,
                   cxx_opt=O0)
    netlist = (gl.build_dir / "src" / f"gl_{family}.v").read_text()
    assert len(re.findall(rf"^\s+{BRAM[family]}\b", netlist, re.M)) >= 8  # its memories are block RAM
    res = rtl.run_images(gl, images)
    want = expected(tables, images)
    mism = compare_streams(tables, res.stream, want.stream)
    assert sum(mism.values()) == 0, mism
    np.testing.assert_array_equal(res.classes, want.classes)
    ref = rtl.run_images(rtl.build(tables, sim="verilator", lanes=2, build_root=tmp_path, max_images=4, read_reg=rr, cxx_opt=O0),
                         images)  # fmt: skip
    np.testing.assert_array_equal(res.cycles, ref.cycles)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_gate_level_random_28x28(family: str, tmp_path: Path) -> None:
    """A random 28x28 network (other widths than the trained one) on both netlists, through
    `verify` (every layer's spike times and the class; a few images: compiled at -O0)."""
    rng = np.random.default_rng(5)
    tables = random_tables(rng, side=28, max_layers=1, max_channels=3)
    images = random_images(rng, 3, tables.input_shape)
    rep = rtl.verify(tables, images, lanes=2, build_root=tmp_path, gate_level=family, progress=False)
    assert rep.values_compared == expected(tables, images).stream.size and rep.sim == f"verilator (gate level, {family})"
    assert rep.total_mismatches == 0 and rep.class_mismatches == 0, (family, rep.spike_mismatches)
    flags = (rep.build_dir / "build.log").read_text()
    assert " -O0 " in flags and " -O2 " not in flags


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_gate_level_layer_windows(family: str, tmp_path: Path) -> None:
    """A random network with layer windows (conv, pool, fc, fc; ramps as slopes in the layers' own
    windows) on both netlists: every value equal to the golden model's."""
    rng = np.random.default_rng(93)
    tables = random_tables(rng, side=8, T=12, max_channels=4, in_channels=2, hidden_fc=1, windows=True, fire_bias=0.5)
    images = random_images(rng, 3, tables.input_shape)
    rep = rtl.verify(tables, images, lanes=2, build_root=tmp_path, gate_level=family, progress=False)
    assert rep.values_compared == expected(tables, images).stream.size
    assert rep.total_mismatches == 0 and rep.class_mismatches == 0, (family, rep.spike_mismatches)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_gate_level_k_bit_windows(family: str, tmp_path: Path) -> None:
    """4-bit weights with layer windows (each event adds w (T - t_i): a multiplier per neuron of
    the word; on the ECP5 a MULT18X18D block, which Yosys does not model) on both netlists:
    every value equal to the golden model's."""
    rng = np.random.default_rng(17)
    tables = random_tables(rng, side=8, T=12, max_channels=3, in_channels=1, weight_bits=4, windows=True, fire_bias=0.5)
    images = random_images(rng, 3, tables.input_shape)
    rep = rtl.verify(tables, images, lanes=2, build_root=tmp_path, gate_level=family, progress=False)
    if family == "ecp5":
        netlist = (rep.build_dir / "src" / "gl_ecp5.v").read_text()
        assert len(re.findall(r"^\s+MULT18X18D\b", netlist, re.M)) >= 2
    assert rep.values_compared == expected(tables, images).stream.size
    assert rep.total_mismatches == 0 and rep.class_mismatches == 0, (family, rep.spike_mismatches)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_gate_level_decision_by_potential(family: str, tmp_path: Path) -> None:
    """An exported ``output = "potential"`` network (layer windows, a 4-bit output layer with one
    scale; its thresholds above reach, so no output fires and the core's "max-potential" rule
    decides every image, as csnn_fashion_fc256_ramp_m4_pot) on both netlists: every value equal
    to the golden model's."""
    import torch

    from firstspike.quantize.export import tables_from_model
    from firstspike.train.model import CSNN, LayerSpec, NetConfig

    cfg = NetConfig(name="gp", T=12, mode="binary", input_shape=(1, 8, 8), output="potential", layer_windows="ramp",
                    out_weight_bits=4, layers=[LayerSpec("conv", channels=3, kernel=3, padding=1), LayerSpec("pool", kernel=2),
                                               LayerSpec("fc", channels=5)])  # fmt: skip
    torch.manual_seed(2)
    net = CSNN(cfg)
    x = np.random.default_rng(2).integers(0, 256, size=(16, 1, 8, 8)).astype(np.uint8)
    net.calibrate(torch.from_numpy(x[:, 0]), "positive")
    tables = tables_from_model(net)
    images = x[:3]
    want = expected(tables, images)
    assert tables.decision["if_silent"] == "max-potential" and (want.first_time == tables.T).all()
    rep = rtl.verify(tables, images, lanes=2, build_root=tmp_path, gate_level=family, progress=False)
    assert rep.values_compared == want.stream.size
    assert rep.total_mismatches == 0 and rep.class_mismatches == 0, (family, rep.spike_mismatches)


def test_gate_level_needs_verilator(tmp_path: Path) -> None:
    tables = random_tables(np.random.default_rng(5), side=8, max_layers=1, max_channels=2)
    with pytest.raises(rtl.SimulatorError, match="gate-level"):
        rtl.build(tables, sim="icarus", gate_level="ecp5", build_root=tmp_path)

"""Rung: the multiplier check (firstspike.sim.dspcheck) of the ECP5: multiplications of the
core's k-bit shapes and more (up to 36 x 36, split over several blocks), RTL against Yosys's
netlist with firstspike's MULT18X18D model, on every cycle; and the check must catch a model
that gets the signedness wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firstspike.sim import rtl
from firstspike.sim.dspcheck import dsp_check

CYCLES = 2000


@pytest.fixture(scope="module")
def dspcheck_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for both checks: the netlist and the RTL simulator are built once."""
    return tmp_path_factory.mktemp("dspcheck")


@pytest.mark.slow
def test_multiplier_check_ecp5(dspcheck_dir: Path) -> None:
    """Every product agrees, RTL and netlist, on 2,000 cycles, and really goes through DSP blocks."""
    rep = dsp_check("ecp5", dspcheck_dir, cycles=CYCLES)
    assert rep.dsp_blocks >= 15, rep  # each case at least one MULT18X18D, the wide ones several
    assert rep.mismatched_cycles == 0, (rep.first_mismatch, rep.per_case)


@pytest.mark.slow
def test_multiplier_check_catches_a_wrong_model(dspcheck_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check with a MULT18X18D model that ignores SIGNEDA (operand A always unsigned)
    must fail on the full-width signed products."""
    good = Path(rtl.__file__).parent / "cells" / rtl.CELL_MODELS["ecp5"]["MULT18X18D"]
    text = good.read_text()
    line = "wire signed [18:0] sa = {SIGNEDA & a[17], a};"
    assert line in text
    bad = tmp_path / "bad_mult18x18d.v"
    bad.write_text(text.replace(line, "wire signed [18:0] sa = {1'b0, a};"))
    monkeypatch.setitem(rtl.CELL_MODELS["ecp5"], "MULT18X18D", str(bad))  # an absolute path: used as it is
    rep = dsp_check("ecp5", dspcheck_dir, cycles=CYCLES)
    assert rep.mismatched_cycles > CYCLES // 2, rep
    assert "s18 x s18" in rep.per_case and "s36 x s36" in rep.per_case, rep.per_case

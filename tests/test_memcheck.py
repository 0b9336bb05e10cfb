"""Rung: the block-RAM check (firstspike.sim.memcheck) of both FPGA families: Amaranth
memories of the core's shapes and more, RTL against Yosys's netlist (with the family's cell
models, on Verilator) on every cycle; and the same check with Yosys's own ECP5 models must
fail, because Yosys's DP16KD is a blackbox (issue 11: every block-RAM read of the ECP5 netlist
was undriven).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firstspike.sim.memcheck import memory_check

BRAM = {"ice40": "SB_RAM40_4K", "ecp5": "DP16KD"}
CYCLES = 3000


@pytest.fixture(scope="module")
def memcheck_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the block-RAM checks: the design's RTL simulator and the ECP5 netlist
    are built once for the three of them (memcheck reuses what the folder holds)."""
    return tmp_path_factory.mktemp("memcheck")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_block_ram_check(family: str, memcheck_dir: Path) -> None:
    """Every read port of every memory shape agrees, RTL and netlist, on 3,000 cycles."""
    rep = memory_check(family, memcheck_dir, cycles=CYCLES)
    assert rep.cells.get(BRAM[family], 0) >= 10, rep.cells  # the shapes really map to block RAM
    if family == "ecp5":  # x1, x2, x9, x18 and x36 (PDPW16KD) ports all in use
        assert "DP16KD data widths 1/2/9/18/36" in rep.cells, rep.cells
    assert rep.mismatched_cycles == 0, (rep.first_mismatch, rep.per_case)


@pytest.mark.slow
def test_block_ram_check_fails_on_yosys_blackbox(memcheck_dir: Path) -> None:
    """Without firstspike's DP16KD model the check must fail (it did, silently, before)."""
    rep = memory_check("ecp5", memcheck_dir, cycles=CYCLES, replace_blackboxes=False)
    assert rep.mismatched_cycles > CYCLES // 2, rep


@pytest.mark.slow
def test_fast_ice40_bram_map_equals_yosys_stock(tmp_path: Path) -> None:
    """hw.yosys's iCE40 block-RAM map (INIT permutation as constant bit selects) gives every
    SB_RAM40_4K of initialised memories of the check design (8 to 72 bits wide, all four RAM4K
    read widths) the same parameters as Yosys's stock synth_ice40, and is really used."""
    import json

    from amaranth.back import verilog

    from firstspike.hw.yosys import ICE40_BRAMS_MAP, synthesis
    from firstspike.sim.memcheck import CASES, TOP, MemTorture

    design = MemTorture(tuple(CASES[i] for i in (1, 5, 6, 10)))  # initialised: 4-, 2-, 16- and 8-bit reads
    (tmp_path / f"{TOP}.v").write_text(verilog.convert(design, name=TOP, ports=[design.rd], emit_src=False))
    rams = {}
    for fast in (False, True):
        syn = synthesis("ice40", fast_bram_map=fast)
        assert (ICE40_BRAMS_MAP in syn.files) == fast
        r = syn.run(tmp_path, TOP, f"write_json out{int(fast)}.json")
        assert r.returncode == 0, r.stderr[-1500:]
        cells = json.loads((tmp_path / f"out{int(fast)}.json").read_text())["modules"][TOP]["cells"]
        rams[fast] = {k: c["parameters"] for k, c in cells.items() if c["type"] == "SB_RAM40_4K"}
    assert len(rams[False]) >= 15 and rams[True].keys() == rams[False].keys()
    modes = {p["READ_MODE"] for p in rams[False].values()}
    assert len(modes) == 4, modes  # 16-, 8-, 4- and 2-bit reads all occur
    for k, p in rams[False].items():
        assert rams[True][k] == p, k
    assert any("1" in v for p in rams[True].values() for n, v in p.items() if n.startswith("INIT_"))

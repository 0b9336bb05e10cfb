"""Multiplier check of a gate-level set-up: a design of many multiplications (the shapes the
core's k-bit layers use, a signed weight times an unsigned T - t_i, and more: signed and
unsigned, narrow and up to 18 x 18, wider products that Yosys splits over several DSP blocks,
a registered product, a product inside a sum), driven every cycle by pseudo-random operands
(the extreme values included), is simulated as RTL and as a family's Yosys netlist; every
product must agree on every cycle.

This checks a family's multiplier mapping and its simulation model together, independently of
the core, as firstspike.sim.memcheck does for block RAM: on the ECP5, Yosys maps these to
MULT18X18D blocks, which it ships without a simulation model (firstspike's is
sim/cells/ecp5_mult18x18d.v); on the iCE40 (``synth_ice40`` without ``-dsp``) they are LUTs.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal, signed, unsigned

from firstspike.sim.memcheck import TB, _run_verilator, _synthesize, cycle_rows, xorshift
from firstspike.sim.rtl import check_simulator, gate_level_args

log = logging.getLogger(__name__)
TOP = "fs_dspcheck"
DSP = {"ice40": "SB_MAC16", "ecp5": "MULT18X18D"}


@dataclass(frozen=True)
class MulCase:
    a_bits: int
    a_signed: bool
    b_bits: int
    b_signed: bool
    registered: bool = False  # the product goes through a register (sync domain)
    accumulate: bool = False  # the product is added to a third operand (as D + w (T - t_i))

    @property
    def name(self) -> str:
        s = lambda bits, sg: f"{'s' if sg else 'u'}{bits}"  # noqa: E731
        extra = " registered" if self.registered else " + c" if self.accumulate else ""
        return f"{s(self.a_bits, self.a_signed)} x {s(self.b_bits, self.b_signed)}{extra}"

    @property
    def width(self) -> int:
        return self.a_bits + self.b_bits + (1 if self.accumulate else 0)


CASES = (
    # the core's windows: a k-bit weight (one, a spike pair's sum, or registered: up to k + 2
    # bits) times T - t_i (unsigned, the time width), added to the potential
    MulCase(4, True, 5, False),
    MulCase(5, True, 6, False, accumulate=True),
    MulCase(6, True, 8, False),
    MulCase(3, True, 4, False, registered=True),
    MulCase(2, True, 2, True),
    MulCase(2, False, 3, False),
    MulCase(9, True, 9, True),
    MulCase(12, False, 7, True),
    MulCase(17, False, 17, False),
    MulCase(18, True, 18, True),
    MulCase(18, False, 18, False),
    MulCase(18, True, 18, False),
    MulCase(24, True, 20, True),  # over 18 bits: split over several blocks and added
    MulCase(30, False, 12, False),
    MulCase(36, True, 36, True),
)


class MulTorture(Elaboratable):
    """The check design: one xorshift stream per case; a quarter of the cycles use an extreme
    operand (the most negative, the largest, 0 or -1); output ``y`` is every product."""

    def __init__(self, cases: tuple[MulCase, ...] = CASES):
        self.cases = cases
        self.y = Signal(sum(c.width for c in cases))

    def elaborate(self, platform) -> Module:
        m = Module()
        outs = []
        for i, c in enumerate(self.cases):
            r = xorshift(m, i, 0x9E3779B97F4A7C15 * (i + 3))
            bits = Cat(r, r.rotate_left(29))

            def operand(n: int, sg: bool, off: int, sel: int) -> Signal:
                v = Signal(signed(n) if sg else unsigned(n), name=f"op{i}_{off}")
                lo, hi = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if sg else (0, (1 << n) - 1)
                edge = Mux(bits[sel], Mux(bits[sel + 1], lo, hi), Mux(bits[sel + 1], 0, -1 if sg else 1))
                m.d.comb += v.eq(Mux(bits[sel + 2] & bits[sel + 3], edge, bits[off : off + n]))
                return v

            a = operand(c.a_bits, c.a_signed, 0, 100)
            b = operand(c.b_bits, c.b_signed, 40, 104)
            y = Signal(signed(c.width) if c.a_signed or c.b_signed else unsigned(c.width), name=f"y{i}")
            if c.accumulate:
                acc = operand(c.width - 1, True, 80, 108)
                m.d.comb += y.eq(acc + a * b)
            elif c.registered:
                m.d.sync += y.eq(a * b)
            else:
                m.d.comb += y.eq(a * b)
            outs.append(y)
        m.d.comb += self.y.eq(Cat(*outs))
        return m


@dataclass
class DspCheckReport:
    family: str
    cycles: int
    mismatched_cycles: int
    first_mismatch: str | None
    per_case: dict[str, int]  # case -> cycles on which its product differs
    dsp_blocks: int  # the family's DSP cells in the netlist
    notes: list[str]


def dsp_check(family: str, work: str | Path, cycles: int = 3000, cases: tuple[MulCase, ...] = CASES) -> DspCheckReport:
    """Simulate the multiplier-check design as RTL and as ``family``'s netlist (Verilator, with
    firstspike's cell models) and compare every product on every cycle. ``work``: a folder of
    its own (the netlist is reused while the design is unchanged)."""
    check_simulator("verilator")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    design = MulTorture(cases)
    (work / f"{TOP}.v").write_text(verilog.convert(design, name=TOP, ports=[design.y], emit_src=False))
    tb = TB.format(w=len(design.y) - 1, top=TOP, cycles=cycles).replace(".rd(rd)", ".y(rd)")
    (work / "tb.v").write_text(tb)
    netlist, *models = _synthesize(work, family, True, TOP)
    dsp = len(re.findall(rf"^\s+{DSP[family]}\b", netlist.read_text(), re.M))
    what = "multiplier check"
    rtl = _run_verilator([work / f"{TOP}.v", work / "tb.v"], work, [], "rtl", TOP, what)
    gl = _run_verilator([netlist, *models, work / "tb.v"], work, gate_level_args(family), family, TOP, what)
    rows_r, rows_g, notes = cycle_rows(rtl, gl, cycles, what)
    per_case: dict[str, int] = {}
    first = None
    bad = 0
    for ra, rg in zip(rows_r, rows_g):
        if ra == rg:
            continue
        bad += 1
        va, vg = int(ra.split()[1], 16), int(rg.split()[1], 16)
        off, names = 0, []
        for c in cases:
            mask = (1 << c.width) - 1
            if (va >> off) & mask != (vg >> off) & mask:
                names.append(c.name)
                per_case[c.name] = per_case.get(c.name, 0) + 1
            off += c.width
        first = first or f"cycle {ra.split()[0]}: {', '.join(names)}"
    return DspCheckReport(family, cycles, bad, first, per_case, dsp, notes)


if __name__ == "__main__":  # python -m firstspike.sim.dspcheck ecp5 [work dir]
    logging.basicConfig(level=logging.INFO)
    rep = dsp_check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else f"build/dspcheck-{sys.argv[1]}")
    log.info("%s", rep)

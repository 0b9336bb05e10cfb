"""Block-RAM check of a gate-level set-up: a design of many Amaranth memories (the shapes
the core uses and more: narrow and wide words, deep and shallow, initial contents, read
enables, transparent and non-transparent read ports, write granularity), driven every
cycle by pseudo-random addresses, data and enables (same-address read and write included),
is simulated as RTL and as a family's Yosys netlist; every read port's data must agree
on every cycle.

This checks a family's block-RAM mapping and its simulation model together, independently
of the core: `memory_check("ecp5")` is what showed that Yosys's DP16KD is a blackbox
(every read 0) and what proves the replacement model against Yosys's mapping.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib.memory import Memory

from firstspike.hw.yosys import synthesis
from firstspike.sim.rtl import SimulatorError, check_simulator, gate_level_args, gate_level_models, synthesize_netlist

log = logging.getLogger(__name__)
TOP = "fs_memcheck"


@dataclass(frozen=True)
class MemCase:
    """One memory: word width, depth, initial contents (seeded), write granularity (0: none),
    read ports as (transparent to the write port, has a read enable)."""

    width: int
    depth: int
    init_seed: int | None = None
    granularity: int = 0
    reads: tuple[tuple[bool, bool], ...] = ((False, False),)
    writable: bool = True
    window: int = 0  # >0: addresses confined to the lowest `window` words (many collisions)


CASES = (
    MemCase(5, 784, reads=((False, True),)),  # input spike times (read enable)
    MemCase(18, 1024, init_seed=1),  # 18-bit words, initial contents
    MemCase(26, 512, reads=((False, True),)),  # layer state: one x36 word, read enable
    MemCase(40, 300, granularity=5, window=8),  # 5-bit write lanes
    MemCase(12, 64, reads=((True, False),), window=4),  # bucket heads: transparent read
    MemCase(16, 2000, init_seed=2, writable=False),  # weight ROM
    MemCase(72, 256, init_seed=3),  # wider than one block
    MemCase(9, 4096, init_seed=4),  # deeper than one block
    MemCase(3, 8192, init_seed=5),  # narrow and deep
    MemCase(1, 16384, init_seed=6),  # x1
    MemCase(8, 16, init_seed=7),  # LUT RAM
    MemCase(20, 700, init_seed=8, reads=((False, False), (True, True)), window=16),  # two read ports
)


def _init(seed: int | None, width: int, depth: int) -> list[int]:
    if seed is None:
        return []
    x, out = seed * 0x9E3779B97F4A7C15 & (2**64 - 1) or 1, []
    for _ in range(depth):
        x ^= (x << 13) & (2**64 - 1)
        x ^= x >> 7
        x ^= (x << 17) & (2**64 - 1)
        out.append(x & ((1 << width) - 1))
    return out


def xorshift(m: Module, i: int, seed: int) -> Signal:
    """A 64-bit xorshift stream (one step a cycle) named rng<i>, from ``seed`` (mod 2**64, never 0)."""
    r = Signal(64, init=seed & (2**64 - 1) or 1, name=f"rng{i}")
    x1 = r ^ (r << 13)[:64]
    x2 = x1 ^ (x1 >> 7)
    m.d.sync += r.eq(x2 ^ (x2 << 17)[:64])
    return r


class MemTorture(Elaboratable):
    """The check design: one xorshift stream per memory; output ``rd`` is every read port's
    data, concatenated."""

    def __init__(self, cases: tuple[MemCase, ...] = CASES):
        self.cases = cases
        self.widths = [c.width for c in cases for _ in c.reads]
        self.rd = Signal(sum(self.widths))

    def elaborate(self, platform) -> Module:
        m = Module()
        outs = []
        for i, c in enumerate(self.cases):
            r = xorshift(m, i, 0x2545F4914F6CDD1D * (i + 1))
            mem = Memory(shape=c.width, depth=c.depth, init=_init(c.init_seed, c.width, c.depth))
            m.submodules[f"mem{i}"] = mem
            ab = max(1, (c.depth - 1).bit_length())
            bits = Cat(r, r.rotate_left(17), r.rotate_left(41))  # 192 bits of stimulus

            def addr(off: int) -> Signal:
                a = Signal(ab, name=f"a{i}_{off}")
                raw = bits[off : off + ab]
                lim = c.window or c.depth
                m.d.comb += a.eq(raw % lim if lim & (lim - 1) else raw & (lim - 1))
                return a

            wp = None
            if c.writable:
                wp = mem.write_port(granularity=c.granularity or None)
                m.d.comb += [wp.addr.eq(addr(0)), wp.data.eq(bits[40 : 40 + c.width])]
                ne = len(wp.en)
                m.d.comb += wp.en.eq(bits[120 : 120 + ne] & Cat(*[bits[150] | bits[151]] * ne))
            for j, (transparent, has_en) in enumerate(c.reads):
                rp = mem.read_port(transparent_for=(wp,) if transparent and wp is not None else ())
                same = bits[160 + j]  # a quarter of the reads hit the word being written
                a = addr(20 + 8 * j)
                m.d.comb += rp.addr.eq(a)
                if wp is not None:
                    with m.If(same & bits[161 + j]):
                        m.d.comb += rp.addr.eq(wp.addr)
                if has_en:
                    m.d.comb += rp.en.eq(bits[170 + j] | bits[171 + j])
                outs.append(rp.data)
        m.d.comb += self.rd.eq(Cat(*outs))
        return m


TB = """`timescale 1ns/1ps
module {top}_tb (input clk);
    wire [{w}:0] rd;
    reg [31:0] n = 0;
    {top} dut (.clk(clk), .rst(n == 0), .rd(rd));
    always @(posedge clk) begin
        n <= n + 1;
        if (n > 0) $display("%0d %h", n - 1, rd);
        if (n == {cycles}) $finish;
    end
endmodule
"""
MAIN_CPP = """#include "Vtb.h"
#include "verilated.h"
int main(int argc, char** argv) {
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    Vtb* top = new Vtb{ctx};
    top->clk = 0;
    top->eval();
    while (!ctx->gotFinish()) {
        top->clk = !top->clk;
        top->eval();
    }
    top->final();
    delete top;
    return 0;
}
"""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _run_verilator(sources: list[Path], work: Path, extra: list[str], name: str, top: str = TOP,
                   what: str = "memory check") -> list[str]:  # fmt: skip
    """Build (once per content: a second check in the same folder reuses it) and run one side
    of a check whose test bench is ``<top>_tb``."""
    (work / "main.cpp").write_text(MAIN_CPP)
    key = _digest(name, *extra, MAIN_CPP, *(s.read_text() for s in sources))
    odir = work / f"obj_{name}_{key}"
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign",
           "fast", "--x-initial", "fast", "-O0", "-CFLAGS", "-O0", "-Mdir", str(odir), "--prefix", "Vtb", "--top-module", f"{top}_tb",
           "-o", "sim", *extra, str(work / "main.cpp"), *map(str, sources)]  # fmt: skip
    if not (odir / ".built").exists():
        shutil.rmtree(odir, ignore_errors=True)
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if r.returncode:
            raise SimulatorError(f"Verilator failed to build the {what} ({name}): {(r.stderr or r.stdout)[-1500:]}")
        (odir / ".built").touch()
    r = subprocess.run([str(odir / "sim")], cwd=work, capture_output=True, text=True)
    if r.returncode:
        raise SimulatorError(f"{what} simulation ({name}) failed: {(r.stderr or r.stdout)[-1500:]}")
    return r.stdout.splitlines()


def cycle_rows(rtl: list[str], gl: list[str], cycles: int, what: str) -> tuple[list[str], list[str], list[str]]:
    """The test bench's per-cycle lines of both sides ("<cycle> <hex>") and the netlist side's
    other lines (notes); a side that did not run every cycle is an error."""
    import re

    rows_r = [ln for ln in rtl if re.match(r"^\d+ ", ln)]
    rows_g = [ln for ln in gl if re.match(r"^\d+ ", ln)]
    notes = [ln for ln in gl if not re.match(r"^\d+ ", ln)]
    if len(rows_r) != cycles or len(rows_g) != cycles:
        raise SimulatorError(f"{what}: {len(rows_r)} RTL and {len(rows_g)} netlist cycles, {cycles} expected; {notes[-3:]}")
    return rows_r, rows_g, notes


@dataclass
class MemCheckReport:
    family: str
    cycles: int
    mismatched_cycles: int
    first_mismatch: str | None
    per_case: dict[str, int]  # read port -> cycles on which it differs
    cells: dict[str, int]
    notes: list[str]


def memory_check(family: str, work: str | Path, cycles: int = 4000, cases: tuple[MemCase, ...] = CASES,
                 replace_blackboxes: bool = True) -> MemCheckReport:  # fmt: skip
    """Simulate the memory-check design as RTL and as ``family``'s netlist (Verilator) and
    compare every read port on every cycle (``replace_blackboxes=False``: Yosys's own cell
    models, blackboxes included)."""
    import re

    check_simulator("verilator")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    design = MemTorture(cases)
    (work / f"{TOP}.v").write_text(verilog.convert(design, name=TOP, ports=[design.rd], emit_src=False))
    (work / "tb.v").write_text(TB.format(w=len(design.rd) - 1, top=TOP, cycles=cycles))
    netlist, *models = _synthesize(work, family, replace_blackboxes)
    text = netlist.read_text()
    cells: dict[str, int] = {}
    for m in re.finditer(r"^\s+(DP16KD|SB_RAM40_4K|TRELLIS_DPR16X4|SB_SPRAM256KA)\s", text, re.M):
        cells[m.group(1)] = cells.get(m.group(1), 0) + 1
    widths = sorted({int(w) for w in re.findall(r"\.DATA_WIDTH_[AB]\(32'd(\d+)\)", text)})
    if widths:
        cells["DP16KD data widths " + "/".join(map(str, widths))] = 0
    rtl = _run_verilator([work / f"{TOP}.v", work / "tb.v"], work, [], "rtl")
    gl = _run_verilator([netlist, *models, work / "tb.v"], work,
                        gate_level_args(family), family)  # fmt: skip
    rows_r, rows_g, notes = cycle_rows(rtl, gl, cycles, "memory check")
    bad = [(a, b) for a, b in zip(rows_r, rows_g) if a != b]
    per_case: dict[str, int] = {}
    for a, b in bad:
        for name in _which(design, a, b):
            per_case[name] = per_case.get(name, 0) + 1
    first = None
    if bad:
        a, b = bad[0]
        first = f"cycle {a.split()[0]}: {', '.join(_which(design, a, b))}"
    return MemCheckReport(family, cycles, len(bad), first, per_case, cells, notes)


def _synthesize(work: Path, family: str, replace_blackboxes: bool, top: str = TOP) -> list[Path]:
    """Yosys's netlist of work/<top>.v for ``family`` (reused while the design is unchanged:
    the check with and without firstspike's cell models synthesises once) and its models."""
    stamp = work / f".gl_{family}.key"
    key = _digest(family, (work / f"{top}.v").read_text(), synthesis(family).key(top))
    netlist = work / f"gl_{family}.v"
    if netlist.exists() and stamp.exists() and stamp.read_text() == key:
        return [netlist, *gate_level_models(work, family, netlist, replace_blackboxes)]
    stamp.unlink(missing_ok=True)
    out = synthesize_netlist(work, family, top, replace_blackboxes)
    stamp.write_text(key)
    return out


def _which(design: MemTorture, a: str, b: str) -> list[str]:
    """The memory cases whose read data differ in two output lines."""
    va, vb = int(a.split()[1], 16), int(b.split()[1], 16)
    out, off = [], 0
    k = 0
    for i, c in enumerate(design.cases):
        for j, _ in enumerate(c.reads):
            w = design.widths[k]
            if (va >> off) & ((1 << w) - 1) != (vb >> off) & ((1 << w) - 1):
                out.append(f"case {i} {c.width}x{c.depth} read {j}")
            off += w
            k += 1
    return out


if __name__ == "__main__":  # python -m firstspike.sim.memcheck ecp5 [work dir]
    logging.basicConfig(level=logging.INFO)
    rep = memory_check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else f"build/memcheck-{sys.argv[1]}")
    print(rep)

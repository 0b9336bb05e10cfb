"""The virtual board: the whole board logic (core, UART, frame protocol) simulated in
Verilator and attached to the unchanged host runtime through a pseudo-terminal.

    with VirtualBoard(tables) as vb:
        with BoardRuntime(vb.port) as rt:
            rt.classify(images)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from amaranth.back import verilog

from firstspike.boards.link import BoardLink, model_hash
from firstspike.hw.plan import plan_core
from firstspike.quantize.modelfile import ModelTables
from firstspike.sim.rtl import SimulatorError, build_verilator, check_simulator, quiet_runner

log = logging.getLogger(__name__)
TOP = "fs_board"
VIRTUAL_DIVISOR = 8  # clock cycles per UART bit in the virtual board (a real board: clock / baud)


class VirtualBoard:
    """Context manager: builds (cached) and starts the simulation; ``port`` is the pty path.
    ``spikes``: with the spike readout (CLASSIFY_SPIKES), like a default board build."""

    def __init__(self, tables: ModelTables, lanes: int = 8, build_root: str | os.PathLike = "build/virtual",
                 p_drop: float = 0.0, p_flip: float = 0.0, seed: int = 1, start_timeout: float = 120.0,
                 spikes: bool = True):  # fmt: skip
        check_simulator("verilator")
        self.tables = tables
        self.plan = plan_core(tables, lanes=lanes, debug=spikes)
        self.link = BoardLink(self.plan, VIRTUAL_DIVISOR, model_hash(tables))
        self.build_root = Path(build_root).resolve()
        self.env = {"FS_DIVISOR": str(VIRTUAL_DIVISOR), "FS_P_DROP": str(p_drop), "FS_P_FLIP": str(p_flip),
                    "FS_FAULT_SEED": str(seed)}  # fmt: skip
        self.start_timeout = start_timeout
        self.port: str | None = None
        self.faults = (0, 0)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def build(self) -> Path:
        link = self.link
        text = verilog.convert(link, name=TOP, ports=[link.rx, link.tx, link.busy, link.last_class, link.errors],
                               emit_src=False)  # fmt: skip
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
        log.info("virtual board on %s (Verilator, UART divisor %d)", self.port, VIRTUAL_DIVISOR)
        return self

    def __exit__(self, *exc) -> None:
        (self.work / "stop").write_text("")
        if self._thread is not None:
            self._thread.join(timeout=60)
        st = self.work / "stats"
        if st.exists():
            d, f = st.read_text().split()
            self.faults = (int(d), int(f))
        shutil.rmtree(self.work, ignore_errors=True)

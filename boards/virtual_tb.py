"""cocotb side of the virtual board: the board's logic (BoardLink: core + UART + frames)
and the host's end of the serial line (VirtualTop: a UART transmitter on the board's rx, a
UART receiver and FIFO on its tx) run in Verilator; this bridge moves the bytes the host
writes to a pseudo-terminal into that transmitter, and the FIFO's bytes back to it. The
board's UART still sees every bit at its divisor. Optional fault injection (dropped and
corrupted bytes, both directions) shows the protocol recovering. Configured by
environment variables (see virtual.py); writes the faults, the cycles simulated and each
request/answer exchange's cycles (first request byte sent to last answer byte received) to
the stats file.
"""

from __future__ import annotations

import json
import math
import os
import random
import tty
from fractions import Fraction
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer


class Faults:
    def __init__(self, seed: int, p_drop: float, p_flip: float):
        self.rng = random.Random(seed)
        self.p_drop, self.p_flip = p_drop, p_flip
        self.dropped = self.flipped = 0

    def apply(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            r = self.rng.random()
            if r < self.p_drop:
                self.dropped += 1
                continue
            if r < self.p_drop + self.p_flip:
                self.flipped += 1
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)


@cocotb.test()
async def uart_bridge(dut) -> None:
    div = Fraction(os.environ["FS_DIVISOR"])  # clock cycles per bit, exact ("8", "50/3")
    stop = Path(os.environ["FS_STOP_FILE"])
    faults = Faults(int(os.environ.get("FS_FAULT_SEED", "1")), float(os.environ.get("FS_P_DROP", "0")),
                    float(os.environ.get("FS_P_FLIP", "0")))  # fmt: skip
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    period = 10  # ns, one clock cycle
    Clock(dut.clk, period, unit="ns").start()
    byte_ns = math.ceil(10 * div) * period
    for sig, v in ((dut.h_load, 0), (dut.r_en, 0), (dut.rst, 1)):
        sig.value = v
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await FallingEdge(dut.clk)  # the bridge drives and samples at falling edges, between the rising ones
    Path(os.environ["FS_PTY_FILE"]).write_text(os.ttyname(slave))
    burst = int(os.environ["FS_BURST"])  # VirtualTop.BURST: the bytes its transmitter takes at once
    exchanges: list[int] = []
    t_req = t_rx = None  # this exchange's first request byte, and the last answer byte so far (cycles)

    async def wait(ns: int) -> None:
        """About ``ns``, then on to the next falling edge (a Timer that ends on an edge races it)."""
        await Timer(ns - 3, unit="ns")
        await FallingEdge(dut.clk)

    def close_exchange() -> None:
        """The exchange so far ends here (its answer came after its request started)."""
        if t_req is not None and t_rx is not None and t_rx > t_req:
            exchanges.append(t_rx - t_req)

    async def drain() -> None:
        """Everything the board has sent (the FIFO) to the host."""
        nonlocal t_rx
        got = bytearray()
        while int(dut.r_rdy.value):
            got.append(int(dut.r_data.value))
            dut.r_en.value = 1
            await FallingEdge(dut.clk)
            dut.r_en.value = 0
        if got:
            t_rx = int(dut.r_stamp.value)
            data = faults.apply(bytes(got))
            if data:
                os.write(master, data)

    idle = 0
    while True:
        await drain()
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            data = b""
        if not data:
            idle += 1
            if idle % 64 == 0 and stop.exists():
                break
            # poll often right after a request, then less (a 64-byte FIFO holds 64 byte times)
            await wait(byte_ns * min(32, 1 << min(idle, 5)))
            continue
        idle = 0
        close_exchange()
        t_req, t_rx = int(dut.cycle.value), None
        data = faults.apply(data)
        for k in range(0, len(data), burst):
            chunk = data[k : k + burst]
            while not int(dut.h_ready.value):
                await FallingEdge(dut.clk)
            dut.h_data.value = int.from_bytes(chunk, "little")
            dut.h_len.value = len(chunk)
            dut.h_load.value = 1
            await FallingEdge(dut.clk)
            dut.h_load.value = 0
            await wait(byte_ns * len(chunk))  # the burst's time on the line
            await drain()
    close_exchange()
    stats = {"dropped": faults.dropped, "flipped": faults.flipped, "cycles": int(dut.cycle.value),
             "overflow": int(dut.r_overflow.value), "exchanges": exchanges}  # fmt: skip
    Path(os.environ["FS_STATS_FILE"]).write_text(json.dumps(stats))
    os.close(slave)
    os.close(master)

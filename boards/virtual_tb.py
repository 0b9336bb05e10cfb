"""cocotb side of the virtual board: the board's logic (BoardLink: core + UART + frames)
runs in Verilator; this bridge drives its UART rx line with the bytes the host writes to a
pseudo-terminal and sends what the board transmits back to it, bit by bit at the board's
baud divisor. Optional fault injection (dropped and corrupted bytes, both directions) shows
the protocol recovering. Configured by environment variables (see virtual.py)."""

from __future__ import annotations

import os
import random
import tty
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
    div = int(os.environ["FS_DIVISOR"])
    stop = Path(os.environ["FS_STOP_FILE"])
    faults = Faults(int(os.environ.get("FS_FAULT_SEED", "1")), float(os.environ.get("FS_P_DROP", "0")),
                    float(os.environ.get("FS_P_FLIP", "0")))  # fmt: skip
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    Clock(dut.clk, 10, unit="ns").start()
    bit_ns = 10 * div  # one Timer per bit: a ClockCycles wait costs a Python callback per cycle
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    Path(os.environ["FS_PTY_FILE"]).write_text(os.ttyname(slave))
    done = False

    async def monitor_tx() -> None:
        while not done:
            await FallingEdge(dut.tx)  # start bit
            await Timer(bit_ns + bit_ns // 2, unit="ns")  # the middle of data bit 0
            b = 0
            for k in range(8):
                b |= int(dut.tx.value) << k
                await Timer(bit_ns, unit="ns")
            data = faults.apply(bytes([b]))
            if data:
                os.write(master, data)

    cocotb.start_soon(monitor_tx())
    polls = 0
    while True:
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            data = b""
        if not data:
            polls += 1
            if polls % 64 == 0 and stop.exists():
                break
            await Timer(10 * bit_ns, unit="ns")
            continue
        for b in faults.apply(data):
            for bit in [0, *[(b >> k) & 1 for k in range(8)], 1]:
                dut.rx.value = bit
                await Timer(bit_ns, unit="ns")
    done = True
    Path(os.environ["FS_STATS_FILE"]).write_text(f"{faults.dropped} {faults.flipped}\n")
    os.close(slave)
    os.close(master)

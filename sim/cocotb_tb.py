"""cocotb testbenches for the core (inside fs_harness). Loaded by the simulator through
cocotb_tools.runner from firstspike.sim.rtl; the inputs come in environment variables.

* ``batch``: the harness streams a batch of images through the core with the simulator
  running free (the clock is cocotb's C clock); Python only awaits ``finished``.
* ``handshake``: Python drives the core's own valid/ready ports with random stalls and
  backpressure and writes what it received, in the batch file format.
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge


async def _reset(dut, mode: int) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.mode.value = mode
    dut.go.value = 0
    for name in ("ext_start", "ext_pix_valid", "ext_pix_data", "ext_res_ready"):
        getattr(dut, name).value = 0
    if hasattr(dut, "ext_dbg_ready"):
        dut.ext_dbg_ready.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 1)


@cocotb.test()
async def batch(dut) -> None:
    await _reset(dut, 0)
    n = int(os.environ["FS_N"])
    dut.go.value = 1
    await RisingEdge(dut.finished)
    assert int(dut.images_done.value) == n, f"{int(dut.images_done.value)} of {n} images done"


@cocotb.test()
async def handshake(dut) -> None:
    await _reset(dut, 1)
    images = np.load(os.environ["FS_IMAGES_NPY"])
    rng = random.Random(int(os.environ.get("FS_STALL_SEED", "1")))
    debug = hasattr(dut, "ext_dbg_valid")
    lines = []
    for img in images.reshape(len(images), -1):
        await FallingEdge(dut.clk)
        dut.ext_start.value = 1
        await FallingEdge(dut.clk)
        dut.ext_start.value = 0
        i = 0
        while i < len(img):  # inputs set and outputs sampled mid-cycle; the transfer is at the rising edge
            v = rng.random() > 0.3
            dut.ext_pix_valid.value = int(v)
            dut.ext_pix_data.value = int(img[i])
            ready = int(dut.ext_pix_ready.value)
            await FallingEdge(dut.clk)
            if v and ready:
                i += 1
        dut.ext_pix_valid.value = 0
        while not int(dut.ext_res_valid.value):
            await FallingEdge(dut.clk)
        for _ in range(rng.randrange(4)):  # result backpressure
            await FallingEdge(dut.clk)
        lines.append(f"R {int(dut.ext_res_class.value)} {int(dut.ext_res_fired.value)} {int(dut.ext_res_time.value)} "
                     f"{int(dut.ext_res_cycles.value)}")  # fmt: skip
        dut.ext_res_ready.value = 1
        await FallingEdge(dut.clk)
        dut.ext_res_ready.value = 0
        if debug:
            while True:
                r = rng.random() > 0.3
                dut.ext_dbg_ready.value = int(r)
                valid, last = int(dut.ext_dbg_valid.value), int(dut.ext_dbg_last.value)
                data = dut.ext_dbg_data.value.to_unsigned()
                await FallingEdge(dut.clk)
                if r and valid:
                    lines.append(f"{data:0{len(dut.ext_dbg_data) // 4}x}")
                    if last:
                        break
            dut.ext_dbg_ready.value = 0
        while not int(dut.ext_done.value):
            await FallingEdge(dut.clk)
    with open(os.environ["FS_OUT"], "w") as f:
        f.write("\n".join(lines) + "\n")

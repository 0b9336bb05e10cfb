"""Run the core in Amaranth's own Python simulator (fast to start, slow per cycle): the
unit-test rung below cocotb. Drives the real stream ports, with optional random stalls."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from firstspike.hw.core import Core
from firstspike.hw.plan import CorePlan


@dataclass
class SimResult:
    classes: np.ndarray
    fired: np.ndarray
    times: np.ndarray  # res_time (first output spike step, T if none)
    cycles: np.ndarray
    stream: np.ndarray | None  # (images that streamed, total) debug values


def run_pysim(plan: CorePlan, images: np.ndarray, stall_seed: int | None = None, max_cycles: int = 10_000_000,
              exit_early: np.ndarray | None = None) -> SimResult:  # fmt: skip
    """Classify ``images`` (N, C, H, W) uint8 on the core; with ``stall_seed`` the pixel
    source and the result/debug sinks stall at random (tests the valid/ready handshakes).
    ``exit_early`` (N bools; a core with both debug port and early exit): drives the core's
    ``exit_early`` per image; those images stream no debug values."""
    core = Core(plan)
    ee = np.zeros(len(images), bool) if exit_early is None else np.asarray(exit_early, bool)
    if ee.any() and not (plan.debug and plan.early_exit):
        raise ValueError("exit_early drives a core with both the debug port and early exit")
    rng = np.random.default_rng(stall_seed) if stall_seed is not None else None
    out: dict[str, list] = {"cls": [], "fired": [], "time": [], "cycles": [], "stream": []}

    def stall() -> bool:
        return bool(rng is not None and rng.random() < 0.3)

    async def bench(ctx) -> None:
        for img, early in zip(images, ee):
            flat = np.asarray(img, dtype=np.uint8).reshape(-1)
            ctx.set(core.exit_early, int(early))
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.start, 0)
            i = 0
            while i < len(flat):
                v = not stall()
                ctx.set(core.pix_valid, v)
                ctx.set(core.pix_data, int(flat[i]))
                ready = ctx.get(core.pix_ready)  # the handshake as it is at the coming edge
                await ctx.tick()
                if v and ready:
                    i += 1
            ctx.set(core.pix_valid, 0)
            n = 0
            while not ctx.get(core.res_valid):
                await ctx.tick()
                n += 1
                if n > max_cycles:
                    raise TimeoutError("core did not finish")
            while stall():
                await ctx.tick()
            out["cls"].append(ctx.get(core.res_class))
            out["fired"].append(ctx.get(core.res_fired))
            out["time"].append(ctx.get(core.res_time))
            out["cycles"].append(ctx.get(core.res_cycles))
            ctx.set(core.res_ready, 1)
            await ctx.tick()
            ctx.set(core.res_ready, 0)
            vals = []
            streams = plan.debug and not early
            if streams:
                while True:
                    r = not stall()
                    ctx.set(core.dbg_ready, r)
                    valid, data, last = ctx.get(core.dbg_valid), ctx.get(core.dbg_data), ctx.get(core.dbg_last)
                    await ctx.tick()
                    if r and valid:
                        vals.append(data & ((1 << (32 * plan.debug_lanes)) - 1))
                        if last:
                            break
                ctx.set(core.dbg_ready, 0)
            while not ctx.get(core.done):
                await ctx.tick()
            await ctx.tick()
            if streams:
                out["stream"].append(vals)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    stream = None
    if out["stream"]:
        stream = plan.unpack_debug(np.stack([plan.beats_from_ints(v) for v in out["stream"]]))
    return SimResult(np.asarray(out["cls"]), np.asarray(out["fired"]), np.asarray(out["time"]),
                     np.asarray(out["cycles"]), stream)  # fmt: skip

"""`firstspike hw`: model file -> Verilog of the core plus a JSON summary of its sizing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from amaranth.back import verilog

from firstspike.files import atomic_write
from firstspike.hw.core import Core
from firstspike.hw.plan import CorePlan, HardwareError, plan_core
from firstspike.quantize.modelfile import ModelTables, load

log = logging.getLogger(__name__)

TOP = "firstspike_core"


def to_verilog(plan: CorePlan, name: str = TOP) -> str:
    """Verilog text of the core (Amaranth -> Yosys)."""
    core = Core(plan)
    try:
        return verilog.convert(core, name=name, ports=core.ports(), emit_src=False)
    except Exception as e:  # Yosys missing or a generator bug: say which
        if "Yosys" in str(e):
            raise HardwareError(f"cannot emit Verilog: {e}. Install the pinned packages (`make setup`), which include "
                                "amaranth[builtin-yosys]") from e  # fmt: skip
        raise


def generate(model: str | os.PathLike | ModelTables, out_dir: str | os.PathLike, lanes: int = 16, debug: bool = True,
             early_exit: bool = False, positions: int = 1, read_reg: bool = False) -> dict:  # fmt: skip
    """Write OUT/firstspike_core.v and OUT/core.json; return the summary. Both files are
    written only once the Verilog exists (nothing half-written on failure)."""
    tables = model if isinstance(model, ModelTables) else load(model)
    plan = plan_core(tables, lanes=lanes, debug=debug, early_exit=early_exit, positions=positions, read_reg=read_reg)
    t0 = time.perf_counter()
    text = to_verilog(plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = plan.summary()
    summary["top"] = TOP
    summary["verilog"] = f"{TOP}.v"
    summary["verilog_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    if not isinstance(model, ModelTables):
        summary["model_file"] = str(model)
        summary["model_sha256"] = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    summary["generate_seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write(out / f"{TOP}.v", text)
    atomic_write(out / "core.json", json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s (%d lines, %.1f kbit of memories, lanes=%d)", out / f"{TOP}.v", text.count("\n"),
             summary["memory_bits"] / 1000, plan.lanes)  # fmt: skip
    return summary

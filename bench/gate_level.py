"""Gate-level regression: the trained models' Yosys netlists (iCE40 and ECP5, block RAM
models included) on Verilator against the golden model, every layer's spike times and the
class, plus the cycle count against the RTL on the same images.

    python bench/gate_level.py [--model bench/results/ice40_binary.pt] [--images 300]
                               [--families ice40,ecp5] [--lanes 2] [--jobs 2]

Each call adds (or replaces) its (model, family, lanes) rows in bench/results/gate_level.json
and refreshes docs/benchmarks.md. Goal (issue 11): 0 mismatches on a few hundred images of
each trained model, both families, at the lanes the boards build.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, git_rev, merge_runs, repo_path, setup_logging, write_result  # noqa: E402

from firstspike.cli import READ_REG_HELP  # noqa: E402
from firstspike.sim.dspcheck import DSP  # noqa: E402

log = logging.getLogger("bench.gate_level")
BRAM = {"ice40": "SB_RAM40_4K", "ecp5": "DP16KD"}


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "ice40_binary.pt"), help="checkpoint or model file")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--images", type=int, default=300, help="test images, spread over the test set")
    ap.add_argument("--families", default="ice40,ecp5")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--positions", type=int, default=1, choices=[1, 2], help="output positions per state word")
    ap.add_argument("--read-reg", action="store_true", help=READ_REG_HELP + " (the icebreaker's core)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    import numpy as np

    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.boards.link import model_hash
    from firstspike.quantize.modelfile import MAGIC, load
    from firstspike.sim import rtl

    with open(args.model, "rb") as f:
        is_fsm = f.read(len(MAGIC)) == MAGIC
    tables = load(args.model) if is_fsm else quantize_checkpoint(args.model)[0]
    model = repo_path(args.model)
    test = load_split(args.dataset, "test")
    idx = np.linspace(0, len(test) - 1, args.images).astype(int)
    images, labels = test.images[idx][:, None], test.labels[idx]
    build_root = ROOT / "build" / "sim"
    chunk = max(1, -(-args.images // args.jobs))
    t0 = time.perf_counter()
    ref = rtl.verify(tables, images, labels, sim="verilator", jobs=args.jobs, lanes=args.lanes, chunk=chunk,
                     build_root=build_root, positions=args.positions, read_reg=args.read_reg)  # fmt: skip
    rtl_s = time.perf_counter() - t0
    rows = []
    for fam in args.families.split(","):
        t0 = time.perf_counter()
        rep = rtl.verify(tables, images, labels, sim="verilator", jobs=args.jobs, lanes=args.lanes, chunk=chunk,
                         build_root=build_root, gate_level=fam, positions=args.positions, read_reg=args.read_reg)  # fmt: skip
        netlist = (rep.build_dir / "src" / f"gl_{fam}.v").read_text()
        d = rep.as_dict()
        d.update(model=model, dataset=args.dataset, family=fam, T=tables.T, total_mismatches=rep.total_mismatches,
                 cycle_mismatches_vs_rtl=int((rep.cycles != ref.cycles).sum()),
                 bram_cells=len(re.findall(rf"^\s+{BRAM[fam]}\b", netlist, re.M)),
                 dsp_cells=len(re.findall(rf"^\s+{DSP[fam]}\b", netlist, re.M)), wall_minutes=(time.perf_counter() - t0) / 60,
                 rtl_wall_minutes=rtl_s / 60, commit=git_rev(), date=time.strftime("%Y-%m-%d"))  # fmt: skip
        log.info("%s %s: %d mismatches, %d cycle mismatches vs RTL, %d images", model, fam, d["total_mismatches"],
                 d["cycle_mismatches_vs_rtl"], d["images"])  # fmt: skip
        rows.append(d)
    def key(r: dict) -> tuple:
        return r["model"], r["family"], r["lanes"], r.get("positions", 1), r.get("read_reg", False)

    for r in rows:
        r["positions"], r["read_reg"], r["model_sha256_prefix"] = args.positions, args.read_reg, model_hash(tables).hex()  # as board builds record it
    write_result("gate_level", {"runs": merge_runs("gate_level", rows, key, model_field="model")})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

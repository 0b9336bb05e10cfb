"""Area against speed: the trained default binary model's core at several ``lanes``,
cycles per image (Verilator, bit-exact check included) against the lower bound.

    python bench/rtl_lanes.py [--lanes 8,16,32,64] [--images 200] [--jobs 2]

Writes bench/results/rtl_lanes.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging, repo_path, write_result  # noqa: E402

log = logging.getLogger("bench.rtl_lanes")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "mnist_binary.pt"))
    ap.add_argument("--lanes", default="8,16,32,64")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sim", default="verilator")
    args = ap.parse_args()

    import numpy as np

    from firstspike.boards.link import model_hash
    from firstspike.data import load_split
    from firstspike.hw.plan import plan_core
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.sim.rtl import verify

    tables, _ = quantize_checkpoint(args.model)
    test = load_split("mnist", "test").head(args.images)
    times = GoldenModel(tables).run(test.images[:, None]).layer_times
    runs = []
    for lanes in [int(v) for v in args.lanes.split(",")]:
        rep = verify(tables, test.images, test.labels, sim=args.sim, jobs=args.jobs, lanes=lanes, build_root=ROOT / "build" / "sim")
        plan = plan_core(tables, lanes=lanes)
        w = plan.work(times)
        bound = w["cycle_bound"]
        ratio = rep.cycles / bound
        cratio = rep.cycles / w["cycle_bound_concurrent"]
        r = {"lanes": lanes, "cycles_mean": float(rep.cycles.mean()), "cycles_p99": float(np.percentile(rep.cycles, 99)),
             "bound_mean": float(bound.mean()), "ratio_mean": float(ratio.mean()), "ratio_p99": float(np.percentile(ratio, 99)),
             "concurrent_bound_mean": float(w["cycle_bound_concurrent"].mean()), "concurrent_ratio_mean": float(cratio.mean()),
             "concurrent_ratio_p99": float(np.percentile(cratio, 99)), "memory_kbit": plan.summary()["memory_bits"] / 1000, "mismatches": rep.total_mismatches,
             "wall_seconds": round(rep.wall_seconds, 1), "build_seconds": round(rep.build_seconds, 1),
             "golden_seconds": round(rep.golden_seconds, 2),
             "rtl_vs_golden_time": round((rep.wall_seconds - rep.build_seconds - rep.golden_seconds) / rep.golden_seconds, 1)}  # fmt: skip
        log.info("%s", r)
        runs.append(r)
    write_result("rtl_lanes", {"model": repo_path(args.model), "model_sha256_prefix": model_hash(tables).hex(), "images": args.images, "sim": args.sim, "runs": runs})
    import report

    report.render_docs()


if __name__ == "__main__":
    main()

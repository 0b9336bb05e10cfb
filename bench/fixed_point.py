"""Real-valued networks -> fixed-point model files: golden-model accuracy against weight width.

    python bench/fixed_point.py [--checkpoint bench/results/mnist_real.pt[,...]] [--bits 2,3,4,6,8]

Writes bench/results/fixed_point.json (one run per checkpoint and width; re-running a checkpoint
replaces its runs and keeps the others') and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, merge_runs, repo_path, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.fixed_point")


def stored_runs_v1(stored: dict) -> list[dict]:
    """The runs of a fixed_point.json written before several checkpoints (one top-level checkpoint)."""
    top = {k: stored[k] for k in ("checkpoint", "dataset", "float_accuracy") if k in stored}
    return [{**top, **r} for r in stored.get("runs", [])] if "checkpoint" in stored else stored.get("runs", [])


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(RESULTS / "mnist_real.pt"), help="comma-separated real-valued checkpoints")
    ap.add_argument("--bits", default="2,3,4,6,8")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    import json

    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel

    path = RESULTS / "fixed_point.json"
    if path.is_file():  # lift an old single-checkpoint file into per-run records before merging
        stored = json.loads(path.read_text())
        if "checkpoint" in stored:
            path.write_text(json.dumps({k: v for k, v in stored.items() if k not in ("checkpoint", "dataset", "float_accuracy")}
                                       | {"runs": stored_runs_v1(stored)}, indent=1))  # fmt: skip
    runs = []
    for ckpt in args.checkpoint.split(","):
        sha = None
        for bits in [int(b) for b in args.bits.split(",")]:
            tables, _ = quantize_checkpoint(ckpt, bits)  # first: a missing or foreign file gets its clear error
            sha = sha or hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()[:12]
            dataset, float_acc = tables.meta["dataset"], tables.meta["float_test_accuracy"]
            test = load_split(dataset, "test").head(args.limit)
            acc = GoldenModel(tables).accuracy(test.images, test.labels)
            runs.append({"checkpoint": repo_path(ckpt), "model_sha256_prefix": sha, "dataset": dataset, "images": len(test.labels),
                         "float_accuracy": float_acc, "weight_bits": bits, "golden_accuracy": acc})  # fmt: skip
            log.info("%s, %d-bit weights: golden %.2f%% (float %.2f%%)", Path(ckpt).name, bits, 100 * acc, 100 * float_acc)
    merged = merge_runs("fixed_point", runs, lambda r: (r["checkpoint"], r["weight_bits"]), model_field="checkpoint")
    write_result("fixed_point", {"runs": merged})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

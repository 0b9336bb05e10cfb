"""Real-valued network -> fixed-point model files: golden-model accuracy against weight width.

    python bench/fixed_point.py [--checkpoint bench/results/mnist_real.pt] [--bits 2,3,4,6,8]

Writes bench/results/fixed_point.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, repo_path, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.fixed_point")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(RESULTS / "mnist_real.pt"))
    ap.add_argument("--bits", default="2,3,4,6,8")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel

    runs = []
    float_acc = dataset = None
    for bits in [int(b) for b in args.bits.split(",")]:
        tables, model = quantize_checkpoint(args.checkpoint, bits)
        dataset = tables.meta["dataset"]
        float_acc = tables.meta["float_test_accuracy"]
        test = load_split(dataset, "test").head(args.limit)
        acc = GoldenModel(tables).accuracy(test.images, test.labels)
        runs.append({"weight_bits": bits, "golden_accuracy": acc})
        log.info("%d-bit weights: golden %.2f%% (float %.2f%%)", bits, 100 * acc, 100 * float_acc)
    write_result("fixed_point", {"checkpoint": repo_path(args.checkpoint), "dataset": dataset, "float_accuracy": float_acc, "runs": runs})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

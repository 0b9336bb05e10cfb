"""The decision when no output fires: largest V(T-1) ("potential", the rule before
2026-11-29) against largest V(T-1) - threshold ("margin", the default since), on the trained
binary models and their whole test sets, with the integer golden model.

    python bench/silent_rule.py [--models mnist:bench/results/mnist_binary.pt,...] [--limit N]

For each model: the test accuracy under both rules, the fraction of images on which no
output fires, and how often each rule is right on those images (the two rules agree on every
other image). Writes bench/results/silent_rule.json (merged by checkpoint) and refreshes
docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, model_bench_args, model_specs, repo_path, save_runs  # noqa: E402

log = logging.getLogger("bench.silent_rule")

DEFAULT_MODELS = ",".join(f"{d}:{RESULTS / f}" for d, f in (
    ("mnist", "mnist_binary.pt"), ("fashion-mnist", "fashion-mnist_binary.pt"),
    ("fashion-mnist", "fashion-mnist_binary_csnn_fashion.pt"), ("mnist", "ice40_binary.pt")))  # fmt: skip


def main() -> None:
    args = model_bench_args(__doc__, DEFAULT_MODELS)

    import numpy as np
    from tqdm import tqdm

    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel, decide

    runs = []
    for dataset, ck in model_specs(args.models):
        tables, _ = quantize_checkpoint(ck)  # the checkpoint's silent_rule: "margin" unless it says otherwise
        if not tables.silent_margin:
            log.warning("%s names the potential rule; comparing both rules on its network anyway", ck)
        golden, T = GoldenModel(tables), tables.T
        thr = tables.layers[-1].thresholds
        test = load_split(dataset, "test").head(args.limit)
        t0 = time.time()
        t_out, v_last = [], []
        for i in tqdm(range(0, len(test), args.batch), desc=Path(ck).name, leave=False):
            res = golden.run(test.images[i : i + args.batch], keep_times=True)
            t_out.append(res.layer_times[-1].reshape(len(res.v_last), -1))
            v_last.append(res.v_last)
        t, v, y = np.concatenate(t_out), np.concatenate(v_last), test.labels.astype(np.int64)
        by_margin, by_potential = decide(t, v, T, thr), decide(t, v, T)
        silent = t.min(axis=1) >= T
        n_s = int(silent.sum())
        run = {
            "dataset": dataset, "checkpoint": repo_path(ck), "model": tables.name, "T": T, "images": len(y),
            "output_thresholds": [int(v_) for v_ in thr],
            "accuracy_potential": float((by_potential == y).mean()), "accuracy_margin": float((by_margin == y).mean()),
            "silent_images": n_s, "silent_fraction": n_s / len(y),
            "silent_right_potential": float((by_potential[silent] == y[silent]).mean()) if n_s else None,
            "silent_right_margin": float((by_margin[silent] == y[silent]).mean()) if n_s else None,
            "seconds": time.time() - t0,
        }  # fmt: skip
        log.info("%s: potential rule %.2f%%, margin rule %.2f%%; %d silent images (%.1f%%)", ck,
                 100 * run["accuracy_potential"], 100 * run["accuracy_margin"], n_s, 100 * run["silent_fraction"])  # fmt: skip
        runs.append(run)
    save_runs("silent_rule", runs)


if __name__ == "__main__":
    main()

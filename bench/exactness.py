"""Exactness and golden-model speed: trained binary models, all 10k test images.

    python bench/exactness.py [--models mnist:bench/results/mnist_binary.pt,...]  (results merge by checkpoint)

For each model: quantize to a model file, run training's forward pass (float pipeline,
Numba kernels) and the integer golden model (reads only the file) on the whole test set,
count class and spike-time mismatches (every layer, every neuron), and report both
accuracies and the golden model's wall time (goal: 10k MNIST images <= 60 s on 2 cores).
Writes bench/results/exactness.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, merge_runs, model_bench_args, model_specs, repo_path, write_result  # noqa: E402

log = logging.getLogger("bench.exactness")


def main() -> None:
    args = model_bench_args(__doc__, f"mnist:{RESULTS / 'mnist_binary.pt'},mnist:{RESULTS / 'mnist_binary_csnn_fc256.pt'},"
                            f"fashion-mnist:{RESULTS / 'fashion-mnist_binary.pt'},"
                            f"fashion-mnist:{RESULTS / 'fashion-mnist_binary_csnn_fashion.pt'}")

    import numpy as np
    import torch

    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.boards.link import model_hash
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import save

    runs = []
    for dataset, ck in model_specs(args.models):
        tables, model = quantize_checkpoint(ck)
        with tempfile.TemporaryDirectory() as d:
            path = save(tables, Path(d) / "model.fsm")
            golden = GoldenModel(path)
        test = load_split(dataset, "test").head(args.limit)
        n = len(test)
        x, y = test.images, test.labels
        class_mism = 0
        time_mism = np.zeros(len(model.layers) + 1, dtype=np.int64)
        neurons = np.zeros_like(time_mism)
        golden_s = train_s = 0.0
        correct_g = correct_t = 0
        for i in range(0, n, args.batch):
            xb = x[i : i + args.batch]
            t0 = time.perf_counter()
            r = golden.run(xb)
            golden_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                cls, outs = model.classify(torch.from_numpy(xb.copy()))
            train_s += time.perf_counter() - t0
            for j, (o, t) in enumerate(zip(outs, r.layer_times)):
                time_mism[j] += int((o.numpy().astype(np.int64) != t).sum())
                neurons[j] += t.size
            class_mism += int((cls.numpy() != r.classes).sum())
            correct_g += int((r.classes == y[i : i + args.batch]).sum())
            correct_t += int((cls.numpy() == y[i : i + args.batch]).sum())
        # speed of the golden model alone (classification, no spike-time copies)
        t0 = time.perf_counter()
        golden.classify(x, batch=args.batch)
        classify_s = time.perf_counter() - t0
        rec = {
            "dataset": dataset, "checkpoint": repo_path(ck), "images": n, "T": tables.T,
            "model_sha256_prefix": model_hash(tables).hex(),  # the tables' identity: report marks results of a former file
            "class_mismatches": class_mism, "spike_time_mismatches": int(time_mism.sum()),
            "spike_time_mismatches_per_layer": time_mism.tolist(), "spike_times_compared": int(neurons.sum()),
            "golden_accuracy": correct_g / n, "training_forward_accuracy": correct_t / n,
            "golden_seconds": classify_s, "golden_seconds_with_all_spike_times": golden_s, "training_forward_seconds": train_s,
        }  # fmt: skip
        runs.append(rec)
        log.info("%s: %d class / %d spike-time mismatches of %d; golden %.2f%%, training %.2f%%; golden %.1f s for %d images",
                 dataset, class_mism, rec["spike_time_mismatches"], rec["spike_times_compared"], 100 * rec["golden_accuracy"],
                 100 * rec["training_forward_accuracy"], classify_s, n)  # fmt: skip
    write_result("exactness", {"runs": merge_runs("exactness", runs, lambda r: r["checkpoint"]), "goals": {"mismatches": 0, "golden_seconds_10k": "<= 60"}})
    from report import render_docs

    render_docs()


if __name__ == "__main__":
    main()

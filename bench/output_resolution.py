"""What the output layer's time steps cost a ramp network (``layer_windows = "ramp"``): the
earliest-spike decision against decisions on the output potentials it quantises.

    python bench/output_resolution.py [--models fashion-mnist:bench/results/fashion-mnist_binary_csnn_fashion_ramp.pt,...] [--limit N]

In its own window a ramp output k crosses its threshold at the real time (thr_k - A_k) / r_k
(A_k: the potential its inputs left, r_k: its ramp) and fires at the next whole step, so
outputs whose crossings fall in the same step tie (the lowest index wins). For each model on
its test set: the accuracy of the earliest spike (the model's decision), of the earliest real
crossing time and of the largest A_k x alpha_k (the output potentials in effective units), and
how many images have a tie at the earliest step. Writes bench/results/output_resolution.json
(merged by checkpoint) and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, model_bench_args, model_specs, repo_path, save_runs  # noqa: E402

log = logging.getLogger("bench.output_resolution")

DEFAULT_MODELS = ",".join(f"{d}:{RESULTS / f}" for d, f in (
    ("fashion-mnist", "fashion-mnist_binary_csnn_fashion_ramp.pt"), ("mnist", "mnist_binary_csnn_ramp.pt")))  # fmt: skip


def decisions(model, images) -> tuple:
    """(earliest spike, earliest real crossing, largest potential, tie at the earliest step) per
    image of a binary ramp network, as int64 / bool tensors."""
    import torch

    out = model.layers[-1]
    _, _, thr = out.effective()
    r = out.ramp()[0]
    with torch.no_grad():
        cls, outs = model.classify(images)
        t = outs[-1].flatten(1)
        a = out.potential_at(outs[-2], 0).flatten(1)  # A_k: V at the start of the output's window
        crossing = (thr.double().view(1, -1) - a) / r.view(1, -1)
        tied = (t == t.min(dim=1, keepdim=True).values).sum(dim=1) > 1
        potential = a * out.alpha().detach().double().view(1, -1)
    return cls, crossing.argmin(dim=1), potential.argmax(dim=1), tied


def main() -> None:
    args = model_bench_args(__doc__, DEFAULT_MODELS)

    import torch
    from tqdm import tqdm

    from firstspike.data import load_split
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    runs = []
    for dataset, ck in model_specs(args.models):
        model = model_from_checkpoint(load_checkpoint(ck)).eval()
        out = model.layers[-1]
        if not (out.ramped and out.binary):
            log.warning("skipping %s: not a binary network with ramp windows (layer_windows = \"ramp\")", ck)
            continue
        test = load_split(dataset, "test").head(args.limit)
        x, y = torch.from_numpy(test.images.copy()), torch.from_numpy(test.labels.astype("int64"))
        n = dict(spike=0, crossing=0, potential=0, tied=0, tied_right=0)
        t0 = time.time()
        for i in tqdm(range(0, len(y), args.batch), desc=Path(ck).name, leave=False):
            spike, crossing, potential, tied = decisions(model, x[i : i + args.batch])
            yy = y[i : i + args.batch]
            n["spike"] += int((spike == yy).sum())
            n["crossing"] += int((crossing == yy).sum())
            n["potential"] += int((potential == yy).sum())
            n["tied"] += int(tied.sum())
            n["tied_right"] += int((spike == yy)[tied].sum())
        run = {
            "dataset": dataset, "checkpoint": repo_path(ck), "T": model.T, "images": len(y),
            "accuracy_spike": n["spike"] / len(y), "accuracy_crossing": n["crossing"] / len(y),
            "accuracy_potential": n["potential"] / len(y), "tied_images": n["tied"],
            "tied_right": n["tied_right"], "output_ramps": [int(v) for v in out.ramp()[0]], "seconds": time.time() - t0,
        }  # fmt: skip
        log.info("%s: earliest spike %.2f%%, earliest crossing %.2f%%, largest potential %.2f%%; %d tied images",
                 ck, 100 * run["accuracy_spike"], 100 * run["accuracy_crossing"], 100 * run["accuracy_potential"], n["tied"])  # fmt: skip
        runs.append(run)
    save_runs("output_resolution", runs)


if __name__ == "__main__":
    main()

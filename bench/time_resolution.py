"""What the hidden layers' time steps cost a trained window network (``layer_windows``).

    python bench/time_resolution.py [--models fashion-mnist:bench/results/fashion-mnist_real_csnn_fashion_fc256_ramp.pt,...] [--limit N] [--factors 1,2,4,16]

A window layer's value is T - t (the steps before its window's end that it fires): with a ramp,
floor(T z / theta) of its real sum z, clipped to 0..T. For each model on its test set: how
many of every layer's neurons fire and how many of the T levels the firing ones use (quantiles of
T - t), and the accuracy of the same parameters at k x T (``at_T``: the same z, k times finer
steps, a finer input code). If the finer clocks gain, the network's steps cost accuracy; if
not, they do not limit what it learnt (a network trained at a finer T could still differ).
Writes bench/results/time_resolution.json (merged by checkpoint) and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, model_bench_args, model_specs, repo_path, save_runs  # noqa: E402

log = logging.getLogger("bench.time_resolution")

DEFAULT_MODELS = ",".join(f"fashion-mnist:{RESULTS / f}" for f in (
    "fashion-mnist_real_csnn_fashion_fc256_ramp.pt", "fashion-mnist_binary_csnn_fashion_fc256_ramp.pt"))  # fmt: skip
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def at_T(model, T: int):
    """The model's parameters in a network of ``T`` steps (the thresholds theta x T and the
    input table follow T), in evaluation mode."""
    from firstspike.train.model import CSNN

    net = CSNN(dataclasses.replace(model.cfg, T=T)).eval()
    sd = {k: v for k, v in model.state_dict().items() if k != "table" and not k.endswith("theta")}
    net.load_state_dict(sd, strict=False)
    return net


def levels(outs: list, T: int) -> list[dict]:
    """Per layer (input code first, pools included): the firing fraction and the quantiles of
    T - t over the neurons that fire."""
    import torch

    rows = []
    for t in outs:
        v = (T - t.double()).flatten()
        f = v[v > 0]
        q = torch.quantile(f, torch.tensor(QUANTILES, dtype=torch.float64)).tolist() if len(f) else [0.0] * len(QUANTILES)
        rows.append({"firing": len(f) / max(len(v), 1), "quantiles": q})
    return rows


def main() -> None:
    args = model_bench_args(__doc__, DEFAULT_MODELS, extra=lambda ap: ap.add_argument(
        "--factors", default="1,2,4,16", help="clocks to try, as multiples of the model's T"))  # fmt: skip

    import torch
    from tqdm import tqdm

    from firstspike.data import load_split
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    factors = [int(f) for f in args.factors.split(",")]
    runs = []
    for dataset, ck in model_specs(args.models):
        model = model_from_checkpoint(load_checkpoint(ck)).eval()
        if model.cfg.layer_windows == "off":
            log.warning("skipping %s: not a window network (layer_windows)", ck)
            continue
        test = load_split(dataset, "test").head(args.limit)
        x, y = torch.from_numpy(test.images.copy()), torch.from_numpy(test.labels.astype("int64"))
        t0 = time.time()
        acc = {}
        for k in factors:
            net = at_T(model, k * model.T)
            right = 0
            for i in tqdm(range(0, len(y), args.batch), desc=f"{Path(ck).name} at {k} T", leave=False):
                with torch.no_grad():
                    cls, outs = net.classify(x[i : i + args.batch])
                right += int((cls == y[i : i + args.batch]).sum())
                if k == 1 and i == 0:
                    lv = levels(outs, model.T)
            acc[str(k)] = right / len(y)
        run = {"dataset": dataset, "checkpoint": repo_path(ck), "mode": model.cfg.mode, "T": model.T,
               "images": len(y), "levels_images": min(args.batch, len(y)), "quantiles": list(QUANTILES),
               "layers": ["input", *model.kinds], "levels": lv, "accuracy_at": acc, "seconds": time.time() - t0}  # fmt: skip
        log.info("%s: accuracy at %s", ck, ", ".join(f"{k} T: {100 * a:.2f}%" for k, a in acc.items()))
        runs.append(run)
    save_runs("time_resolution", runs)


if __name__ == "__main__":
    main()

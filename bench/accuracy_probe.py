"""Linear and small non-linear probes of a trained network's hidden features (issue 12).

    python bench/accuracy_probe.py [--model bench/results/ice40_binary.pt] [--dataset mnist] [--epochs 15]

Question it answers: is a spiking network limited by its hidden features or by its output
layer and decision? The spike times into the output layer (what the classifier sees) are read
on the training and test sets, and read out by real-valued classifiers trained with
cross-entropy (Adam, cosine schedule): a linear readout of the potentials a non-firing output
would have at t* (relu(t* - t), t* = T/2 and T - 1: what one output neuron can compute; at T/2
also with binary weights, alpha_c * sign(w) and a bias per class, as the output layer has), a
linear readout of all four t* in {T/4, T/2, 3T/4, T - 1} together, and a one-hidden-layer MLP
(256 ReLU units) on those. If the real readouts stay near the network's own accuracy the hidden
features are the limit; if they are well above it, the output layer and its training are.
Appends one record per call to bench/results/accuracy_probe.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, repo_path, setup_logging  # noqa: E402

log = logging.getLogger("bench.accuracy_probe")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "ice40_binary.pt"), help="training checkpoint")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=15, help="epochs of each readout")
    ap.add_argument("--train-images", type=int, default=0, help="first N training images (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from tqdm import tqdm

    from firstspike.data import load_split
    from firstspike.train.trainer import model_from_checkpoint

    torch.manual_seed(args.seed)
    model = model_from_checkpoint(torch.load(args.model, map_location="cpu", weights_only=False))
    T = model.T
    train, test = load_split(args.dataset, "train"), load_split(args.dataset, "test")
    if args.train_images:
        train = train.head(args.train_images)

    def features(images: np.ndarray, what: str, classify: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Spike times into the output layer (N, features), int16, and (``classify``) the network's own classes."""
        feats, classes = [], []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), 1000), desc=f"features ({what})"):
                x = torch.from_numpy(images[i : i + 1000].copy())
                feats.append(model(x, all_layers=True)[-2].flatten(1).to(torch.int16))
                if classify:
                    classes.append(model.classify(x)[0])
        return torch.cat(feats), (torch.cat(classes) if classify else None)

    t0 = time.perf_counter()
    f_tr, _ = features(train.images, "train", False)
    f_te, own = features(test.images, "test", True)
    y_tr, y_te = torch.from_numpy(train.labels.astype(np.int64)), torch.from_numpy(test.labels.astype(np.int64))
    own_acc = float((own == y_te).float().mean())
    silent = float((f_te >= T).float().mean())
    log.info("%s: %d features into the output layer, %.1f%% silent; the network's own test accuracy %.2f%%",
             Path(args.model).name, f_tr.shape[1], 100 * silent, 100 * own_acc)  # fmt: skip

    stars = {"T/4": T / 4, "T/2": T / 2, "3T/4": 3 * T / 4, "T-1": T - 1}

    def encode(f: torch.Tensor, keys: list[str]) -> torch.Tensor:
        t = f.float()
        return torch.cat([F.relu(stars[k] - t) / T for k in keys], dim=1)

    def fit(keys: list[str], hidden: int) -> tuple[float, float]:
        xtr, xte = encode(f_tr, keys), encode(f_te, keys)
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        d = xtr.shape[1]
        if hidden < 0:  # binary: alpha_c * sign(w) per class (clipped straight-through), a bias per class (the threshold)
            xtr, xte = encode(f_tr, keys) * 4, encode(f_te, keys) * 4  # unnormalised: a +-1 weight sees V itself
            net = BinaryLinear(d)
        elif hidden == 0:
            net = nn.Linear(d, 10)
        else:
            net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
        steps = args.epochs * (len(xtr) // 256)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(args.seed)
        for _ in range(args.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for s in range(len(xtr) // 256):
                b = perm[s * 256 : (s + 1) * 256]
                loss = F.cross_entropy(net(xtr[b]), y_tr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            tr = float((net(xtr).argmax(1) == y_tr).float().mean())
            te = float((net(xte).argmax(1) == y_te).float().mean())
        return tr, te

    class BinaryLinear(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.empty(10, d).uniform_(-1, 1))
            self.log_alpha = nn.Parameter(torch.full((10, 1), -2.0))
            self.b = nn.Parameter(torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.w.clamp(-1, 1)
            sign = torch.where(w >= 0, 1.0, -1.0)
            return x @ (self.log_alpha.exp() * (w + (sign - w).detach())).t() + self.b

    probes = [("binary linear, V(T/2)", ["T/2"], -1), ("linear, V(T/2)", ["T/2"], 0), ("linear, V(T-1)", ["T-1"], 0),
              ("linear, V at T/4, T/2, 3T/4, T-1", list(stars), 0), ("MLP 256, V at T/4, T/2, 3T/4, T-1", list(stars), 256)]  # fmt: skip
    out = []
    for name, keys, hidden in probes:
        tr, te = fit(keys, hidden)
        out.append({"readout": name, "train_acc": tr, "test_acc": te})
        log.info("%-36s train %.2f%%  test %.2f%%", name, 100 * tr, 100 * te)
    rec = {"model": repo_path(args.model), "dataset": args.dataset, "T": T, "features": int(f_tr.shape[1]),
           "silent_fraction": silent, "network_test_acc": own_acc, "train_images": len(train), "epochs": args.epochs,
           "probes": out, "seconds": round(time.perf_counter() - t0, 1), "commit": git_rev()}  # fmt: skip
    path = RESULTS / "accuracy_probe.json"
    old = json.loads(path.read_text()) if path.is_file() else {"benchmark": "accuracy_probe", "runs": []}
    old["runs"] = [r for r in old["runs"] if (r["model"], r["dataset"]) != (rec["model"], rec["dataset"])] + [rec]
    path.write_text(json.dumps(old, indent=1))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()

"""Linear and small non-linear probes of a trained network's hidden features (issue 12).

    python bench/accuracy_probe.py [--model bench/results/ice40_binary.pt] [--dataset mnist] [--epochs 15]

Question it answers: is a spiking network limited by its hidden features or by its output
layer and decision? The spike times into the output layer (what the classifier sees) are read
on the training and test sets, and read out by real-valued classifiers trained with
cross-entropy (Adam, cosine schedule): a linear readout of the potentials a non-firing output
would have at t* (relu(t* - t), t* = T/2 and T - 1: what one output neuron can compute), a
linear readout of all four t* in {T/4, T/2, 3T/4, T - 1} together, and a one-hidden-layer MLP
(256 ReLU units) on those. If the real readouts stay near the network's own accuracy the hidden
features are the limit; if they are well above it, the output layer (its +-1 weights, its
first-spike decision, its training) is. (A +-1 readout fitted the same way, with a clipped
straight-through estimator, stayed below the networks' own output layers: not a bound, left out.)
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


PROBES = [("linear, V(T/2)", ("T/2",), 0), ("linear, V(T-1)", ("T-1",), 0),
          ("linear, V at T/4, T/2, 3T/4, T-1", ("T/4", "T/2", "3T/4", "T-1"), 0),
          ("MLP 256, V at T/4, T/2, 3T/4, T-1", ("T/4", "T/2", "3T/4", "T-1"), 256)]  # (name, decision times, hidden units)


def probe_readouts(f_tr, y_tr, f_te, y_te, T: int, epochs: int, seed: int = 0, lr: float = 1e-3, probes=PROBES) -> list[dict]:
    """Train each readout of ``probes`` on spike-time features (N, F) with T meaning silent;
    its train and test accuracy."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    stars = {"T/4": T / 4, "T/2": T / 2, "3T/4": 3 * T / 4, "T-1": T - 1}

    def encode(f: torch.Tensor, keys) -> torch.Tensor:  # the potential a +-1 synapse adds by t*: relu(t* - t)
        return torch.cat([F.relu(stars[k] - f.float()) / T for k in keys], dim=1)

    classes = int(max(int(y_tr.max()), int(y_te.max()))) + 1
    out = []
    for name, keys, hidden in probes:
        torch.manual_seed(seed)
        xtr, xte = encode(f_tr, keys), encode(f_te, keys)
        d = xtr.shape[1]
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        net = nn.Linear(d, classes) if hidden == 0 else nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
        per = max(1, len(xtr) // 256)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for s in range(per):
                b = perm[s * 256 : (s + 1) * 256]
                loss = F.cross_entropy(net(xtr[b]), y_tr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            tr = float((net(xtr).argmax(1) == y_tr).float().mean())
            te = float((net(xte).argmax(1) == y_te).float().mean())
        out.append({"readout": name, "train_acc": tr, "test_acc": te})
    return out


def decision_check(model, f: "torch.Tensor", shape: list[int], y: "torch.Tensor") -> dict[str, float]:
    """On the output layer as exported (integer weights and thresholds), from its input spike
    times ``f`` (N, features): the fraction of images where a wrong output crosses its threshold
    before t* = T/2 and is back under it at t* (what the potential loss does not see), and the
    accuracy of the class with the largest (V(t*) - threshold) / threshold."""
    import torch
    import torch.nn.functional as F

    out, T = model.layers[-1], model.T
    thr = out.effective()[2].double().view(1, -1, 1)
    early = right = 0
    with torch.no_grad():
        for i in range(0, len(f), 1000):
            t_in = f[i : i + 1000].view(-1, *shape)
            v = torch.stack([out.potential_at(t_in, t).flatten(1) for t in range(T // 2 + 1)], 2)  # (B, classes, t = 0 .. T/2)
            crossed, under = (v[:, :, : T // 2] >= thr).any(2), v[:, :, T // 2] < thr[:, :, 0]
            wrong = F.one_hot(y[i : i + 1000], v.shape[1]) == 0
            early += int((crossed & under & wrong).any(1).sum())
            right += int((((v[:, :, T // 2] - thr[:, :, 0]) / thr[:, :, 0]).argmax(1) == y[i : i + 1000]).sum())
    return {"wrong_crossed_before_t_star_and_under_at_it": early / len(f), "acc_largest_relative_margin_at_t_star": right / len(f)}


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "ice40_binary.pt"), help="training checkpoint")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=15, help="epochs of each readout")
    ap.add_argument("--train-images", type=int, default=0, help="first N training images (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", type=int, default=-2,
                    help="whose spike times to probe, an index into the model's outputs (input times first): -2 = the "
                         "output layer's input (default); -3 one layer earlier (e.g. the pooled features under a hidden fc)")
    ap.add_argument("--linear-only", action="store_true", help="the linear readouts only (not the MLP)")
    args = ap.parse_args()

    import numpy as np
    import torch
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
        """Spike times of output ``args.layer`` (N, features), int16, and (``classify``) the network's own classes."""
        feats, classes = [], []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), 1000), desc=f"features ({what})"):
                x = torch.from_numpy(images[i : i + 1000].copy())
                outs = model(x, all_layers=True)
                shape[:] = outs[args.layer].shape[1:]
                feats.append(outs[args.layer].flatten(1).to(torch.int16))
                if classify:  # the model's decision rule on the same forward pass
                    classes.append(model.decide(outs[-1].flatten(1), outs[-2]))
        return torch.cat(feats), (torch.cat(classes) if classify else None)

    shape: list[int] = []  # (C, H, W) of the output layer's input
    t0 = time.perf_counter()
    f_tr, _ = features(train.images, "train", False)
    f_te, own = features(test.images, "test", True)
    y_tr, y_te = torch.from_numpy(train.labels.astype(np.int64)), torch.from_numpy(test.labels.astype(np.int64))
    own_acc = float((own == y_te).float().mean())
    silent = float((f_te >= T).float().mean())
    log.info("%s: %d features (outputs[%d]), %.1f%% silent; the network's own test accuracy %.2f%%",
             Path(args.model).name, f_tr.shape[1], args.layer, 100 * silent, 100 * own_acc)  # fmt: skip

    dec = decision_check(model, f_te, shape, y_te) if args.layer in (-2, len(model.layers) - 1) else None
    log.info("decision check: %s", dec)
    probes = [p for p in PROBES if not (args.linear_only and p[2])]
    out = probe_readouts(f_tr, y_tr, f_te, y_te, T, args.epochs, args.seed, probes=probes)
    for r in out:
        log.info("%-36s train %.2f%%  test %.2f%%", r["readout"], 100 * r["train_acc"], 100 * r["test_acc"])
    rec = {"model": repo_path(args.model), "dataset": args.dataset, "T": T, "features": int(f_tr.shape[1]), "layer": args.layer,
           "silent_fraction": silent, "network_test_acc": own_acc, "train_images": len(train), "epochs": args.epochs,
           "decision_check": dec, "probes": out, "seconds": round(time.perf_counter() - t0, 1), "commit": git_rev()}  # fmt: skip
    path = RESULTS / "accuracy_probe.json"
    old = json.loads(path.read_text()) if path.is_file() else {"benchmark": "accuracy_probe", "runs": []}
    old["runs"] = [r for r in old["runs"] if (r["model"], r["dataset"], r.get("layer", -2)) != (rec["model"], rec["dataset"], args.layer)] + [rec]
    path.write_text(json.dumps(old, indent=1))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()

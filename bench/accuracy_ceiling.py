"""Ceiling of an architecture: the same layers as a non-spiking network, same data and budget.

    python bench/accuracy_ceiling.py [--config csnn_ice40] [--epochs 4] [--weights binary|real]
        [--dataset mnist|fashion-mnist] [--shift N] [--flip] [--batch-size B]

The spiking layers become ordinary convolutions / dense layers with ReLU, min-time pooling
becomes max pooling, the output is 10 logits trained with cross-entropy (Adam, cosine
schedule, the config's batch size). ``--weights binary`` uses alpha * sign(w) per output
channel with a clipped straight-through estimator, as the spiking network does. Inputs are
the TTFS code read back as intensities, (T - t) / T, so the network sees what the spiking
one sees. ``--activation ramp`` replaces ReLU by the forward of a network with layer windows and
a ramp (``layer_windows = "ramp"``): every layer, the output too, is the clipped, quantised ReLU
a = clip(floor(T z / theta), 0, T) / T of its spike time (a = (T - t) / T; ``RampReLU``, with the
trainer's straight-through gradient), and the logits are the output times' -t / gamma of the ``ce``
loss; so the harness trains the spiking forward itself as a network of dense layers (real mode:
the same weights; binary: the same scales, without the rounding of the integer ramps). ``--shift`` / ``--flip`` augment the training images as the trainer's
``augment_shift`` / ``augment_flip`` do. Appends a record to bench/results/accuracy_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import math
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, setup_logging  # noqa: E402

log = logging.getLogger("bench.accuracy_ceiling")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="csnn_ice40")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--weights", default="binary", choices=["binary", "real"])
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--no-bias", action="store_true", help="no bias (the spiking layers have none)")
    ap.add_argument("--shift", type=int, default=0, help="random translations of the training images, +-N pixels")
    ap.add_argument("--flip", action="store_true", help="random left-right mirror of the training images")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the config's")
    ap.add_argument("--activation", default="relu", choices=["relu", "ramp", "ramp_hidden", "clip"],
                    help="ramp: the spiking forward of a ramp network (layer windows), see above; ramp_hidden: "
                    "its hidden layers, the output's potential as the logits; clip: ReLU clipped at theta, "
                    "not quantised, the output's potential as the logits")
    ap.add_argument("--hidden-silent-grad", action="store_true",
                    help="ramp: silent hidden neurons get the error that would make them fire (the trainer's get none)")
    ap.add_argument("--init", default="uniform", choices=["uniform", "calibrated"],
                    help="uniform: w ~ U(-1, 1) / sqrt(fan-in); calibrated (ramp, real): the trainer's data-driven "
                    "start (CSNN.calibrate, 'positive', on 512 training images), its weights unchanged")
    ap.add_argument("--gamma", type=float, default=0.0, help="ramp: the ce loss's gamma in time steps (0: the config's, times T / the config's T)")
    ap.add_argument("--T", type=int, default=0, help="time steps of a window and of the input code (0: the config's); finer steps, the same range")
    ap.add_argument("--label", default="", help="what the config is, for the record (default: the --config argument)")
    args = ap.parse_args()
    if args.T < 0:
        ap.error(f"--T {args.T}: give a positive number of time steps (0: the config's)")

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from firstspike.data import load_split
    from firstspike.train.functional import RampReLU, input_table
    from firstspike.train.model import load_config
    from firstspike.train.trainer import augment_images

    torch.manual_seed(args.seed)
    cfg, tab = load_config(args.config)
    T = args.T or cfg.T
    table = torch.from_numpy(input_table(T, cfg.input_gamma)).float()

    class BinConv(nn.Module):
        def __init__(self, cin, cout, k, stride, pad, binary):
            super().__init__()
            fan_in = cin * k * k
            # binary: latent weights in [-1, 1], scale 1/sqrt(fan-in); real: the same scale on the weights
            self.w = nn.Parameter(torch.empty(cout, cin, k, k).uniform_(-1, 1) * (1.0 if binary else fan_in**-0.5))
            self.la = nn.Parameter(torch.full((cout,), -0.5 * math.log(fan_in)))
            self.b = nn.Parameter(torch.zeros(cout), requires_grad=not args.no_bias)
            self.stride, self.pad, self.binary = stride, pad, binary

        def forward(self, x):
            w = self.w
            if self.binary:
                s = torch.where(w >= 0, 1.0, -1.0)
                ste = (w - w.detach()) * (w.detach().abs() <= 1)
                w = torch.exp(self.la).view(-1, 1, 1, 1) * (s + ste)
            return F.conv2d(x, w, self.b, stride=self.stride, padding=self.pad)

    ramp = args.activation != "relu"  # the hidden layers
    ramp_out = args.activation == "ramp"  # the output layer too
    quantise = args.activation != "clip"
    gamma = args.gamma or float(tab.get("gamma", 2.0)) * T / cfg.T
    mods, kinds = nn.ModuleList(), []
    c, h, w_ = cfg.input_shape
    for ly, shp in zip(cfg.layers, cfg.shapes()):
        if ly.kind == "conv":
            mods.append(BinConv(c, ly.channels, ly.kernel, ly.stride, ly.padding, args.weights == "binary"))
        elif ly.kind == "pool":
            mods.append(nn.MaxPool2d(ly.kernel))
        else:
            assert h == w_, "square inputs of the dense layer"
            mods.append(BinConv(c, ly.channels, h, 1, 0, args.weights == "binary"))
        kinds.append(ly.kind)
        c, h, w_ = shp

    def net(x):
        for i, (k, m) in enumerate(zip(kinds, mods)):
            x = m(x)
            if ramp and k != "pool" and (ramp_out or i < len(mods) - 1):
                x = RampReLU.apply(x, T, cfg.theta, quantise, args.hidden_silent_grad or i == len(mods) - 1)
            elif k != "pool" and i < len(mods) - 1:
                x = F.relu(x)
        x = x.flatten(1)
        return (x - 1) * (T / gamma) if ramp_out else x  # ramp: -t / gamma of the output times

    tr, te = load_split(args.dataset, "train"), load_split(args.dataset, "test")
    if args.init == "calibrated":  # a real ramp layer's weights are these dense layers' (RampReLU)
        if not (ramp_out and args.weights == "real" and cfg.layer_windows == "ramp"):
            ap.error("--init calibrated takes --activation ramp --weights real and a ramp config")
        from firstspike.train.model import CSNN

        spiking = CSNN(replace(cfg, mode="real"))
        g = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(tr.labels), generator=g)[: int(tab.get("calib_images", 512))]
        spiking.calibrate(torch.from_numpy(tr.images[idx.numpy()].copy()), "positive")
        with torch.no_grad():
            for m, src in zip([m for m in mods if isinstance(m, BinConv)], spiking.spiking_layers()):
                m.w.copy_(src.weight)

    def prep(imgs):
        t = table[torch.from_numpy(imgs.copy()).long()].unsqueeze(1)
        return (T - t) / T

    xtr, ytr = prep(tr.images), torch.from_numpy(tr.labels.copy()).long()
    xte, yte = prep(te.images), torch.from_numpy(te.labels.copy()).long()
    opt = torch.optim.Adam(mods.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    bs = args.batch_size or int(tab.get("batch_size", 64))
    # ramp, binary: the trainer's bound on the scales (min_threshold: integer thresholds >= it, so
    # alpha <= theta / it in the trainer's units of time steps, T x that here)
    mt = int(tab.get("min_threshold", 0))
    la_max = math.log(cfg.theta * T / mt) if ramp and args.weights == "binary" and mt > 0 else None
    g_aug = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()

    def acc(x, y):
        with torch.no_grad():
            return float(torch.cat([net(x[i : i + 1000]).argmax(1) for i in range(0, len(y), 1000)]).eq(y).float().mean())

    curve = []
    for ep in range(args.epochs):
        perm = torch.randperm(len(ytr))
        for s in range(len(perm) // bs):
            bi = perm[s * bs : (s + 1) * bs]
            loss = F.cross_entropy(net(augment_images(xtr[bi], args.shift, args.flip, g_aug)), ytr[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if la_max is not None:
                with torch.no_grad():
                    for m in mods:
                        if isinstance(m, BinConv):
                            m.la.clamp_(max=la_max)
        sched.step()
        curve.append(acc(xte, yte))
        log.info("epoch %d: test %.2f%%", ep + 1, 100 * curve[-1])
    rec = {"config": args.label or args.config, "dataset": args.dataset, "bias": not args.no_bias, "weights": args.weights, "epochs": args.epochs, "lr": args.lr,
           "shift": args.shift, "flip": args.flip, "batch_size": bs, "activation": args.activation,
           **({"gamma": gamma} if ramp_out else {}), **({"hidden_silent_grad": args.hidden_silent_grad} if ramp else {}),
           **({"init": args.init} if args.init != "uniform" else {}), **({"T": T} if T != cfg.T else {}), **({"seed": args.seed} if args.seed else {}), "test_acc": curve[-1],
           "train_acc": acc(xtr[:10000], ytr[:10000]), "test_curve": curve, "wall_s": time.time() - t0}  # fmt: skip
    out = RESULTS / "accuracy_ceiling.json"
    recs = json.loads(out.read_text()) if out.is_file() else []
    keys = ("config", "dataset", "bias", "weights", "epochs", "lr", "shift", "flip", "batch_size", "activation", "hidden_silent_grad", "init", "T", "seed")
    defaults = {"T": None, "seed": 0, "dataset": "mnist", "bias": True, "shift": 0, "flip": False, "batch_size": bs, "activation": "relu", "hidden_silent_grad": None, "init": "uniform"}
    recs = [r for r in recs if any(r.get(k, defaults.get(k)) != rec.get(k, defaults.get(k)) for k in keys)]
    recs.append(rec)
    out.write_text(json.dumps(recs, indent=1))
    log.info("ceiling %s %s %s %s %d epochs: test %.2f%% train %.2f%%", args.config, args.dataset, args.weights, args.activation, args.epochs,
             100 * rec["test_acc"], 100 * rec["train_acc"])  # fmt: skip


if __name__ == "__main__":
    main()

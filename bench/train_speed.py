"""Training speed: images/s of forward+backward of the default binary CSNN at T=64 on this
machine, event-driven Numba kernels against the straightforward per-time-step PyTorch
implementation of the same network, in the same run (ratio), plus peak memory; and the
trainer's whole step (batch 8, csnn_ice40's settings) through autograd against the fused
step (train/fused.py), alternating in one process (ratio).

    python bench/train_speed.py [--config csnn] [--T 64] [--batch 64] [--repeats 5]

Each variant runs in its own process so that its peak RSS is its own. Writes
bench/results/train_speed.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.train_speed")


def _measure(backend: str, config: str, T: int, batch: int, repeats: int, q: mp.Queue) -> None:
    import torch

    from firstspike.data import load_split
    from firstspike.train.functional import spike_loss
    from firstspike.train.model import CSNN, load_config

    torch.manual_seed(0)
    cfg, _ = load_config(config)
    cfg.T = T
    model = CSNN(cfg)
    split = load_split("mnist", "train")
    x = torch.from_numpy(split.images[: max(512, batch * (repeats + 1))].copy())
    y = torch.from_numpy(split.labels[: len(x)].copy())
    model.calibrate(x[:512])
    model.backend = backend

    def step(i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        model.zero_grad()
        out = model(xb)
        spike_loss(out, yb, T, 2.0).backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    first = step(0)  # warm-up (JIT compile / caches); also the cross-check sample
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        step(1 + r)
        times.append(time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"backend": backend, "seconds_per_batch": times, "batch": batch,
           "first_out": first[0].tolist(), "first_grads": [g.flatten()[:2000].tolist() for g in first[1]],
           "peak_rss_mb": rss_mb})  # fmt: skip


def _alternating_ms(one, kinds: list[str], steps: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per batch of each kind, ``one(kind, i)`` over batches 1..steps-1 (batch 0 was
    the warm-up), in ``rounds`` alternating rounds (the machine's drift falls on every kind)."""
    ms: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            t0 = time.perf_counter()
            for i in range(1, steps):
                one(kind, i)
            ms[kind].append(1e3 * (time.perf_counter() - t0) / (steps - 1))
    return ms


def _grad_relative_difference(got, want) -> float:
    """Largest difference of two lists of gradients, relative to each tensor's largest value."""
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, want))


def _measure_step(config: str, steps: int, rounds: int, q: mp.Queue) -> None:
    """The trainer's whole step (forward, loss, gradients, optimizer) on ``config`` with its
    own [train] settings: autograd against the fused step (train/fused.py), in alternating
    rounds of ``steps`` batches on copies of one calibrated model; where the config uses other
    slopes than STiDi-BP's -1/rho (``latency``), also the fused step with -1/rho (their cost)."""
    import copy
    import dataclasses

    import numpy as np
    import torch

    from firstspike.data import load_split
    from firstspike.train import fused
    from firstspike.train.model import CSNN, load_config
    from firstspike.train.trainer import TrainConfig, _make_optimizer, autograd_step, set_backward

    cfg, table = load_config(config)
    tc = TrainConfig.from_dict(table, cfg.mode)
    split = load_split("mnist", "train")
    n = tc.batch_size * steps
    x = torch.from_numpy(split.images[: max(n, 512)].copy())
    y = torch.from_numpy(split.labels[: len(x)].astype(np.int64))
    torch.manual_seed(0)
    base = CSNN(cfg)
    set_backward(base, tc)  # as the trainer does (autograd's backward reads the model's settings)
    base.calibrate(x[:512])
    t_goal = tc.t_goal * cfg.T if tc.t_goal < 1 else None
    tcs = {"autograd": tc, "fused": tc}
    if tc.latency != "rho":
        tcs["fused_rho"] = dataclasses.replace(tc, latency="rho")
    models = {k: copy.deepcopy(base) for k in tcs}
    opts = {k: _make_optimizer(m, tc)[0] for k, m in models.items()}

    def one(kind: str, i: int) -> None:
        m, xb, yb = models[kind], x[i * tc.batch_size : (i + 1) * tc.batch_size], y[i * tc.batch_size : (i + 1) * tc.batch_size]
        opts[kind].zero_grad(set_to_none=True)
        if kind != "autograd":
            fused.step(m, xb, yb, tcs[kind], t_goal, False)
        else:
            autograd_step(m, m, xb, yb, tc, t_goal, False)
        opts[kind].step()

    grads = {}
    for kind in models:  # warm-up (JIT caches) and the cross-check of the first batch's gradients (same slopes)
        one(kind, 0)
        grads[kind] = [p.grad.double().flatten() for p in models[kind].parameters()]
    err = _grad_relative_difference(grads["fused"], grads["autograd"])
    ms = _alternating_ms(one, list(models), steps, rounds)
    from firstspike.train import kernels

    q.put({"config": config, "batch": tc.batch_size, "latency": tc.latency, "steps": steps, "rounds": rounds, "ms_per_step": ms,
           "threads": {"torch": torch.get_num_threads(), "numba": kernels.num_threads()},
           "first_batch_grad_relative_difference": err})  # fmt: skip


def _measure_window_step(config: str, dataset: str, steps: int, rounds: int, q: mp.Queue) -> None:
    """The trainer's whole step on a network with layer windows (``config``, its [train] settings
    per mode, batch and all), in binary and real mode: the window layers in float64 throughout
    (``float64_windows``, the path before the forty-ninth session) against ``window_dtype``'s
    float32, in alternating rounds of ``steps`` batches on copies of one model. The first batch
    cross-checks them: binary spike times must be identical (exact integer sums), real ones
    may differ by float rounding (counted)."""
    import copy

    import numpy as np
    import torch

    from firstspike.data import load_split
    from firstspike.train.functional import float64_windows
    from firstspike.train.model import CSNN, load_config
    from firstspike.train.trainer import TrainConfig, _make_optimizer, autograd_step, set_backward

    cfg0, table = load_config(config)
    split = load_split(dataset, "train")
    out = {"config": config, "dataset": dataset, "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(), "modes": {}}
    for mode in ("binary", "real"):
        cfg = copy.deepcopy(cfg0)
        cfg.mode = mode
        tc = TrainConfig.from_dict(table, mode).for_mode(mode)
        n = tc.batch_size * steps
        x = torch.from_numpy(split.images[: max(n, 512)].copy())
        y = torch.from_numpy(split.labels[: len(x)].astype(np.int64))
        torch.manual_seed(0)
        base = CSNN(cfg)
        set_backward(base, tc)
        base.calibrate(x[:512], tc.calib if tc.calib != "auto" else ("median" if mode == "binary" else "positive"))
        models = {k: copy.deepcopy(base) for k in ("float64", "float32")}
        opts = {k: _make_optimizer(m, tc)[0] for k, m in models.items()}

        def one(kind: str, i: int) -> list[torch.Tensor]:
            m, sl = models[kind], slice(i * tc.batch_size, (i + 1) * tc.batch_size)
            opts[kind].zero_grad(set_to_none=True)
            if kind == "float64":
                with float64_windows():
                    _, outs = autograd_step(m, m, x[sl], y[sl], tc, None, False)
            else:
                _, outs = autograd_step(m, m, x[sl], y[sl], tc, None, False)
            opts[kind].step()
            return outs

        first, grads = {}, {}
        for kind in models:  # warm-up and the cross-check of the first batch
            first[kind] = [o.detach() for o in one(kind, 0)]
            grads[kind] = [p.grad.double().flatten() for p in models[kind].parameters() if p.grad is not None]
        differ = sum(int((a != b).sum()) for a, b in zip(first["float32"], first["float64"]))
        total = sum(a.numel() for a in first["float64"][1:])
        err = _grad_relative_difference(grads["float32"], grads["float64"])
        ms = _alternating_ms(one, list(models), steps, rounds)
        out["modes"][mode] = {"batch": tc.batch_size, "ms_per_step": ms, "spike_times_differing": differ, "spike_times": total,
                              "first_batch_grad_relative_difference": err}  # fmt: skip
    q.put(out)


def run_step(args: argparse.Namespace) -> dict:
    return _in_process(_measure_step, args.step_config, args.step_batches, args.step_rounds)


def run(backend: str, args: argparse.Namespace) -> dict:
    return _in_process(_measure, backend, args.config, args.T, args.batch, args.repeats)


def _in_process(target, *a) -> dict:
    """``target(*a, queue)`` in a fresh process (its own peak RSS and thread settings); its result."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="csnn")
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-repeats", type=int, default=1, help="repeats of the (slow) per-time-step version")
    ap.add_argument("--step-config", default="csnn_ice40", help="network whose whole training step is timed")
    ap.add_argument("--step-batches", type=int, default=400, help="batches per round of that timing")
    ap.add_argument("--step-rounds", type=int, default=3, help="alternating rounds (autograd, fused) of it")
    ap.add_argument("--window-config", default="csnn_fashion_fc256_ramp", help="network with layer windows whose step is timed")
    ap.add_argument("--window-dataset", default="fashion-mnist")
    ap.add_argument("--window-batches", type=int, default=30, help="batches per round of that timing")
    ap.add_argument("--window-only", action="store_true", help="time only the window step; keep the rest of the stored result")
    args = ap.parse_args()
    import numpy as np

    log.info("training step of %s with layer windows: float64 against float32 sums ...", args.window_config)
    ws = _in_process(_measure_window_step, args.window_config, args.window_dataset, args.window_batches, args.step_rounds)
    ws.update(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), commit=git_rev())
    for mode, r in ws["modes"].items():
        r["float64_ms"] = float(np.median(r["ms_per_step"]["float64"]))
        r["float32_ms"] = float(np.median(r["ms_per_step"]["float32"]))
        r["speedup"] = r["float64_ms"] / r["float32_ms"]
        log.info("%s: float64 %.0f ms, float32 %.0f ms a batch of %d: %.2fx; %d of %d spike times differ", mode, r["float64_ms"],
                 r["float32_ms"], r["batch"], r["speedup"], r["spike_times_differing"], r["spike_times"])  # fmt: skip
    if args.window_only:
        prev = json.loads((Path(__file__).resolve().parent / "results" / "train_speed.json").read_text())
        write_result("train_speed", {**prev, "window_step": ws})  # (the other parts keep their date and commit)
        from report import render_docs

        render_docs()
        return

    log.info("training step of %s: autograd against the fused step ...", args.step_config)
    st = run_step(args)

    st["autograd_ms"] = float(np.median(st["ms_per_step"]["autograd"]))
    st["fused_ms"] = float(np.median(st["ms_per_step"]["fused"]))
    st["speedup"] = st["autograd_ms"] / st["fused_ms"]
    log.info("step: autograd %.2f ms, fused %.2f ms: %.2fx", st["autograd_ms"], st["fused_ms"], st["speedup"])
    if "fused_rho" in st["ms_per_step"]:
        st["fused_rho_ms"] = float(np.median(st["ms_per_step"]["fused_rho"]))
        log.info("step: fused with -1/rho %.2f ms (the config's slopes cost %.2fx)", st["fused_rho_ms"],
                 st["fused_ms"] / st["fused_rho_ms"])  # fmt: skip
    log.info("event-driven (numba) ...")
    fast = run("numba", args)
    log.info("per-time-step (torch) ...")
    base_args = argparse.Namespace(**{**vars(args), "repeats": args.baseline_repeats})
    slow = run("torch", base_args)

    same_out = fast["first_out"] == slow["first_out"]

    grad_err = max(float(np.max(np.abs(np.array(a) - np.array(b)))) if a else 0.0 for a, b in zip(fast["first_grads"], slow["first_grads"]))
    f_ips = args.batch / float(np.median(fast["seconds_per_batch"]))
    s_ips = args.batch / float(np.median(slow["seconds_per_batch"]))
    res = {
        "config": args.config,
        "T": args.T,
        "batch": args.batch,
        "event_driven": {"images_per_s": f_ips, "peak_rss_mb": fast["peak_rss_mb"], "batches": len(fast["seconds_per_batch"])},
        "per_time_step": {"images_per_s": s_ips, "peak_rss_mb": slow["peak_rss_mb"], "batches": len(slow["seconds_per_batch"])},
        "speedup": f_ips / s_ips,
        "mnist_epoch_minutes": 60000 / f_ips / 60,
        "identical_spike_times": same_out,
        "max_grad_difference": grad_err,
        "goals": {"speedup": ">= 20", "mnist_epoch_minutes": "<= 10"},
        "training_step": st,
        "window_step": ws,
    }
    log.info(
        "event-driven %.1f img/s, per-time-step %.2f img/s: %.1fx; MNIST epoch %.1f min; identical=%s",
        f_ips, s_ips, res["speedup"], res["mnist_epoch_minutes"], same_out,
    )  # fmt: skip
    write_result("train_speed", res)
    from report import render_docs

    render_docs()
    print(json.dumps({k: res[k] for k in ("speedup", "mnist_epoch_minutes", "identical_spike_times")}))


if __name__ == "__main__":
    main()

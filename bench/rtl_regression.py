"""RTL regression and cycles per image: the trained default binary model through the
generated core on Verilator (cocotb), every test image, every spike time compared.

    python bench/rtl_regression.py [--model CKPT_OR_FSM] [--images 0] [--jobs 2] [--lanes 64]
    python bench/rtl_regression.py --model bench/results/mnist_real_csnn_ramp.pt --weight-bits 4 --name rtl_regression_real4

A real-valued checkpoint runs as a --weight-bits model file (the quantiser's widths; binary
checkpoints are 1 bit by construction).

Writes bench/results/rtl_regression.json (mismatches, accuracies, wall time, simulated
cycles/s), bench/results/rtl_cycles.png (cycles per image against the lower bound
sum over layers of (synaptic updates + neuron updates) / lanes) and refreshes
docs/benchmarks.md. Goals (issue 4): 0 mismatches; <= 30 min for 10k MNIST images on
2 cores; mean and p99 cycles <= 1.5x the bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging, repo_path, write_result  # noqa: E402

from firstspike.cli import READ_REG_HELP  # noqa: E402

log = logging.getLogger("bench.rtl")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "mnist_binary.pt"), help="checkpoint or model file")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--images", type=int, default=0, help="first N test images (0 = all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--lanes", type=int, default=64)
    ap.add_argument("--positions", type=int, default=1, choices=[1, 2], help="output positions per state word (plan_core)")
    ap.add_argument("--read-reg", action="store_true", help=READ_REG_HELP + " (the icebreaker's core)")
    ap.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    ap.add_argument("--weight-bits", type=int, default=None,
                    help="a real-valued checkpoint's weight width (as firstspike quantize --weight-bits)")
    ap.add_argument("--name", default="rtl_regression")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from firstspike.boards.link import model_hash
    from firstspike.data import load_split
    from firstspike.hw.plan import plan_core
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import MAGIC, load
    from firstspike.sim.rtl import verify

    with open(args.model, "rb") as f:
        is_fsm = f.read(len(MAGIC)) == MAGIC
    if is_fsm and args.weight_bits is not None:
        ap.error(f"--weight-bits applies to a checkpoint; {args.model} is a model file, whose widths are fixed")
    tables = load(args.model) if is_fsm else quantize_checkpoint(args.model, weight_bits=args.weight_bits)[0]
    test = load_split(args.dataset, "test").head(args.images)
    rep = verify(tables, test.images, test.labels, sim=args.sim, jobs=args.jobs, lanes=args.lanes,
                 build_root=ROOT / "build" / "sim", positions=args.positions, read_reg=args.read_reg)  # fmt: skip
    d = rep.as_dict()
    log.info("%s", d)
    # the lower bound per image, from the golden model's spike times
    plan = plan_core(tables, lanes=args.lanes, positions=args.positions, read_reg=args.read_reg)
    times = GoldenModel(tables).run(test.images[:, None]).layer_times
    work = plan.work(times)
    bound = work["cycle_bound"]
    ratio = rep.cycles / bound
    cb = work["cycle_bound_concurrent"]
    cratio = rep.cycles / cb
    sim_cycles = float(rep.cycles.sum())
    d.update({
        "model": repo_path(args.model), "model_sha256_prefix": model_hash(tables).hex(),  # as board builds record it
        "weight_bits": args.weight_bits,  # None: the checkpoint's own (binary) or the model file's widths
        "dataset": args.dataset, "jobs": args.jobs, "positions": args.positions, "read_reg": args.read_reg,
        "windows": tables.windows, "steps": plan.steps,
        "total_mismatches": rep.total_mismatches,
        "bound_mean": float(bound.mean()), "bound_p99": float(np.percentile(bound, 99)),
        "ratio_mean": float(ratio.mean()), "ratio_p99": float(np.percentile(ratio, 99)), "ratio_max": float(ratio.max()),
        "concurrent_bound_mean": float(cb.mean()), "concurrent_bound_p99": float(np.percentile(cb, 99)),
        "concurrent_ratio_mean": float(cratio.mean()), "concurrent_ratio_p99": float(np.percentile(cratio, 99)),
        "concurrent_ratio_max": float(cratio.max()),
        "synaptic_updates_mean": float(work["synaptic_updates"].mean()),
        "neuron_updates": int(work["neuron_updates"][0]),
        "compute_cycles_per_wall_second": sim_cycles / max(rep.wall_seconds - rep.build_seconds, 1e-9),
        "wall_minutes": round(rep.wall_seconds / 60, 2),
    })  # fmt: skip
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].hist(rep.cycles / 1000, bins=50, color="tab:blue")
    ax[0].axvline(cb.mean() / 1000, color="k", ls="--", label=f"mean lower bound {cb.mean() / 1000:.1f}k")
    ax[0].set_xlabel("compute cycles per image (thousands)")
    ax[0].set_ylabel("images")
    ax[0].legend()
    ax[1].scatter(cb / 1000, rep.cycles / 1000, s=3, alpha=0.4)
    lim = max(cb.max(), rep.cycles.max()) / 1000
    ax[1].plot([0, lim], [0, lim], "k--", lw=1, label="= bound")
    ax[1].plot([0, lim], [0, 1.5 * lim], "r:", lw=1, label="1.5 x bound")
    ax[1].set_xlabel("lower bound, concurrent layers (thousand cycles)")
    ax[1].set_ylabel("measured (thousand cycles)")
    ax[1].legend()
    fig.suptitle(f"{args.dataset}: {rep.images} test images, lanes={args.lanes}, {args.sim}")
    fig.tight_layout()
    png = RESULTS / f"{args.name}_cycles.png"
    fig.savefig(png, dpi=110)
    d["plot"] = png.name
    np.savez_compressed(RESULTS / f"{args.name}_per_image.npz", cycles=rep.cycles.astype(np.int32),
                        bound=bound.astype(np.float32), concurrent_bound=cb.astype(np.float32))  # fmt: skip
    write_result(args.name, d)
    try:
        import report

        report.render_docs()
    except Exception as e:  # the table is a convenience; the JSON is the result
        log.warning("docs table not refreshed: %s", e)
    print(f"{rep.images} images: {rep.total_mismatches} mismatches; RTL accuracy {100 * rep.rtl_accuracy:.2f}% "
          f"(golden {100 * rep.golden_accuracy:.2f}%); cycles mean {d['cycles_mean']:.0f} p99 {d['cycles_p99']:.0f}; "
          f"bound mean {d['bound_mean']:.0f} (concurrent {d['concurrent_bound_mean']:.0f}); ratio to the concurrent bound "
          f"mean {d['concurrent_ratio_mean']:.2f} p99 {d['concurrent_ratio_p99']:.2f}; "
          f"{d['wall_minutes']} min")  # fmt: skip


if __name__ == "__main__":
    main()

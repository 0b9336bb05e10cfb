"""Boards: resources, Fmax, accuracy and images/s per board.

    python bench/boards.py [--runs icebreaker:bench/results/ice40_binary.pt:2,ulx3s:bench/results/mnist_binary.pt:16] [--dataset mnist]
                           [--cycles-images 200] [--virtual-images 50] [--positions 1|2] [--clock-mhz F] [--read-reg]

For each board: build the bitstream (YoWASP), read utilisation and Fmax; accuracy of the
golden model on the whole test set; compute cycles per image from a Verilator run of the
same core (bit-exact check included) -> images/s at Fmax and at the core clock (compute
only, and with the pixels sent over the UART at the build's baud rate, default 1 Mbaud, in
frames of protocol 3, COBS-stuffed, measured on the test images); the virtual board (core + UART
+ protocol in Verilator, host runtime over a pty) on a few images, classes compared, and
one image's spike times read back over the UART and compared. Boards that share a model
and lane count share the RTL and virtual-board runs.
Writes bench/results/boards.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, merge_runs, repo_path, setup_logging, write_result  # noqa: E402

from firstspike.cli import READ_REG_HELP  # noqa: E402

log = logging.getLogger("bench.boards")
DEFAULT = (f"icebreaker:{RESULTS / 'ice40_binary.pt'}:2,ulx3s:{RESULTS / 'mnist_binary.pt'}:64,"
           f"orangecrab:{RESULTS / 'mnist_binary.pt'}:64")


def row_key(r: dict) -> tuple:
    """The settings that make a boards.json row: a new build replaces the stored row of the same
    board, model, positions, spike readout, registered reads and core clock. The clock is part of
    it so that a trial at another clock (a failed one too) keeps its own row and does not erase
    the build at the board's default."""
    return (r["board"], r.get("checkpoint"), r.get("positions", 1), r.get("spikes"), bool(r.get("read_reg")),
            r.get("clock_mhz"))


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=DEFAULT, help="BOARD:CHECKPOINT_OR_MODEL:LANES,...")
    ap.add_argument("--dataset", default="mnist", help="test set of every run's model (mnist or fashion-mnist)")
    ap.add_argument("--cycles-images", type=int, default=200, help="RTL images per model (fewer for slow cores: see --max-cycles)")
    ap.add_argument("--virtual-images", type=int, default=50)
    ap.add_argument("--positions", type=int, default=None, choices=[1, 2], help="output positions per state word (default: the board's)")
    ap.add_argument("--spikes", action=argparse.BooleanOptionalAction, default=None, help="spike readout (default: the board's)")
    ap.add_argument("--clock-mhz", type=float, default=None, help="core clock of every run (default: the board's)")
    ap.add_argument("--read-reg", action=argparse.BooleanOptionalAction, default=None,
                    help=READ_REG_HELP + " (default: the board's)")
    ap.add_argument("--max-cycles", type=float, default=2e8, help="cap on simulated cycles per model and run kind")
    args = ap.parse_args()

    import numpy as np

    from firstspike.boards import protocol as P
    from firstspike.boards.build import BuildError, build
    from firstspike.boards.runtime import BoardRuntime
    from firstspike.boards.virtual import VirtualBoard
    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import MAGIC, load
    from firstspike.sim.rtl import build as rtl_build
    from firstspike.sim.rtl import run_images, verify

    from firstspike.hw.plan import image_cycles, plan_core
    from firstspike.sim.vectors import compare_streams, expected

    test = load_split(args.dataset, "test")
    runs = []
    shared: dict[tuple[str, int], dict] = {}  # (model sha, lanes) -> RTL and virtual-board figures
    for spec in args.runs.split(","):
        board, model, lanes = spec.rsplit(":", 2)
        lanes = int(lanes)
        with open(model, "rb") as f:
            tables = load(model) if f.read(len(MAGIC)) == MAGIC else quantize_checkpoint(model)[0]
        try:
            r = build(tables, board, ROOT / "build" / "boards-bench", lanes=lanes, positions=args.positions, spikes=args.spikes,
                      clock_mhz=args.clock_mhz, read_reg=args.read_reg)  # fmt: skip
        except BuildError as e:  # a measured failure is a result too
            log.warning("%s", e)
            # with the settings the build tried: a later build of them replaces this row
            runs.append({"board": board, "model": tables.name, "checkpoint": repo_path(model), "lanes": lanes, "T": tables.T,
                         **e.tried, "error": str(e)})  # fmt: skip
            continue
        from firstspike.quantize.modelfile import tables_sha256

        spikes = bool(r["spikes"])  # plain requests exit early; with the readout, CLASSIFY_SPIKES runs full windows
        pos = int(r.get("positions", 1))
        rr = bool(r.get("read_reg", False))
        sk = (tables_sha256(tables), lanes, r["uart_divisor"], spikes, pos, rr)
        if sk not in shared:
            golden = GoldenModel(tables)
            work = plan_core(tables, lanes=lanes, debug=False, positions=pos, read_reg=rr).work(golden.run(test.head(20).images).layer_times)
            est = float(work["cycle_bound_concurrent"].mean()) * 1.1  # a guess of cycles/image to size the runs
            n_rtl = int(max(10, min(args.cycles_images, args.max_cycles / est)))
            n_virt = int(max(4, min(args.virtual_images, args.max_cycles / 4 / est)))
            sub = test.head(n_rtl)
            rep = verify(tables, sub.images, sub.labels, sim="verilator", jobs=2, lanes=lanes,
                         build_root=ROOT / "build" / "sim", progress=False, positions=pos, read_reg=rr)  # fmt: skip
            # the board's core exits early on plain requests: its cycles (and classes) from that core
            eb = rtl_build(tables, lanes=lanes, debug=False, early_exit=True, build_root=ROOT / "build" / "sim",
                           max_images=n_rtl, positions=pos, read_reg=rr)  # fmt: skip
            er = run_images(eb, sub.images)
            cycles, early_mm = er.cycles, int((er.classes != golden.classify(sub.images)).sum())
            vsub = test.head(n_virt)
            # the virtual board at this board's UART divisor: its exchanges take the real board's cycles
            with VirtualBoard(tables, lanes=lanes, build_root=ROOT / "build" / "virtual", divisor=r["uart_divisor"],
                              spikes=spikes, positions=pos, read_reg=rr) as vb, \
                    BoardRuntime(vb.port, timeout=120) as rt:  # fmt: skip
                vres = rt.run(vsub.images, tables=tables)  # compact frames where the model allows them (T <= 128)
                spk = rt.run(vsub.images[:1], spikes=True, tables=tables) if spikes else None
            spk_mm = compare_streams(tables, spk.stream, expected(tables, vsub.images[:1]).stream) if spk else None
            vgold = golden.classify(vsub.images)
            shared[sk] = {
                "golden_accuracy": golden.accuracy(test.images, test.labels), "cycles_mean": float(cycles.mean()),
                "cycles_p99": float(np.percentile(cycles, 99)), "rtl_mismatches": rep.total_mismatches,
                "early_exit": True, "early_exit_class_mismatches": early_mm, "full_window_cycles_mean": float(rep.cycles.mean()),
                "rtl_images": rep.images, "virtual_images": len(vsub),
                "virtual_class_mismatches": int((vres.classes != vgold).sum()),
                "virtual_accuracy": float((vres.classes == vsub.labels).mean()), "virtual_retries": vres.retries + (spk.retries if spk else 0),
                **({"virtual_spike_mismatches_one_image": int(sum(spk_mm.values())),
                    "virtual_spike_values_one_image": int(spk.stream.size)} if spk else {}),
                # CLASSIFY exchanges on the virtual line (request sent to RESULT received), median
                "link_cycles_per_image": float(np.median(vb.exchanges[1 : 1 + n_virt])) if len(vb.exchanges) > n_virt else None,
            }  # fmt: skip
        sh = shared[sk]
        cyc = sh["cycles_mean"]
        per_image = image_cycles(tables, cyc)
        clk = r["clock_mhz"] * 1e6  # the core clock (the board's, or a PLL's)
        fmax = (r["fmax_mhz"] or 0) * 1e6
        # the link: request frames of these images (compact where T <= 128, as the runtime sends
        # them) and a RESULT answer, 10 bits a byte (8N1)
        def req(im: np.ndarray) -> bytes:
            if tables.T <= P.TIMES_T_MAX:
                return P.frame(P.CLASSIFY_TIMES, 0, P.times_payload(tables.input_table[im.reshape(-1)], tables.T))
            return P.frame(P.CLASSIFY, 0, im.tobytes())

        link_bytes = float(np.mean([len(req(im)) for im in test.images[:1000]]))
        link_bytes += len(P.frame(P.RESULT, 0, bytes(P.RESULT_LEN)))
        uart_s = link_bytes * 10 / r["baud"]
        runs.append({
            "board": board, "device": r["device"], "model": tables.name, "checkpoint": repo_path(model), "lanes": lanes, "T": tables.T,
            "dataset": args.dataset, "windows": tables.windows,
            "model_sha256_prefix": r["model_sha256_prefix"], "resources": r["resources"], "fmax_mhz": r["fmax_mhz"], "clock_mhz": clk / 1e6,
            "board_clock_mhz": r.get("board_clock_mhz"), "spikes": r.get("spikes"), "positions": pos, "read_reg": rr, **sh,
            "images_per_s_at_fmax": fmax / per_image if fmax else None,
            "images_per_s_at_board_clock": clk / per_image,
            "images_per_s_over_uart": 1 / (uart_s + per_image / clk), "baud": r["baud"],
            "images_per_s_end_to_end": clk / sh["link_cycles_per_image"] if sh.get("link_cycles_per_image") else None,
            "link_bytes_per_image": link_bytes,
            "build_seconds": r["build_seconds"], "memory_bits": r["memory_bits"],
        })  # fmt: skip
        log.info("%s", runs[-1])
    write_result("boards", {"runs": merge_runs("boards", runs, row_key, model_field="checkpoint")})
    import report

    report.render_docs()


if __name__ == "__main__":
    main()

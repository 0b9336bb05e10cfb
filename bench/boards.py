"""Boards: resources, Fmax, accuracy and images/s per board.

    python bench/boards.py [--runs icebreaker:bench/results/ice40_binary.pt:2,ulx3s:bench/results/mnist_binary.pt:2]
                           [--cycles-images 200] [--virtual-images 50]

For each board: build the bitstream (YoWASP), read utilisation and Fmax; accuracy of the
golden model on the whole test set; compute cycles per image from a Verilator run of the
same core (bit-exact check included) -> images/s at Fmax and at the board clock (compute
only, and with the pixels sent over UART at 115200 baud); the virtual board (core + UART
+ protocol in Verilator, host runtime over a pty) on a few images, classes compared.
Writes bench/results/boards.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.boards")
DEFAULT = f"icebreaker:{RESULTS / 'ice40_binary.pt'}:2,ulx3s:{RESULTS / 'mnist_binary.pt'}:2"


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=DEFAULT, help="BOARD:CHECKPOINT_OR_MODEL:LANES,...")
    ap.add_argument("--cycles-images", type=int, default=200)
    ap.add_argument("--virtual-images", type=int, default=50)
    args = ap.parse_args()

    import numpy as np

    from firstspike.boards.build import BOARDS, BuildError, build
    from firstspike.boards.runtime import BoardRuntime
    from firstspike.boards.virtual import VirtualBoard
    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import MAGIC, load
    from firstspike.sim.rtl import verify

    test = load_split("mnist", "test")
    runs = []
    for spec in args.runs.split(","):
        board, model, lanes = spec.rsplit(":", 2)
        lanes = int(lanes)
        with open(model, "rb") as f:
            tables = load(model) if f.read(len(MAGIC)) == MAGIC else quantize_checkpoint(model)[0]
        try:
            r = build(tables, board, ROOT / "build" / "boards-bench", lanes=lanes)
        except BuildError as e:  # a measured failure is a result too
            log.warning("%s", e)
            runs.append({"board": board, "model": tables.name, "lanes": lanes, "T": tables.T, "error": str(e)})
            continue
        golden = GoldenModel(tables).accuracy(test.images, test.labels)
        sub = test.head(args.cycles_images)
        rep = verify(tables, sub.images, sub.labels, sim="verilator", jobs=2, lanes=lanes, build_root=ROOT / "build" / "sim",
                     progress=False)  # fmt: skip
        cyc = float(rep.cycles.mean())
        load_cycles = tables.T + int(np.prod(tables.input_shape))
        clk = BOARDS[board].clock_hz
        fmax = (r["fmax_mhz"] or 0) * 1e6
        uart_s = int(np.prod(tables.input_shape)) * 10 / 115200 + 15 * 10 / 115200
        vsub = test.head(args.virtual_images)
        with VirtualBoard(tables, lanes=lanes, build_root=ROOT / "build" / "virtual") as vb, BoardRuntime(vb.port, timeout=30) as rt:
            vres = rt.run(vsub.images)
        vgold = GoldenModel(tables).classify(vsub.images)
        runs.append({
            "board": board, "device": r["device"], "model": tables.name, "lanes": lanes, "T": tables.T,
            "resources": r["resources"], "fmax_mhz": r["fmax_mhz"], "clock_mhz": clk / 1e6,
            "golden_accuracy": golden, "cycles_mean": cyc, "cycles_p99": float(np.percentile(rep.cycles, 99)),
            "rtl_mismatches": rep.total_mismatches, "rtl_images": rep.images,
            "images_per_s_at_fmax": fmax / (cyc + load_cycles) if fmax else None,
            "images_per_s_at_board_clock": clk / (cyc + load_cycles),
            "images_per_s_over_uart": 1 / (uart_s + (cyc + load_cycles) / clk),
            "virtual_images": len(vsub), "virtual_class_mismatches": int((vres.classes != vgold).sum()),
            "virtual_accuracy": float((vres.classes == vsub.labels).mean()), "virtual_retries": vres.retries,
            "build_seconds": r["build_seconds"], "memory_bits": r["memory_bits"],
        })  # fmt: skip
        log.info("%s", runs[-1])
    write_result("boards", {"runs": runs})
    import report

    report.render_docs()


if __name__ == "__main__":
    main()

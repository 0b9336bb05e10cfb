"""End to end on a virtual board, without building a bitstream: pixels in to class out.

    python bench/virtual_e2e.py [--model bench/results/mnist_binary.pt] [--lanes 64] [--positions 2]
                                [--clock-mhz 50] [--baud 3000000] [--images 50] [--spikes]

The board's core and UART link (as BoardTop builds them, protocol 3) run in Verilator behind a
pty at the UART divisor of the given core clock and baud rate; the host runtime classifies the
first test images over it (compact frames where T <= 128). Reports the median cycles of a
request/answer exchange, images/s end to end at that clock, and the classes against the golden
model. For a core option whose bitstream is not built (or not routed) yet; bench/boards.py does
the same after its build. Adds a row to bench/results/virtual_e2e.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, merge_runs, repo_path, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.virtual_e2e")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RESULTS / "mnist_binary.pt"), help="checkpoint or model file")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--lanes", type=int, default=64)
    ap.add_argument("--positions", type=int, default=1, choices=[1, 2])
    ap.add_argument("--clock-mhz", type=float, default=50.0, help="the core clock the UART divisor is computed for")
    ap.add_argument("--baud", type=int, default=3_000_000)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--spikes", action="store_true", help="with the spike readout (its pooled memories)")
    args = ap.parse_args()

    import numpy as np

    from firstspike.boards.runtime import BoardRuntime
    from firstspike.boards.virtual import VirtualBoard
    from firstspike.data import load_split
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import MAGIC, load

    with open(args.model, "rb") as f:
        tables = load(args.model) if f.read(len(MAGIC)) == MAGIC else quantize_checkpoint(args.model)[0]
    test = load_split(args.dataset, "test").head(args.images)
    divisor = Fraction(int(round(args.clock_mhz * 1e6))) / args.baud
    with VirtualBoard(tables, lanes=args.lanes, build_root=ROOT / "build" / "virtual", divisor=divisor, spikes=args.spikes,
                      positions=args.positions) as vb, BoardRuntime(vb.port, timeout=120) as rt:  # fmt: skip
        res = rt.run(test.images, tables=tables)
    exchanges = np.asarray(vb.exchanges[1 : 1 + args.images])  # filled when the simulation ends; the first is INFO
    golden = GoldenModel(tables).classify(test.images)
    link = float(np.median(exchanges))
    row = {"model": tables.name, "checkpoint": repo_path(args.model), "lanes": args.lanes, "positions": args.positions,
           "spikes": args.spikes, "clock_mhz": args.clock_mhz, "baud": args.baud, "uart_divisor": str(divisor),
           "images": args.images, "class_mismatches": int((res.classes != golden).sum()), "retries": res.retries,
           "accuracy_on_these_images": float((res.classes == test.labels).mean()), "link_cycles_per_image": link,
           "images_per_s_end_to_end": args.clock_mhz * 1e6 / link}  # fmt: skip
    log.info("%s", row)
    key = lambda r: (r["checkpoint"], r["lanes"], r["positions"], r["spikes"], r["clock_mhz"], r["baud"])  # noqa: E731
    write_result("virtual_e2e", {"runs": merge_runs("virtual_e2e", [row], key)})


if __name__ == "__main__":
    main()

"""Core cycle bounds: where the cycles of an image go, and what an event-driven core could reach.

    python bench/core_bounds.py [--runs icebreaker:bench/results/ice40_binary.pt:2,ulx3s:bench/results/mnist_binary.pt:16]
                                [--images 200]

Per model, on the first test images (golden model, exact integer network):
- synaptic updates: input spikes x valid fan-out x output channels (the work no core avoids);
- neuron updates of today's sweep: every neuron at every step (neurons x T);
- active neuron-steps: steps at which a neuron has not fired and its slope is > 0, the only
  ones at which it can cross (an event-driven core updates only these, and brings the
  others up to date when an event reaches them);
- cycle bounds at the board's lanes: today's sweep (``CorePlan.work``, layers side by side),
  the event-driven bound (synaptic updates + active neuron-steps, per layer, layers side by
  side: the slowest layer), and the measured cycles of bench/results/boards.json.
Writes bench/results/core_bounds.json and refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, merge_runs, repo_path, setup_logging, write_result  # noqa: E402

log = logging.getLogger("bench.core_bounds")
# block RAM per family: bits per block, widest port (iCE40 EBR 256 x 16; ECP5 DP16KD 512 x 36 pseudo-dual-port)
BLOCK_RAM = {"ice40": (4096, 16), "ecp5": (18432, 36)}
DEFAULT_RUNS = "icebreaker:bench/results/ice40_binary.pt:2,ulx3s:bench/results/mnist_binary.pt:64"


def _active_counter():
    import numba
    import numpy as np

    @numba.njit(cache=True)
    def active(tin, w, thr, T, stride, pad, Ho, Wo):  # noqa: C901 (the golden layer, counting)
        """Per image: neuron-steps with slope > 0 and not yet fired (the golden layer's integration)."""
        B, C, H, W = tin.shape
        Co, _, KH, KW = w.shape
        out = np.zeros(B, np.int64)
        for b in range(B):
            cur = np.zeros((Co, Ho, Wo), np.int64)
            pot = np.zeros((Co, Ho, Wo), np.int64)
            fired = np.zeros((Co, Ho, Wo), np.bool_)
            for t in range(T):
                if t > 0:
                    for c in range(C):
                        for y in range(H):
                            for x in range(W):
                                if tin[b, c, y, x] != t - 1:
                                    continue
                                for ky in range(KH):
                                    ny = y + pad - ky
                                    if ny < 0 or ny % stride != 0 or ny // stride >= Ho:
                                        continue
                                    for kx in range(KW):
                                        nx = x + pad - kx
                                        if nx < 0 or nx % stride != 0 or nx // stride >= Wo:
                                            continue
                                        for co in range(Co):
                                            cur[co, ny // stride, nx // stride] += w[co, c, ky, kx]
                for co in range(Co):
                    for oy in range(Ho):
                        for ox in range(Wo):
                            if not fired[co, oy, ox] and cur[co, oy, ox] > 0:
                                out[b] += 1
                            pot[co, oy, ox] += cur[co, oy, ox]
                            if pot[co, oy, ox] >= thr[co]:
                                fired[co, oy, ox] = True
        return out

    return active


def _step_model(tables, plan, layer_times: list, n: int):
    """Cycles per image of today's core, modelled per step and layer (events: one cycle per
    pass, valid kernel offset and output group, plus one per pass and three per event entry,
    where a pass is one spike, or with spike pairs one of the entry's low and one of its high
    lanes; integration: one cycle per state word, of one or, with position pairs, two
    neighbouring outputs (a pass then covers a word column); the slowest layer sets each step), and
    the same with *window skipping*: a pooling window whose lanes have all fired or have slope
    0 (and that no event of the step touched) costs one cycle instead of one per word. Returns
    (model, skip) arrays of shape (n,)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from firstspike.hw.plan import fan_out, fan_out_words

    T = tables.T
    now_l, skip_l = [], []
    for lp in plan.layers:
        w = torch.tensor(tables.layers[lp.index].weights.astype(np.float64)).reshape(lp.Co, lp.Ci, lp.KH, lp.KW)
        tin = torch.tensor(np.asarray(layer_times[lp.index]).reshape(n, lp.Ci, lp.H, lp.W).astype(np.int64))
        tout = torch.tensor(np.asarray(layer_times[lp.index + 1]).reshape(n, lp.Co, lp.Ho, lp.Wo).astype(np.int64))
        fy = np.array([f.n for f in fan_out(lp.H, lp.Ho, lp.KH, lp.stride, lp.pad)])
        # words an input reaches per kernel row: output columns, or with position pairs word columns
        fx = np.array([f.n for f in fan_out_words(lp.W, lp.Wo, lp.KW, lp.stride, lp.pad, lp.positions)])
        fan = np.outer(fy, fx)
        k, G, L = lp.pool, lp.groups, lp.lanes
        kk = k * k // lp.positions  # words per pooling window
        PY, PX = -(-lp.Ho // k), -(-lp.Wo // k)
        ones = torch.ones(1, lp.Ci, lp.KH, lp.KW, dtype=torch.float64)
        Gi, Li = lp.in_groups, lp.in_lanes
        now, skip = np.zeros((n, T)), np.zeros((n, T))
        live_prev = None
        for t in range(T):
            sp = tin == t - 1
            ev = np.zeros(n)
            if t > 0:
                spn = sp.numpy()
                padded = np.zeros((n, Gi * Li, lp.H, lp.W), bool)
                padded[:, : lp.Ci] = spn
                lanes_in = padded.reshape(n, Gi, Li, lp.H, lp.W)
                entries = lanes_in.any(axis=2).sum(axis=(1, 2, 3))
                if lp.pairs:  # a pass takes one spike of the entry's low lanes and one of its high lanes
                    h = lp.pair_split
                    passes = np.maximum(lanes_in[:, :, :h].sum(axis=2), lanes_in[:, :, h:].sum(axis=2))
                else:
                    passes = lanes_in.sum(axis=2)
                ev = (passes * fan[None, None]).sum(axis=(1, 2, 3)) * G + passes.sum(axis=(1, 2, 3)) + 3 * entries
            slope = F.conv2d((tin <= t - 1).double(), w, stride=lp.stride, padding=lp.pad)
            live = (tout > t) & (slope != 0)  # can still cross, and V moves
            lv = torch.zeros(n, G * L, PY * k, PX * k, dtype=torch.bool)
            lv[:, : lp.Co, : lp.Ho, : lp.Wo] = live
            lvw = lv.reshape(n, G, L, PY, k, PX, k).any(dim=2).any(dim=3).any(dim=4)
            touched = F.conv2d(sp.double(), ones, stride=lp.stride, padding=lp.pad)[:, 0] > 0
            tc = torch.zeros(n, PY * k, PX * k, dtype=torch.bool)
            tc[:, : lp.Ho, : lp.Wo] = touched
            tcw = tc.reshape(n, PY, k, PX, k).any(dim=2).any(dim=3)[:, None].expand(n, G, PY, PX)
            windows = G * PY * PX
            visited = np.full(n, windows) if t == 0 or lp.last else (live_prev | tcw).sum(dim=(1, 2, 3)).numpy()
            now[:, t] = ev + windows * kk + 4
            skip[:, t] = ev + visited * kk + (windows - visited) + 4
            live_prev = lvw
        now_l.append(now)
        skip_l.append(skip)
    return np.max(now_l, axis=0).sum(axis=1), np.max(skip_l, axis=0).sum(axis=1)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated board:model:lanes")
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()

    import numpy as np

    from firstspike.boards.build import BOARDS
    from firstspike.boards.link import model_hash
    from firstspike.data import load_split
    from firstspike.hw.plan import plan_core
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import MAGIC, load

    active = _active_counter()
    test = load_split("mnist", "test").head(args.images)
    boards = json.loads((RESULTS / "boards.json").read_text()).get("runs", []) if (RESULTS / "boards.json").is_file() else []
    runs = []
    for spec in args.runs.split(","):
        board, model, lanes = spec.split(":")
        lanes, model = int(lanes), str(ROOT / model) if not Path(model).is_absolute() else model
        with open(model, "rb") as f:
            tables = load(model) if f.read(len(MAGIC)) == MAGIC else quantize_checkpoint(model)[0]
        g = GoldenModel(tables).run(test.images)
        pos = BOARDS[board].positions if board in BOARDS else 1
        plan = plan_core(tables, lanes=lanes, debug=False, positions=pos)
        work = plan.work(g.layer_times)
        T, n = tables.T, len(test)
        layers = []
        for lp, syn in zip(plan.layers, work["layer_synaptic_updates"]):
            ly = tables.layers[lp.index]
            tin = np.ascontiguousarray(g.layer_times[lp.index]).astype(np.int32)
            act = active(tin, ly.weights.astype(np.int64), ly.thresholds.astype(np.int64), T, lp.stride, lp.pad, lp.Ho, lp.Wo)
            layers.append({"layer": lp.index, "neurons": lp.Co * lp.Ho * lp.Wo, "synaptic_updates": float(syn.mean()),
                           "sweep_neuron_updates": lp.Co * lp.Ho * lp.Wo * T, "active_neuron_steps": float(act.mean()),
                           "event_cycles": float((syn + act).mean()) / (lp.lanes * lp.positions)})  # fmt: skip
        # the build of these tables at the board's default positions (not another model at that path, nor another core)
        sha = model_hash(tables).hex()
        meas = next((r for r in boards if r.get("board") == board and r.get("lanes") == lanes and "cycles_mean" in r
                     and r.get("model_sha256_prefix") == sha and (r.get("positions") or 1) == pos), None)  # fmt: skip
        ev = max(ly_["event_cycles"] for ly_ in layers)
        mcyc, skip = _step_model(tables, plan, g.layer_times, n)
        # block-RAM bandwidth: every synaptic update and active neuron-step reads and writes one
        # neuron's state (slope, potential, time); each block RAM moves one port width in and one out a cycle
        bits = max(lp.lane_bits + plan.time_bits for lp in plan.layers)
        moved = sum(ly_["synaptic_updates"] + ly_["active_neuron_steps"] for ly_ in layers)
        b = BOARDS.get(board)
        block_bits, port_bits = BLOCK_RAM[b.family] if b else (None, None)
        runs.append({
            "board": board, "model": tables.name, "checkpoint": repo_path(model), "lanes": lanes, "T": T, "images": n,
            "layers": layers, "sweep_bound_cycles": float(work["cycle_bound_concurrent"].mean()),
            "event_bound_cycles": ev, "event_bound_sequential_cycles": sum(ly_["event_cycles"] for ly_ in layers),
            "measured_cycles": meas["cycles_mean"] if meas else None, "clock_mhz": meas["clock_mhz"] if meas else None,
            "measured_early_exit": bool(meas.get("early_exit")) if meas else None,
            "model_cycles": float(mcyc.mean()), "window_skip_cycles": float(skip.mean()),
            "state_bits_per_neuron": int(bits),
            "bram_bandwidth_bound_cycles": moved * bits / (b.bram_bits / block_bits * port_bits) if b else None,
        })  # fmt: skip
        log.info("%s", runs[-1])
    write_result("core_bounds", {"runs": merge_runs("core_bounds", runs, lambda r: (r["board"], r["lanes"]))})
    import report

    report.render_docs()


if __name__ == "__main__":
    main()

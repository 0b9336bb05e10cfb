"""Sizing of the core from the model tables: every width and depth, checked before any HDL.

A model that the core cannot build with the chosen parameters raises ``HardwareError`` here,
at generation time, with what to change; the Amaranth code in ``core.py`` only reads a plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from firstspike.errors import FirstSpikeError
from firstspike.quantize.modelfile import ModelTables, potential_range, signed_bits


class HardwareError(FirstSpikeError):
    """A model that cannot be built into a core with the chosen parameters."""


def ubits(n: int) -> int:
    """Unsigned width holding every value 0..n (at least 1)."""
    return max(1, int(n).bit_length())


def idx_bits(n: int) -> int:
    """Unsigned width of an index 0..n-1 (at least 1)."""
    return max(1, int(n - 1).bit_length())


@dataclass
class FanOut:
    """For one input coordinate: the valid kernel offsets, as (first kernel index, count,
    first output coordinate); output coordinate decreases by 1 per kernel step of ``stride``."""

    k0: int
    n: int
    o0: int


def fan_out(size_in: int, size_out: int, k: int, stride: int, pad: int) -> list[FanOut]:
    rows = []
    for y in range(size_in):
        ks = [ky for ky in range(k) if (y + pad - ky) >= 0 and (y + pad - ky) % stride == 0 and (y + pad - ky) // stride < size_out]
        rows.append(FanOut(ks[0], len(ks), (y + pad - ks[0]) // stride) if ks else FanOut(0, 0, 0))
    return rows


def fan_out_words(size_in: int, size_out: int, k: int, stride: int, pad: int, positions: int) -> list[FanOut]:
    """``fan_out`` over state words of ``positions`` neighbouring outputs (stride 1 when more than one): per
    input coordinate the word columns it reaches, as (weight column of the first word, count,
    first word column); the word column decreases by 1 and the weight column grows by
    ``positions`` per step (``LayerPlan.weight_words``: column c, position p = kernel column c - p)."""
    if positions == 1:
        return fan_out(size_in, size_out, k, stride, pad)
    assert stride == 1, "position pairs need stride 1 (position_pairs_fit)"
    rows = []
    for f in fan_out(size_in, size_out, k, 1, pad):
        if f.n == 0:
            rows.append(f)
            continue
        hi, lo = f.o0 // positions, (f.o0 - (f.n - 1)) // positions  # outputs o0 .. o0 - n + 1
        rows.append(FanOut(f.k0 + f.o0 - hi * positions, hi - lo + 1, hi))
    return rows


@dataclass
class LayerPlan:
    """One spiking layer (conv or fc) and the pooling that follows it, if any."""

    index: int  # position in ModelTables.layers
    kind: str
    Ci: int
    H: int
    W: int
    Co: int
    Ho: int
    Wo: int
    KH: int
    KW: int
    stride: int
    pad: int
    weight_bits: int
    slope_bits: int
    potential_bits: int  # width of the state's potential field, which holds V - threshold (and of thresholds)
    lanes: int  # L: output channels updated per cycle
    groups: int  # G = ceil(Co / L)
    pool: int  # k of the min-pooling that follows (1: none)
    Hp: int
    Wp: int
    pool_index: int | None  # position of that pool layer in ModelTables.layers
    in_lanes: int  # lanes of the incoming event entries (1 for the input)
    in_groups: int  # groups of the incoming entries (input channels for the input)
    last: bool
    pairs: bool  # spike pairs: each cycle takes one spike of the entry's low lanes and one of its high lanes
    weights: np.ndarray = field(repr=False)  # (Co, Ci, KH, KW) int
    thresholds: np.ndarray = field(repr=False)  # (Co,) int
    positions: int = 1  # P: output positions (x, x+1) per state word, updated in the same cycle (1 or 2)
    split: bool = False  # with position pairs, the state in two memories (plan_core's split_state)
    read_reg: bool = False  # the state and weight reads are registered before the add (plan_core's read_reg)
    ramps: np.ndarray | None = field(default=None, repr=False)  # (Co,) int: layer windows' ramps (None: the shared window)
    window_start: int = 0  # with layer windows: the core's step at which this layer's inputs start (k T, k-th spiking layer)

    @property
    def split_state(self) -> bool:
        """With position pairs and ``split``, the state is two memories, slopes and (D, time):
        events write only the first, so the wide words need no write-data multiplexer (fewer
        LUTs; off by default: docs/hardware.md, "Position pairs")."""
        return self.positions > 1 and self.split

    @property
    def Wq(self) -> int:
        """State words per output row (Wo / positions)."""
        return self.Wo // self.positions

    @property
    def kx_cols(self) -> int:
        """Weight columns per kernel row in the weight memory: KW, or with position pairs KW + 1
        (column c holds the weights of kernel columns c and c - 1, for the word's two positions)."""
        return self.KW + (self.positions - 1)

    def weight_depth(self, channels: int) -> int:
        return channels * self.KH * self.kx_cols * self.groups

    @property
    def lane_bits(self) -> int:
        return self.slope_bits + self.potential_bits

    def state_lane(self, time_bits: int) -> tuple[int, int]:
        """(bits of one neuron in a state word, its spike time's offset in them): (slope, D, time),
        or (D, time) in the state memory of a split layer (its slopes are in a memory of their own)."""
        sb, pb = self.slope_bits, self.potential_bits
        return (pb + time_bits, pb) if self.split_state else (sb + pb + time_bits, sb + pb)

    @property
    def words(self) -> int:
        return self.groups * self.Ho * self.Wq

    @property
    def entries_per_step(self) -> int:
        """Most event entries this layer can emit in one step (one per pooled word)."""
        return self.groups * self.Hp * self.Wp

    @property
    def pair_split(self) -> int:
        """With spike pairs: the incoming entry's lanes below this index form the low half."""
        return (self.in_lanes + 1) // 2

    def weight_channels(self) -> list[list[int]]:
        """The input channels of each weight memory, in address order: one memory of all
        channels, or with spike pairs two, of the entries' low and high lanes (channel
        g * in_lanes + j; a channel past Ci, in a partial last group, holds zeros)."""
        if not self.pairs:
            return [list(range(self.Ci))]
        h, Li = self.pair_split, self.in_lanes
        return [[g * Li + j for g in range(self.in_groups) for j in range(lo, hi)] for lo, hi in ((0, h), (h, Li))]

    def weight_words(self, channels: list[int] | None = None) -> list[int]:
        """Weight memory: one word per (ci, ky, column, group) for ci in ``channels`` (default
        all, in order); position p (0 .. P-1) of column c holds kernel column c - p (zeros
        outside the kernel: the core adds nothing there), lane j = output channel g*L + j, at
        bit (p*L + j) * weight_bits; binary: bit 1 = +1; fixed-point: two's complement."""
        L, G, wb, P = self.lanes, self.groups, self.weight_bits, self.positions
        words = []
        for ci in range(self.Ci) if channels is None else channels:
            if ci >= self.Ci:
                words.extend([0] * (self.KH * self.kx_cols * G))
                continue
            for ky in range(self.KH):
                for c in range(self.kx_cols):
                    for g in range(G):
                        word = 0
                        for p in range(P):
                            kx = c - p
                            if not 0 <= kx < self.KW:
                                continue
                            for j in range(L):
                                co = g * L + j
                                if co >= self.Co:
                                    continue
                                w = int(self.weights[co, ci, ky, kx])
                                v = (1 if w > 0 else 0) if wb == 1 else (w & ((1 << wb) - 1))
                                word |= v << ((p * L + j) * wb)
                        words.append(word)
        return words


@dataclass
class CorePlan:
    name: str
    T: int
    input_shape: tuple[int, int, int]
    input_table: list[int]
    layers: list[LayerPlan]
    lanes: int
    debug: bool
    early_exit: bool  # stop at the first output spike (with the debug port: per image, Core.exit_early)
    silent_margin: bool = True  # no output fired: argmax of V(T-1) - threshold (model file "max-margin"), else of V(T-1)
    window_skip: bool = True  # hidden layers with pooling skip idle pooling windows (one cycle each)
    spike_pairs: bool = True  # layers fed by multi-lane event entries take two spikes a cycle (LayerPlan.pairs)
    positions: int = 1  # output positions per state word where a layer allows it (LayerPlan.positions)

    @property
    def time_bits(self) -> int:
        return ubits(self.T)

    @property
    def windowed(self) -> bool:
        """Layer windows (model file "windows": "ramp"): the k-th spiking layer takes its inputs'
        events in steps k T .. (k+1) T and fires in steps (k+1) T .. (k+2) T - 1 (hw/layer.py)."""
        return self.layers[0].ramps is not None

    @property
    def steps(self) -> int:
        """The core's steps per image: T, or with layer windows (spiking layers + 1) x T."""
        return (len(self.layers) + 1) * self.T if self.windowed else self.T

    @property
    def step_bits(self) -> int:
        """Width of the core's step counter (0 .. steps - 1)."""
        return idx_bits(self.steps)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].Co

    @property
    def n_inputs(self) -> int:
        C, H, W = self.input_shape
        return C * H * W

    def input_fields(self) -> tuple[int, int, int]:
        """Bits of a pixel's x, y and channel in the input buckets (no channel bits for C = 1)."""
        C, H, W = self.input_shape
        return idx_bits(W), idx_bits(H), (idx_bits(C) if C > 1 else 0)

    @property
    def input_packed(self) -> bool:
        """The input buckets' nodes are addressed by the pixel's (c, y, x) bit fields, so a
        node holds only its next pointer; else by the pixel's index, with (c, y, x) stored.
        Whichever takes fewer bits (28x28: 1,024 x 11 instead of 784 x 22 bits)."""
        ab = sum(self.input_fields())
        n = self.n_inputs
        return (1 << ab) * (ab + 1) <= n * (ab + idx_bits(n) + 1)

    @property
    def input_node_addr_bits(self) -> int:
        """Width of a node address (= a bucket pointer)."""
        return sum(self.input_fields()) if self.input_packed else idx_bits(self.n_inputs)

    @property
    def input_nodes_shape(self) -> tuple[int, int]:
        """(depth, width) of the input buckets' node memory: a packed node is its next pointer
        (and valid bit); an indexed one also holds the pixel's (c, y, x)."""
        ab = self.input_node_addr_bits
        if self.input_packed:
            return 1 << ab, ab + 1
        C, H, W = self.input_shape
        return self.n_inputs, idx_bits(C) + idx_bits(H) + idx_bits(W) + ab + 1

    def readout_segments(self) -> list[tuple[str, tuple[int, int, int]]]:
        """The debug stream's order: (name, shape) of each block of values, each in (c, y, x)
        order: the input spike times, every layer's spike times (pooling included), then the
        output layer's potentials V(T-1). This is GoldenModel.run's layer_times order."""
        segs = [("input", tuple(self.input_shape))]
        for lp in self.layers:
            segs.append((f"layer{lp.index}", (lp.Co, lp.Ho, lp.Wo)))
            if lp.pool_index is not None:
                segs.append((f"layer{lp.pool_index}", (lp.Co, lp.Hp, lp.Wp)))
        segs.append(("v_last", (self.num_classes, 1, 1)))
        return segs

    @property
    def debug_lanes(self) -> int:
        """Values per debug beat: the widest memory word's lanes."""
        return max([1, *(lp.lanes for lp in self.layers)])

    def debug_words(self) -> list[tuple[str, tuple[int, int, int], int, int]]:
        """Per readout segment: (name, shape, lanes, beats); beats = groups x H x W."""
        C = self.input_shape[0]
        out = []
        lanes = {"input": (1, C)}
        for lp in self.layers:
            lanes[f"layer{lp.index}"] = (lp.lanes, lp.groups)
            if lp.pool_index is not None:
                lanes[f"layer{lp.pool_index}"] = (lp.lanes, lp.groups)
        lanes["v_last"] = (self.layers[-1].lanes, self.layers[-1].groups)
        for name, shape in self.readout_segments():
            L, G = lanes[name]
            out.append((name, shape, L, G * shape[1] * shape[2]))
        return out

    def unpack_debug(self, beats: np.ndarray) -> np.ndarray:
        """(N, beats, debug_lanes) int values of the debug stream -> (N, values) in
        GoldenModel.run order: each segment's (c, y, x) order, c = group * lanes + lane."""
        n = beats.shape[0]
        parts, o = [], 0
        for _name, (c, h, w), L, nb in self.debug_words():
            G = nb // (h * w)
            blk = beats[:, o : o + nb, :L].reshape(n, G, h, w, L).transpose(0, 1, 4, 2, 3).reshape(n, G * L, h, w)
            parts.append(blk[:, :c].reshape(n, -1))
            o += nb
        return np.concatenate(parts, axis=1)

    def debug_beats(self) -> int:
        return sum(nb for *_r, nb in self.debug_words())

    def beats_from_ints(self, words: list[int]) -> np.ndarray:
        """Debug beats as integers -> (len, debug_lanes) signed values."""
        DL = self.debug_lanes
        buf = b"".join(int(w).to_bytes(4 * DL, "little") for w in words)
        return np.frombuffer(buf, dtype="<i4").reshape(len(words), DL).astype(np.int64)

    def work(self, layer_times: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per image, the work the core cannot avoid (GoldenModel.run layer_times in):
        synaptic updates (input spikes x valid fan-out x output channels; per layer in
        ``layer_synaptic_updates``, in the order of ``layers``), neuron updates
        (neurons x T), and two lower bounds on cycles:

        * ``cycle_bound``: sum over layers of (synaptic updates + neuron updates) / (lanes x
          positions), the neurons a cycle updates (layers one after the other);
        * ``cycle_bound_concurrent``: sum over steps of the slowest layer's
          (synaptic updates of that step + neuron updates of that step) / lanes, the bound
          for layers that run side by side, as this core's do."""
        n = layer_times[0].shape[0]
        T = self.T
        win = self.windowed
        steps = self.steps
        syn = np.zeros(n, np.int64)
        layer_syn = np.zeros((len(self.layers), n), np.int64)
        neur = np.zeros(n, np.int64)
        bound = np.zeros(n)
        per_step = np.zeros((len(self.layers), n, steps))
        for li, lp in enumerate(self.layers):
            tin = layer_times[lp.index].reshape(n, lp.Ci, lp.H, lp.W)
            fy = np.array([f.n for f in fan_out(lp.H, lp.Ho, lp.KH, lp.stride, lp.pad)])
            fx = np.array([f.n for f in fan_out(lp.W, lp.Wo, lp.KW, lp.stride, lp.pad)])
            fan = np.broadcast_to(np.outer(fy, fx)[None], tin.shape[1:]).reshape(-1).astype(np.float64)
            flat = tin.reshape(n, -1).astype(np.int64)
            idx = (np.arange(n)[:, None] * (T + 1) + flat).reshape(-1)
            by_t = np.bincount(idx, weights=np.broadcast_to(fan, flat.shape).reshape(-1), minlength=n * (T + 1)).reshape(n, T + 1)
            s = by_t[:, :T].sum(axis=1) * lp.Co  # spikes at time T are silence
            # steps that integrate: T, or with layer windows T + 1 (the window's first step, then the firing window)
            u = lp.Co * lp.Ho * lp.Wo * (T + 1 if win else T)
            syn += s.astype(np.int64)
            layer_syn[li] = s
            neur += u
            per_cycle = lp.lanes * lp.positions
            bound += (s + u) / per_cycle
            # step t integrates all neurons and takes the events of step t-1 (from the layer's window start)
            t0, last_ev = lp.window_start, T if win else T - 1  # events of step T-1 land at step T in a window
            per_step[li, :, t0 + 1 : t0 + last_ev + 1] = by_t[:, :last_ev] * lp.Co / per_cycle
            for a, b in ((t0, t0 + 1), (t0 + T, t0 + 2 * T)) if win else ((0, T),):
                per_step[li, :, a:b] += lp.Co * lp.Ho * lp.Wo / per_cycle
        return {"synaptic_updates": syn, "layer_synaptic_updates": layer_syn, "neuron_updates": neur, "cycle_bound": bound,
                "cycle_bound_concurrent": per_step.max(axis=0).sum(axis=1)}  # fmt: skip

    def summary(self) -> dict:
        """Widths, memories and bits: what `firstspike hw` writes next to the Verilog."""
        mems = []
        tb = self.time_bits
        n = self.n_inputs
        mems.append({"name": "input.heads", "depth": self.T, "width": self.input_node_addr_bits + 1})
        depth, width = self.input_nodes_shape
        mems.append({"name": "input.nodes", "depth": depth, "width": width})
        if self.debug:
            mems.append({"name": "input.times", "depth": n, "width": tb})
        for lp in self.layers:
            p = f"layer{lp.index}"
            chans = lp.weight_channels()
            for k, cs in enumerate(chans):
                suffix = ("_lo", "_hi")[k] if len(chans) > 1 else ""
                mems.append({"name": f"{p}.weights{suffix}", "depth": lp.weight_depth(len(cs)),
                             "width": lp.positions * lp.lanes * lp.weight_bits})  # fmt: skip
            n = lp.positions * lp.lanes
            if lp.split_state:
                mems.append({"name": f"{p}.slopes", "depth": lp.words, "width": n * lp.slope_bits})
            mems.append({"name": f"{p}.state", "depth": lp.words, "width": n * lp.state_lane(tb)[0]})
            if not lp.last:
                w = idx_bits(lp.groups) + idx_bits(lp.Hp) + idx_bits(lp.Wp) + lp.lanes
                mems.append({"name": f"{p}.events", "depth": 2 * lp.entries_per_step, "width": w})
        for mm in mems:
            mm["bits"] = mm["depth"] * mm["width"]
        layers = []
        for lp in self.layers:
            d = {k: v for k, v in asdict(lp).items() if k not in ("weights", "thresholds", "ramps")}
            layers.append(d)
        return {
            "name": self.name,
            "T": self.T,
            "input_shape": list(self.input_shape),
            "lanes": self.lanes,
            "debug": self.debug,
            "early_exit": self.early_exit,
            "silent_margin": self.silent_margin,
            "window_skip": self.window_skip,
            "spike_pairs": self.spike_pairs,
            "positions": self.positions,
            "time_bits": tb,
            "windows": "ramp" if self.windowed else "off",
            "steps": self.steps,
            "layers": layers,
            "memories": mems,
            "memory_bits": sum(mm["bits"] for mm in mems),
            # layer windows with k-bit weights add w (T - t_i): one multiplier per neuron of a state
            # word (hw/layer.py, times_k; the ECP5 maps each to a MULT18X18D, the iCE40 to LUTs)
            "multipliers": sum(lp.positions * lp.lanes for lp in self.layers if lp.ramps is not None and lp.weight_bits > 1),
            "readout": [{"name": s, "shape": list(sh)} for s, sh in self.readout_segments()],
        }


def position_pairs_fit(lp: LayerPlan) -> bool:
    """A layer can keep two output positions per state word: a hidden conv layer of stride 1
    whose min-pooling (k even) tiles its width, so a word never straddles two pooling windows."""
    return lp.kind == "conv" and not lp.last and lp.stride == 1 and lp.pool % 2 == 0 and lp.Wo % lp.pool == 0


def image_cycles(tables: ModelTables, compute_cycles: float) -> float:
    """Cycles per image on a board: the core's compute cycles plus streaming the pixels in
    (one per cycle) and clearing the T input buckets."""
    return compute_cycles + tables.T + int(np.prod(tables.input_shape))


def plan_core(tables: ModelTables, lanes: int = 16, debug: bool = True, early_exit: bool = False,
              max_memory_bits: int = 64_000_000, window_skip: bool = True, spike_pairs: bool = True,
              positions: int = 1, split_state: bool = False, read_reg: bool = False) -> CorePlan:  # fmt: skip
    """Size a core for ``tables``; raise HardwareError naming the problem and the fix. ``spike_pairs``:
    a layer fed by event entries of two or more lanes takes a spike of the entry's low and one of
    its high lanes in the same cycle (two weight memories, one state update with both weights).
    ``positions`` 2: every layer that allows it (``position_pairs_fit``) keeps two neighbouring
    output positions (x, x+1) per state word and updates both in one cycle (twice the adders and
    state width, fewer words: about 3/5 of the synaptic cycles of a 5-wide kernel, half the sweep);
    ``split_state``: those layers keep slopes and (D, time) in two memories (LayerPlan.split_state).
    ``read_reg``: every layer registers its state and weight reads before the add (one more
    pipeline stage, with forwarding of the two writes a read can miss: the block RAM's
    clock-to-out and its routing leave the read-add-write path; one more cycle a step)."""
    if not isinstance(lanes, int) or not 1 <= lanes <= 256:
        raise HardwareError(f"lanes={lanes!r}: choose 1..256 output channels per cycle")
    if tables.windows not in ("off", "ramp"):
        raise HardwareError(f"{tables.name}: layer windows {tables.windows!r} are not run by the core (it runs 'off' and 'ramp')")
    if positions not in (1, 2):
        raise HardwareError(f"positions={positions!r}: choose 1 or 2 output positions per state word")
    T = int(tables.T)
    if T < 2:
        raise HardwareError(f"T={T}: the core needs at least 2 time steps")
    ls = tables.layers
    if not ls or ls[0].kind == "pool":
        raise HardwareError("the first layer must be conv or fc: pooling the input image is not supported by the core")
    plans: list[LayerPlan] = []
    prev_lanes, prev_groups = 1, int(tables.input_shape[0])
    i = 0
    while i < len(ls):
        ly = ls[i]
        if ly.kind == "pool":
            raise HardwareError(f"layer {i}: two pooling layers in a row; merge them into one k x k pooling")
        pool, pidx = 1, None
        if i + 1 < len(ls) and ls[i + 1].kind == "pool":
            pool, pidx = ls[i + 1].kernel[0], i + 1
        Ci, H, W = ly.in_shape
        Co, Ho, Wo = ly.out_shape
        if ly.weight_bits < 1 or ly.slope_bits < 1 or ly.potential_bits < 2:
            raise HardwareError(f"layer {i}: missing accumulator widths in the model file; re-run `firstspike quantize`")
        L = min(lanes, Co)
        G = -(-Co // L)
        # the state holds D = V - threshold, so "V >= threshold" is D's sign bit after the add:
        # one carry chain between the state read and its write, not an add then a compare
        ramps = None if tables.windows == "off" else np.asarray(ly.ramps, dtype=np.int64)
        lo, hi = potential_range(np.asarray(ly.weights), T, ramps)
        thr = np.asarray(ly.thresholds, dtype=np.int64)
        pb = max(ly.potential_bits, signed_bits(int((lo - thr).min(initial=0)), int((hi - thr).max(initial=0))))
        sb = ly.slope_bits
        if ramps is not None:  # the slope field takes the ramp in the layer's own window
            sb = max(sb, signed_bits(0, int(ramps.max(initial=0))))
        last = pidx is None and i == len(ls) - 1 or pidx == len(ls) - 1
        lp = LayerPlan(
            index=i, kind=ly.kind, Ci=Ci, H=H, W=W, Co=Co, Ho=Ho, Wo=Wo, KH=ly.kernel[0], KW=ly.kernel[1],
            stride=ly.stride, pad=ly.padding, weight_bits=ly.weight_bits, slope_bits=sb,
            potential_bits=pb, lanes=L, groups=G, pool=pool, Hp=Ho // pool, Wp=Wo // pool,
            pool_index=pidx, in_lanes=prev_lanes, in_groups=prev_groups, last=last,
            pairs=spike_pairs and bool(plans) and prev_lanes >= 2,
            weights=np.asarray(ly.weights, dtype=np.int64), thresholds=thr, read_reg=read_reg,
            ramps=ramps, window_start=len(plans) * T if ramps is not None else 0,
        )
        if positions == 2 and position_pairs_fit(lp):
            lp.positions, lp.split = 2, split_state and ramps is None  # layer windows: events write D, one memory
        if pool > 1 and (lp.Hp < 1 or lp.Wp < 1):
            raise HardwareError(f"layer {pidx}: pooling {pool}x{pool} of a {Ho}x{Wo} map leaves nothing")
        plans.append(lp)
        prev_lanes, prev_groups = L, G
        i += 2 if pidx is not None else 1
    outl = plans[-1]
    if (outl.Ho, outl.Wo) != (1, 1) or outl.pool_index is not None:
        raise HardwareError("the output layer must be fc with a 1x1 output (one neuron per class)")
    if outl.Co < 1:
        raise HardwareError("the output layer has no neurons")
    plan = CorePlan(name=tables.name, T=T, input_shape=tuple(int(v) for v in tables.input_shape),
                    input_table=[int(v) for v in tables.input_table], layers=plans, lanes=lanes,
                    debug=debug, early_exit=early_exit,
                    silent_margin=tables.silent_margin, window_skip=window_skip, spike_pairs=spike_pairs,
                    positions=positions)  # fmt: skip
    bits = plan.summary()["memory_bits"]
    if bits > max_memory_bits:
        raise HardwareError(f"the core needs {bits / 1e6:.1f} Mbit of memories (limit {max_memory_bits / 1e6:.0f} Mbit): "
                            "use fewer channels, a smaller input or fewer lanes (wide words pad partial groups)")  # fmt: skip
    return plan

"""Rung: the generated core in Amaranth's own simulator (fast to start). Random networks
(hypothesis: geometry, pooling, lanes, ties, thresholds 0 / unreachable, fixed-point weights)
must equal the integer golden model on every spike time of every layer, the output
potentials and the class, with random stalls on all three streams. Plus the generator's
errors and outputs (`firstspike hw`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstspike.cli import main
from firstspike.hw.generate import generate
from firstspike.hw.plan import HardwareError, fan_out, fan_out_words, plan_core
from firstspike.quantize.golden import GoldenModel
from firstspike.quantize.modelfile import Layer, save
from firstspike.sim.pysim import run_pysim
from firstspike.sim.vectors import compare_streams, expected, random_images, random_tables


def check_core(tables, images, lanes: int, stall_seed: int | None, **plan_kw) -> None:
    plan = plan_core(tables, lanes=lanes, **plan_kw)
    got = run_pysim(plan, images, stall_seed=stall_seed)
    want = expected(tables, images)
    assert compare_streams(tables, got.stream, want.stream) == {k: 0 for k in compare_streams(tables, want.stream, want.stream)}
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.times, want.first_time)
    np.testing.assert_array_equal(got.fired, want.first_time < tables.T)
    assert (got.cycles > 0).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 8), stalls=st.booleans(), wbits=st.sampled_from([1, 1, 1, 4]),
       read_reg=st.booleans())
def test_core_equals_golden_random_networks(seed: int, lanes: int, stalls: bool, wbits: int, read_reg: bool) -> None:
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, weight_bits=wbits, max_channels=5, in_channels=int(rng.integers(1, 3)), hidden_fc=1)
    images = random_images(rng, 2, tables.input_shape)
    check_core(tables, images, lanes, seed if stalls else None, read_reg=read_reg)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 5), stalls=st.booleans(), wbits=st.sampled_from([1, 1, 4]),
       read_reg=st.booleans(), positions=st.sampled_from([1, 2]), pairs=st.booleans(), obits=st.sampled_from([None, None, 2, 3]))
def test_core_equals_golden_random_networks_with_layer_windows(seed: int, lanes: int, stalls: bool, wbits: int, read_reg: bool,
                                                               positions: int, pairs: bool, obits: int | None) -> None:  # fmt: skip
    """Layer windows with ramps (model file version 2): each layer takes its inputs in its own
    window of T steps and fires in the next; the core equals the golden model on every value,
    with a wider output layer too (``obits``: binary networks with a k-bit classifier)."""
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, T=int(rng.integers(2, 12)), side=int(rng.integers(5, 9)), weight_bits=wbits, max_channels=5,
                           in_channels=int(rng.integers(1, 3)), hidden_fc=1, windows=True,
                           out_weight_bits=obits if wbits == 1 else None)  # fmt: skip
    images = random_images(rng, 2, tables.input_shape)
    check_core(tables, images, lanes, seed if stalls else None, read_reg=read_reg, positions=positions, spike_pairs=pairs)


def test_layer_windows_skip_idle_pooling_windows_exactly() -> None:
    """With layer windows a layer has steps without events (its firing window): the idle
    pooling windows are still skipped, the first one's flag included (a regression: it was read
    before its index was reset), and every value equals the golden model's."""
    for seed in (4, 5):  # networks with a pooled first layer whose flags went stale
        rng = np.random.default_rng(seed)
        tables = random_tables(rng, windows=True, side=int(rng.integers(5, 9)), T=int(rng.integers(2, 12)),
                               weight_bits=int(rng.choice([1, 1, 4])))  # fmt: skip
        assert tables.layers[1].kind == "pool"
        images = random_images(rng, 3, tables.input_shape)
        lanes = int(rng.integers(1, 5))
        runs = {ws: run_pysim(plan_core(tables, lanes=lanes, window_skip=ws), images) for ws in (False, True)}
        want = expected(tables, images)
        for ws, got in runs.items():
            assert sum(compare_streams(tables, got.stream, want.stream).values()) == 0, ws
        assert (runs[True].cycles <= runs[False].cycles).all() and (runs[True].cycles < runs[False].cycles).any()


def test_layer_windows_early_exit() -> None:
    """Early exit with layer windows: the first output spike comes in the output layer's own
    window; the class and its step (relative to that window) equal the golden model's."""
    rng = np.random.default_rng(21)
    for _ in range(30):
        tables = random_tables(rng, windows=True, fire_bias=0.5, T=8)
        images = random_images(rng, 3, tables.input_shape)
        want = expected(tables, images)
        if (want.first_time < tables.T - 1).any():
            break
    full = run_pysim(plan_core(tables, lanes=2), images)
    early = run_pysim(plan_core(tables, lanes=2, debug=False, early_exit=True), images)
    for got in (full, early):
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_array_equal(got.times, want.first_time)
    assert (early.cycles <= full.cycles).all() and (early.cycles < full.cycles).any()


@pytest.mark.parametrize("pairs", [False, True])
def test_registered_reads_forward_the_writes_they_miss(pairs: bool) -> None:
    """With registered reads (``read_reg``) a state word can be read again two cycles after an
    update to it was read, before that update is written: an entry of several spikes into a
    layer with one group, whose fan-out is a single word (the fc output layer, or a conv input at
    a corner). Many spikes per entry (high thresholds reached by dense inputs, 8 lanes) make
    that common; the forwarded write must make every value equal the golden model's."""
    for seed in range(6):
        rng = np.random.default_rng(1000 + seed)
        tables = random_tables(rng, max_channels=5, in_channels=2, fire_bias=0.3)
        images = random_images(rng, 2, tables.input_shape)
        check_core(tables, images, 8, None, read_reg=True, spike_pairs=pairs)


def test_random_networks_cover_pooling_padding_stride_and_silence() -> None:
    """The generator behind the property test reaches the cases that matter."""
    seen = {"pool2": 0, "pool3": 0, "pad": 0, "stride2": 0, "silent_out": 0, "fired_out": 0, "thr0": 0,
            "rules_disagree": 0, "potential_rule": 0,  # silent images the two decision rules decide differently
            "packed_input": 0, "indexed_input": 0}  # the input buckets' two node layouts (CorePlan.input_packed)
    for seed in range(120):
        rng = np.random.default_rng(seed)
        t = random_tables(rng)
        for ly in t.layers:
            seen["pool2"] += ly.kind == "pool" and ly.kernel[0] == 2
            seen["pool3"] += ly.kind == "pool" and ly.kernel[0] == 3
            seen["pad"] += ly.kind == "conv" and ly.padding > 0
            seen["stride2"] += ly.kind == "conv" and ly.stride == 2
            seen["thr0"] += ly.kind != "pool" and bool((ly.thresholds == 0).any())
        packed = plan_core(t, lanes=1).input_packed
        seen["packed_input"] += packed
        seen["indexed_input"] += not packed
        imgs = random_images(rng, 2, t.input_shape)
        e = expected(t, imgs)
        seen["silent_out"] += int((e.first_time == t.T).sum())
        seen["fired_out"] += int((e.first_time < t.T).sum())
        v = GoldenModel(t).run(imgs, keep_times=False).v_last
        by_v, by_margin = v.argmax(1), (v - t.layers[-1].thresholds[None, :]).argmax(1)
        seen["rules_disagree"] += int(((e.first_time == t.T) & (by_v != by_margin)).sum())
        seen["potential_rule"] += int(t.decision["if_silent"] == "max-potential")
    # hidden fc layers (fc -> fc), as the property test draws them
    seen["hidden_fc"] = sum(any(ly.kind == "fc" for ly in random_tables(np.random.default_rng(s), hidden_fc=1).layers[:-1])
                            for s in range(40))  # fmt: skip
    assert all(v >= 3 for v in seen.values()), seen


def test_fan_out_tables_match_brute_force() -> None:
    for size in range(1, 9):
        for k in range(1, 5):
            for s in (1, 2, 3):
                for p in range(k):
                    out = (size + 2 * p - k) // s + 1
                    if out < 1:
                        continue
                    for y, f in enumerate(fan_out(size, out, k, s, p)):
                        pairs = [(ky, (y + p - ky) // s) for ky in range(k) if (y + p - ky) >= 0 and (y + p - ky) % s == 0 and (y + p - ky) // s < out]
                        assert f.n == len(pairs)
                        for i, (ky, oy) in enumerate(pairs):
                            assert (f.k0 + i * s, f.o0 - i) == (ky, oy)


def test_fan_out_over_position_pairs_matches_brute_force() -> None:
    """Words of two positions (x, x+1): each input reaches word columns o0, o0-1, ... and, in
    word column c, position p through kernel column k0 + 2i - p (valid ones only; the rest
    of the word's weights are outside the kernel)."""
    for size in range(1, 10):
        for k in range(1, 6):
            for p in range(k):
                out = size + 2 * p - k + 1
                if out < 2 or out % 2:
                    continue
                for x, f in enumerate(fan_out_words(size, out, k, 1, p, 2)):
                    want = {(x + p - kx, kx) for kx in range(k) if 0 <= x + p - kx < out}  # (output, kernel column)
                    got = [{(2 * (f.o0 - i) + pos, f.k0 + 2 * i - pos) for pos in range(2) if 0 <= f.k0 + 2 * i - pos < k}
                           for i in range(f.n)]  # fmt: skip
                    assert set().union(*got) == want and all(got)  # every word visited has a synapse
                    assert all(0 <= o < out for o, _ in set().union(*got))


def test_early_exit_same_class_fewer_cycles() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        tables = random_tables(rng, fire_bias=0.2)
        images = random_images(rng, 3, tables.input_shape)
        if (expected(tables, images).first_time < tables.T - 1).any():
            break
    full = run_pysim(plan_core(tables, lanes=4), images)
    early = run_pysim(plan_core(tables, lanes=4, debug=False, early_exit=True), images)
    want = GoldenModel(tables).classify(images)
    np.testing.assert_array_equal(early.classes, want)
    np.testing.assert_array_equal(full.classes, want)
    assert (early.cycles <= full.cycles).all() and (early.cycles < full.cycles).any()
    # with the debug port, early exit is chosen per image: those images take the early core's
    # cycles and stream nothing, the others run all T steps and stream every spike time
    ee = np.array([True, False, True])
    both = run_pysim(plan_core(tables, lanes=4, debug=True, early_exit=True), images, exit_early=ee, stall_seed=5)
    np.testing.assert_array_equal(both.classes, want)
    np.testing.assert_array_equal(both.cycles, np.where(ee, early.cycles, full.cycles))
    np.testing.assert_array_equal(both.stream, full.stream[~ee])


# ---- generator errors and outputs ---------------------------------------------------------
def _tables():
    return random_tables(np.random.default_rng(11), T=8, side=8)


@pytest.mark.parametrize("lanes", [0, -1, 1000])
def test_bad_lanes(lanes: int) -> None:
    with pytest.raises(HardwareError, match="lanes"):
        plan_core(_tables(), lanes=lanes)


def test_unbuildable_structures_are_refused() -> None:
    t2 = _tables()
    c, h, w = t2.input_shape
    t2.layers.insert(0, Layer(kind="pool", in_shape=(c, h, w), out_shape=(c, h // 2, w // 2), kernel=(2, 2), stride=2))
    with pytest.raises(HardwareError, match="first layer"):
        plan_core(t2)
    t3 = random_tables(np.random.default_rng(1))  # conv + pool + ...
    i = next(i for i, ly in enumerate(t3.layers) if ly.kind == "pool")
    ly = t3.layers[i]
    c, h, w = ly.out_shape
    t3.layers.insert(i + 1, Layer(kind="pool", in_shape=(c, h, w), out_shape=(c, h, w), kernel=(1, 1), stride=1))
    with pytest.raises(HardwareError, match="two pooling"):
        plan_core(t3)
    with pytest.raises(HardwareError, match="Mbit of memories"):
        plan_core(_tables(), max_memory_bits=100)


def test_generate_writes_verilog_and_summary(tmp_path: Path) -> None:
    t = _tables()
    model = save(t, tmp_path / "m.fsm")
    s = generate(model, tmp_path / "hw", lanes=3)
    v = (tmp_path / "hw" / "firstspike_core.v").read_text()
    assert "module firstspike_core" in v and "pix_ready" in v and "dbg_data" in v
    j = json.loads((tmp_path / "hw" / "core.json").read_text())
    assert j == json.loads(json.dumps(s))
    plan = plan_core(t, lanes=3)
    assert j["memory_bits"] == sum(m["depth"] * m["width"] for m in j["memories"])
    assert [r["name"] for r in j["readout"]] == [n for n, _ in plan.readout_segments()]
    ws = [m for m in j["memories"] if m["name"].endswith(".weights")]
    assert [m["width"] for m in ws] == [lp.lanes * lp.weight_bits for lp in plan.layers]


def test_cli_hw_errors_leave_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = save(_tables(), tmp_path / "m.fsm")
    out = tmp_path / "hw"
    assert main(["hw", str(model), "-o", str(out), "--lanes", "0"]) == 2
    assert not out.exists()
    bad = tmp_path / "bad.fsm"
    bad.write_bytes(model.read_bytes()[:-5])
    assert main(["hw", str(bad), "-o", str(out)]) == 2
    assert not out.exists()
    assert "checksum" in caplog.text or "truncated" in caplog.text
    assert main(["hw", str(model), "-o", str(out), "--lanes", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["core.json", "firstspike_core.v"]
    # early exit with the debug port: chosen per image by an input port
    assert main(["hw", str(model), "-o", str(tmp_path / "ee"), "--early-exit"]) == 0
    assert "input exit_early" in (tmp_path / "ee" / "firstspike_core.v").read_text()
    assert "exit_early" not in (out / "firstspike_core.v").read_text()


def test_priority_encoder_sub_block_exhaustive() -> None:
    """The lowest-set-lane encoder used by the event engines and the decision unit."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from firstspike.hw.decision import lowest_set

    n = 6
    m = Module()
    bits = Signal(n)
    out = lowest_set(m, bits, n, "low")
    seen = []

    async def bench(ctx) -> None:
        for v in range(1 << n):
            ctx.set(bits, v)
            seen.append((v, ctx.get(out)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(v, (v & -v).bit_length() - 1 if v else 0) for v in range(1 << n)]


def test_work_counts_every_synaptic_update() -> None:
    """CorePlan.work's synaptic updates, per layer and in total, against a brute-force count:
    every input spike (t < T) times the output positions its kernel reaches times the channels."""
    rng = np.random.default_rng(8)
    tables = random_tables(rng, side=9)
    images = random_images(rng, 4, tables.input_shape)
    times = GoldenModel(tables).run(images).layer_times
    plan = plan_core(tables, lanes=3, debug=False)
    work = plan.work(times)
    for lp, got in zip(plan.layers, work["layer_synaptic_updates"]):
        tin = times[lp.index].reshape(len(images), lp.Ci, lp.H, lp.W)
        want = np.zeros(len(images), np.int64)
        for b, c, y, x in zip(*np.nonzero(tin < tables.T)):
            for ky in range(lp.KH):
                for kx in range(lp.KW):
                    oy, ox = y + lp.pad - ky, x + lp.pad - kx
                    if oy % lp.stride == 0 and ox % lp.stride == 0 and 0 <= oy // lp.stride < lp.Ho and 0 <= ox // lp.stride < lp.Wo \
                            and oy >= 0 and ox >= 0:  # fmt: skip
                        want[b] += lp.Co
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(work["synaptic_updates"], work["layer_synaptic_updates"].sum(axis=0))
    assert work["synaptic_updates"].sum() > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 5), classes=st.integers(1, 11), margin=st.booleans())
def test_decision_unit_equals_the_rule(seed: int, lanes: int, classes: int, margin: bool) -> None:
    """The decision component alone, fed the output layer's words step by step (groups in
    order, random idle cycles between words), against the decision rule written in Python:
    earliest firing class (lowest on ties), else the largest V(T-1) - thr (or V(T-1))."""
    from amaranth.sim import Simulator

    from firstspike.hw.decision import Decision
    from firstspike.quantize.golden import decide

    rng = np.random.default_rng(seed)
    T, pb, G = int(rng.integers(2, 9)), 9, -(-classes // lanes)
    fire_t = np.where(rng.random(classes) < 0.3, rng.integers(0, T, classes), T)  # most images: nothing fires
    v = rng.integers(-(1 << (pb - 2)), 1 << (pb - 2), size=classes)
    v[rng.random(classes) < 0.3] = v[0]  # ties
    thr = rng.integers(0, 1 << (pb - 2), size=classes)  # the unit is fed V - thr (the core's state) and thr
    dut = Decision(lanes, G, classes, pb, 4, T, margin=margin)
    got = {}

    async def bench(ctx) -> None:
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for t in range(T):
            for g in range(G):
                for _ in range(int(rng.integers(0, 2))):
                    await ctx.tick()  # idle cycle
                cs = [g * lanes + j for j in range(lanes)]
                ctx.set(dut.words.valid, 1)
                ctx.set(dut.words.payload.group, g)
                ctx.set(dut.words.payload.t, t)
                ctx.set(dut.words.payload.fire, sum(1 << j for j, c in enumerate(cs) if c < classes and fire_t[c] == t))
                ctx.set(dut.words.payload.valid, sum(1 << j for j, c in enumerate(cs) if c < classes))
                for j, c in enumerate(cs):  # lanes past the last class carry junk the unit must ignore
                    ctx.set(dut.words.payload.dist[j], int(v[c] - thr[c]) if c < classes else (1 << (pb - 1)) - 1)
                    ctx.set(dut.words.payload.thr[j], int(thr[c]) if c < classes else 0)
                await ctx.tick()
                ctx.set(dut.words.valid, 0)
        waited = 0  # the argmax pipeline drains: busy until the result holds, at most `latency` cycles
        while ctx.get(dut.busy):
            await ctx.tick()
            waited += 1
        assert 0 < waited <= dut.latency
        got.update(fired=ctx.get(dut.fired), cls=ctx.get(dut.cls), time=ctx.get(dut.time))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = decide(fire_t[None], v[None], T, thr if margin else None)[0]
    assert got == {"fired": int(fire_t.min() < T), "cls": int(want), "time": int(min(fire_t.min(), T))}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 4), positions=st.sampled_from([1, 2]))
def test_layer_engine_alone_equals_golden(seed: int, lanes: int, positions: int) -> None:
    """One hidden layer's engine alone, fed its input entries step by step from a memory (the
    golden model's spikes of the layer before it, grouped into entries as that layer's engine
    emits them): the entries it emits for the next layer at every step (as sets: their order
    within a step is the engine's) and, at the end, every neuron's spike time in its state,
    read through the readout port, equal the golden model's."""
    from amaranth.hdl import Module, Signal, unsigned
    from amaranth.lib.memory import Memory
    from amaranth.sim import Simulator

    from firstspike.hw.core import _table
    from firstspike.hw.layer import LayerEngine

    rng = np.random.default_rng(seed)
    while True:  # a network with a hidden layer fed by another layer's entries
        tables = random_tables(rng, max_layers=2, max_channels=6, in_channels=int(rng.integers(1, 3)))
        plan = plan_core(tables, lanes=lanes, debug=True, positions=positions)
        if len(plan.layers) >= 3:
            break
    src, lp = plan.layers[0], plan.layers[1]
    T, L, PP = tables.T, lp.lanes, lp.positions
    image = random_images(rng, 1, tables.input_shape)
    times = GoldenModel(tables).run(image).layer_times
    t_in = times[lp.index][0]  # (Ci, H, W): the spikes of the layer before (after its pooling)
    t_out = times[(lp.pool_index if lp.pool_index is not None else lp.index) + 1][0]  # what this layer emits
    t_neur = times[lp.index + 1][0]  # every neuron of this layer

    def entries(tt: np.ndarray, lanes_: int, groups: int, step: int) -> set:
        return {(g, y, x, sum(1 << j for j in range(lanes_) if g * lanes_ + j < tt.shape[0] and tt[g * lanes_ + j, y, x] == step))
                for g in range(groups) for y in range(tt.shape[1]) for x in range(tt.shape[2])
                if any(g * lanes_ + j < tt.shape[0] and tt[g * lanes_ + j, y, x] == step for j in range(lanes_))}  # fmt: skip

    # the input: every step's entries in a memory, E_in per step
    E = src.entries_per_step
    xb, yb, gb = (len(f) for f in (Signal(range(max(2, src.Wp))), Signal(range(max(2, src.Hp))), Signal(range(max(2, src.groups)))))
    words, counts = [0] * (T * E), []
    for s in range(T):
        es = sorted(entries(t_in, src.lanes, src.groups, s))
        counts.append(len(es))
        for i, (g, y, x, mask) in enumerate(es):
            words[s * E + i] = x | y << xb | g << (xb + yb) | mask << (xb + yb + gb)
    m = Module()
    eng = LayerEngine(plan, lp, src)
    m.submodules.eng = eng
    mem = Memory(shape=unsigned(xb + yb + gb + src.lanes), depth=T * E, init=words)
    m.submodules.mem = mem
    rp = mem.read_port()
    t = Signal(range(T + 1))
    cnt = _table(counts, len(eng.events.count))
    m.d.comb += [eng.t.eq(t), rp.addr.eq((t - 1) * E + eng.events.addr), eng.events.data.as_value().eq(rp.data),
                 eng.events.count.eq(cnt[t - 1])]  # fmt: skip
    got_entries: dict[int, set] = {}
    got_times = np.full_like(t_neur, -1)

    async def bench(ctx) -> None:
        for s in range(T):
            ctx.set(t, s)
            ctx.set(eng.go, 1)
            await ctx.tick()
            ctx.set(eng.go, 0)
            n = 0
            while ctx.get(eng.busy):
                await ctx.tick()
                n += 1
                assert n < 100_000
            if s > 0:  # the entries of step s - 1 (the bank the next layer reads during step s)
                got = set()
                for i in range(ctx.get(eng.events_out.count)):
                    ctx.set(eng.events_out.addr, i)
                    await ctx.tick()
                    d = eng.events_out.data
                    got.add((ctx.get(d.g), ctx.get(d.y), ctx.get(d.x), ctx.get(d.mask)))
                got_entries[s - 1] = got
        seg = eng.segments()[f"layer{lp.index}"]
        ctx.set(eng.readout, 1)
        ctx.set(eng.ro_en, 1)
        for a in range(lp.words):
            ctx.set(eng.ro_addr, a)
            await ctx.tick()
            w = ctx.get(eng.state)
            g, rest = divmod(a, lp.Ho * lp.Wq)
            y, xq = divmod(rest, lp.Wq)
            for q in range(PP * L):
                pos, j = divmod(q, L)
                if g * L + j < lp.Co:
                    got_times[g * L + j, y, xq * PP + pos] = (w >> (q * seg.LW + seg.off)) & ((1 << seg.bits) - 1)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for s in range(T - 1):
        assert got_entries[s] == entries(t_out, L, lp.groups, s), f"step {s}"
    np.testing.assert_array_equal(got_times, t_neur)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(1, 3), time_input=st.booleans(), stalls=st.booleans())
def test_input_encoder_lists_every_spiking_pixel_once(seed: int, channels: int, time_input: bool, stalls: bool) -> None:
    """The input encoder alone, two images in a row (the second must not see the first's
    events): after ``loaded``, walking bucket t's list (head, then node by node) gives exactly
    the pixels whose spike time is t, each once, with their (c, y, x); the kept spike times
    are the table's (or the beat's own time); no pixel is taken while the buckets clear."""
    from amaranth.sim import Simulator

    from firstspike.hw.encoder import InputEncoder

    rng = np.random.default_rng(seed)
    tables = random_tables(rng, in_channels=channels, T=int(rng.integers(2, 40)))
    plan = plan_core(tables, lanes=1, debug=True)
    T, (C, H, W) = tables.T, tables.input_shape
    dut = InputEncoder(plan, time_input=time_input)
    lut = np.asarray(plan.input_table)
    images = [random_images(rng, 1, tables.input_shape)[0].reshape(-1) for _ in range(2)]
    got: list[tuple[dict, list]] = []

    async def bench(ctx) -> None:
        for img in images:
            flags = rng.random(img.size) < (0.5 if time_input else 0.0)
            beats = np.where(flags, rng.integers(0, T + 3, img.size), img)  # a time >= T: silent
            want_t = np.where(flags, np.minimum(beats, T), lut[img])
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            n, cycles, loaded = 0, 0, 0
            while n < img.size:
                stall = stalls and rng.random() < 0.3
                ctx.set(dut.pixels.valid, int(not stall))
                ctx.set(dut.pixels.payload.data, int(beats[n]))
                ctx.set(dut.pixels.payload.time, int(flags[n]))
                taken = ctx.get(dut.pixels.ready) and not stall
                loaded += ctx.get(dut.loaded)
                assert cycles >= T or not ctx.get(dut.pixels.ready)  # the T buckets clear first
                await ctx.tick()
                n, cycles = n + int(taken), cycles + 1
            ctx.set(dut.pixels.valid, 0)
            assert loaded == 0  # not before the last pixel is taken
            assert ctx.get(dut.loaded) == 1  # the cycle after it, once
            await ctx.tick()
            assert ctx.get(dut.loaded) == 0
            await ctx.tick()  # the last bucket write lands
            lists = {}
            for t in range(T):
                ctx.set(dut.lists.head_addr, t)
                await ctx.tick()
                ptr, more, lst = ctx.get(dut.lists.head.ptr), ctx.get(dut.lists.head.valid), []
                while more and len(lst) <= img.size:
                    ctx.set(dut.lists.node_addr, ptr)
                    await ctx.tick()
                    lst.append((ctx.get(dut.lists.node.c), ctx.get(dut.lists.node.y), ctx.get(dut.lists.node.x)))
                    ptr, more = ctx.get(dut.lists.node.next), ctx.get(dut.lists.node.more)
                lists[t] = lst
            kept = []
            ctx.set(dut.times_en, 1)
            for i in range(img.size):
                ctx.set(dut.times_addr, i)
                await ctx.tick()
                kept.append(ctx.get(dut.times))
            got.append((lists, kept, want_t))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for lists, kept, want_t in got:
        cyx = [(c, y, x) for c in range(C) for y in range(H) for x in range(W)]
        for t in range(T):
            assert sorted(lists[t]) == sorted(p for p, tt in zip(cyx, want_t) if tt == t)
        assert kept == [int(v) for v in want_t]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), positions=st.sampled_from([1, 2]), k=st.integers(1, 3), stalls=st.booleans())
def test_readout_component_streams_every_segment(seed: int, positions: int, k: int, stalls: bool) -> None:
    """The readout component alone, on memories of random words: a plain segment (signed
    values at an offset, with a per-group bias table), a state memory read position by position
    and the pooled segment over that same memory (the minimum over each window's words and
    positions), with random backpressure; beats, order and ``last`` against numpy."""
    from amaranth.hdl import Module, Signal, unsigned
    from amaranth.lib.memory import Memory
    from amaranth.sim import Simulator

    from firstspike.hw.core import _table
    from firstspike.hw.readout import Readout, Segment

    rng = np.random.default_rng(seed)
    L, G, tb = int(rng.integers(1, 4)), int(rng.integers(1, 3)), 4
    kk = 2 if positions == 2 else k  # a window of two positions is whole words
    Hp, Wp = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    Ho = Hp * kk + int(rng.integers(0, 2))  # rows past the last window are not pooled
    Wo = Wp * kk + (int(rng.integers(0, 2)) if positions == 1 else 0)
    Wq, LW, off = Wo // positions, 3 + tb, 3
    # memory A: G x 1 words of L signed 6-bit values at bit 1 of 8-bit lanes, plus a bias per group and lane
    a_words = rng.integers(0, 1 << (8 * L), size=G, dtype=np.uint64) if L < 8 else None
    a_words = [int(w) for w in a_words]
    bias = rng.integers(-20, 20, size=(G, L))
    # memory B: the state, G x Ho x Wq words of positions x L lanes of (3 junk bits, a time)
    times = rng.integers(0, 1 << tb, size=(G, Ho, Wq, positions, L))
    junk = rng.integers(0, 8, size=times.shape)
    b_words = []
    for g in range(G):
        for y in range(Ho):
            for x in range(Wq):
                w = 0
                for pos in range(positions):
                    for j in range(L):
                        w |= (int(junk[g, y, x, pos, j]) | int(times[g, y, x, pos, j]) << off) << ((pos * L + j) * LW)
                b_words.append(w)
    m = Module()
    ma = Memory(shape=unsigned(8 * L), depth=G, init=a_words)
    mb = Memory(shape=unsigned(positions * L * LW), depth=len(b_words), init=b_words)
    m.submodules.ma, m.submodules.mb = ma, mb
    ra, rb = ma.read_port(), mb.read_port()
    pa, pe = Signal.like(rb.addr), Signal()
    m.d.comb += [rb.addr.eq(pa), rb.en.eq(pe)]
    btab = _table([sum((int(bias[g, j]) & 0xFF) << (8 * j) for j in range(L)) for g in range(G)], 8 * L)
    segs = [Segment(ra, L, G, G * L, 1, 8, 1, 6, True, (btab, 8)),
            Segment((rb, pa, pe), L, G, G * L, Ho * Wo, LW, off, tb, False, positions=positions),
            Segment((rb, pa, pe), L, G, G * L, Hp * Wp * kk * (kk // positions), LW, off, tb, False, positions=positions,
                    window=(kk, Wq, Ho, Hp, Wp))]  # fmt: skip
    dut = Readout(segs, L)
    m.submodules.dut = dut
    # expected beats
    want = []
    for g in range(G):
        fields = [(a_words[g] >> (8 * j + 1)) & 63 for j in range(L)]
        want.append([(f - 64 if f >= 32 else f) + int(bias[g, j]) for j, f in enumerate(fields)])
    for g in range(G):
        for y in range(Ho):
            for x in range(Wq):
                want += [list(map(int, times[g, y, x, pos])) for pos in range(positions)]
    for g in range(G):
        for py in range(Hp):
            for px in range(Wp):
                win = times[g, py * kk : (py + 1) * kk, px * (kk // positions) : (px + 1) * (kk // positions)]
                want.append(list(map(int, win.reshape(-1, L).min(axis=0))))
    got, lasts, dones = [], [], []

    async def bench(ctx) -> None:
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.active, 1)
        for _ in range(20 * len(want) + 50):
            ready = not stalls or rng.random() < 0.6
            ctx.set(dut.beats.ready, ready)
            if ctx.get(dut.done):  # with the last beat's handshake
                dones.append(len(got) + 1)
            if ready and ctx.get(dut.beats.valid):
                d = ctx.get(dut.beats.payload.data)
                got.append([((d >> (32 * j)) & 0xFFFFFFFF) - ((d >> (32 * j + 31)) & 1) * (1 << 32) for j in range(L)])
                lasts.append(ctx.get(dut.beats.payload.last))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert lasts == [0] * (len(want) - 1) + [1] and dones == [len(want)]


def test_window_skipping_saves_cycles_and_changes_no_value() -> None:
    """Idle pooling windows (every neuron fired or at slope 0, no event this step) cost one
    cycle instead of k*k: the same spike times, potentials and classes as without, fewer
    cycles (the random property test above runs with skipping on, the default)."""
    rng = np.random.default_rng(1)  # conv 1x1 x5 -> pool 3x3 -> conv -> fc on 9x9
    tables = random_tables(rng, weight_bits=1, max_channels=5, in_channels=int(rng.integers(1, 3)))
    images = random_images(rng, 2, tables.input_shape)
    assert any(ly.kind == "pool" for ly in tables.layers)
    want = expected(tables, images)
    runs = {ws: run_pysim(plan_core(tables, lanes=1, window_skip=ws), images) for ws in (False, True)}
    for got in runs.values():
        assert compare_streams(tables, got.stream, want.stream) == {k: 0 for k in compare_streams(tables, want.stream, want.stream)}
        np.testing.assert_array_equal(got.classes, want.classes)
    assert (runs[True].cycles < runs[False].cycles).all(), (runs[True].cycles, runs[False].cycles)


def test_window_skipping_keeps_falling_potentials() -> None:
    """A neuron whose slope is negative for a while, then positive: its window must be visited
    while V falls (a core that skipped it would fire at step 10 instead of 13)."""
    from firstspike.quantize.modelfile import DECISIONS, ModelTables, accumulator_bounds

    T = 16
    conv_w = np.array([-2, 6], np.int32).reshape(1, 2, 1, 1)  # channel 0 at t=0 pulls down, channel 1 at t=8 up
    fc_w = np.array([1, -1], np.int32).reshape(2, 1, 1, 1)
    conv = Layer(kind="conv", in_shape=(2, 2, 2), out_shape=(1, 2, 2), kernel=(1, 1), stride=1, padding=0,
                 weights=conv_w, thresholds=np.array([4]), weight_bits=4)  # fmt: skip
    pool = Layer(kind="pool", in_shape=(1, 2, 2), out_shape=(1, 1, 1), kernel=(2, 2), stride=2)
    fc = Layer(kind="fc", in_shape=(1, 1, 1), out_shape=(2, 1, 1), kernel=(1, 1), stride=1, padding=0,
               weights=fc_w, thresholds=np.array([1, 1]), weight_bits=1)  # fmt: skip
    for ly in (conv, fc):
        ly.slope_bits, ly.potential_bits = accumulator_bounds(ly.weights, T)
    table = np.floor((255 - np.arange(256)) * T / 256).astype(np.int32)
    table[0] = T
    tables = ModelTables(name="falling", T=T, input_shape=(2, 2, 2), input_table=table, layers=[conv, pool, fc],
                         decision=dict(DECISIONS["margin"]))  # fmt: skip
    img = np.zeros((1, 2, 2, 2), np.uint8)
    img[0, 0, 0, 0], img[0, 1, 0, 0] = 255, 127  # spike times 0 and 8
    want = expected(tables, img)
    assert GoldenModel(tables).run(img).layer_times[1][0, 0, 0, 0] == 13
    got = run_pysim(plan_core(tables, lanes=1), img)
    assert compare_streams(tables, got.stream, want.stream) == {k: 0 for k in compare_streams(tables, want.stream, want.stream)}


def _paired_tables():
    """conv 1x1 x6 (channels j and j+3 fire at the same step: entries of two spikes, one in
    each half of the lanes) -> conv 5x5 x2 (25 offsets a spike: the slowest layer) -> fc 3."""
    T, rng = 16, np.random.default_rng(5)
    c0 = Layer(kind="conv", in_shape=(1, 6, 6), out_shape=(6, 6, 6), kernel=(1, 1), stride=1, padding=0,
               weights=np.ones((6, 1, 1, 1), np.int32), thresholds=np.array([1, 2, 3, 1, 2, 3]), weight_bits=1)  # fmt: skip
    c1 = Layer(kind="conv", in_shape=(6, 6, 6), out_shape=(2, 6, 6), kernel=(5, 5), stride=1, padding=2,
               weights=np.where(rng.random((2, 6, 5, 5)) < 0.6, 1, -1).astype(np.int32), thresholds=np.array([40, 60]),
               weight_bits=1)  # fmt: skip
    fc = Layer(kind="fc", in_shape=(2, 6, 6), out_shape=(3, 1, 1), kernel=(6, 6), stride=1, padding=0,
               weights=np.where(rng.random((3, 2, 6, 6)) < 0.5, 1, -1).astype(np.int32), thresholds=np.array([30, 30, 30]),
               weight_bits=1)  # fmt: skip
    return _binary_tables("paired", T, (1, 6, 6), [c0, c1, fc])


def _binary_tables(name: str, T: int, input_shape: tuple, layers: list):
    """Model tables of hand-built layers: their accumulator widths, the linear input table
    (pixel 0 silent), the margin decision rule."""
    from firstspike.quantize.modelfile import DECISIONS, ModelTables, accumulator_bounds

    for ly in layers:
        if ly.kind != "pool":
            ly.slope_bits, ly.potential_bits = accumulator_bounds(ly.weights, T)
    table = np.floor((255 - np.arange(256)) * T / 256).astype(np.int32)
    table[0] = T
    return ModelTables(name=name, T=T, input_shape=input_shape, input_table=table, layers=layers,
                       decision=dict(DECISIONS["margin"]))  # fmt: skip


def _position_tables(rng: np.random.Generator, wbits: int):
    """Conv layers whose min-pooling tiles an even width (both can take position pairs), one
    to two of them with random kernel, padding, channels, then fc: the cases of
    ``position_pairs_fit``, with thresholds drawn like ``random_tables``'."""
    from firstspike.quantize.modelfile import DECISIONS, ModelTables, accumulator_bounds, clip_thresholds

    T = int(rng.integers(3, 20))

    def layer(kind: str, ins: tuple, co: int, k: tuple, pad: int, out: tuple) -> Layer:
        if wbits == 1:
            w = np.where(rng.random((co, ins[0], *k)) < rng.uniform(0.3, 0.8), 1, -1)
        else:
            w = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), size=(co, ins[0], *k))
        fan = ins[0] * k[0] * k[1]
        thr = np.round(rng.normal(rng.uniform(0.05, 2) * np.sqrt(fan) * T / 4, T * np.sqrt(fan) / 4 + 1, size=co)).astype(np.int64)
        thr[rng.random(co) < 0.1] = 0
        thr = clip_thresholds(thr, w, T)
        ly = Layer(kind=kind, in_shape=ins, out_shape=out, kernel=k, stride=1, padding=pad, weights=w.astype(np.int32),
                   thresholds=thr, weight_bits=wbits)  # fmt: skip
        ly.slope_bits, ly.potential_bits = accumulator_bounds(ly.weights, T)
        return ly

    cur, layers = (int(rng.integers(1, 3)), int(rng.integers(4, 11)), int(rng.integers(4, 11))), []
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 6))
        if (cur[2] - k + 1) % 2:  # an even output width (padding keeps its parity)
            k = k + 1 if k < 5 else k - 1
        pad = int(rng.integers(0, k))
        ho, wo = cur[1] + 2 * pad - k + 1, cur[2] + 2 * pad - k + 1
        if wo < 2 or ho < 2:
            break
        co = int(rng.integers(1, 6))
        layers.append(layer("conv", cur, co, (k, k), pad, (co, ho, wo)))
        layers.append(Layer(kind="pool", in_shape=(co, ho, wo), out_shape=(co, ho // 2, wo // 2), kernel=(2, 2), stride=2))
        cur = (co, ho // 2, wo // 2)
    co = int(rng.integers(2, 5))
    layers.append(layer("fc", cur, co, (cur[1], cur[2]), 0, (co, 1, 1)))
    table = np.sort(rng.integers(0, T + 1, 256))[::-1].astype(np.int32)
    return ModelTables(name="positions", T=T, input_shape=(layers[0].in_shape), input_table=table, layers=layers,
                       decision=dict(DECISIONS["margin"]))  # fmt: skip


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 6), stalls=st.booleans(), wbits=st.sampled_from([1, 1, 4]),
       split=st.booleans(), read_reg=st.booleans())  # fmt: skip
def test_position_pairs_equal_golden_random_networks(seed: int, lanes: int, stalls: bool, wbits: int, split: bool,
                                                     read_reg: bool) -> None:  # fmt: skip
    """Two output positions per state word (``plan_core(positions=2)``, state in one memory or
    split in two, reads registered or not), on random networks whose conv layers all take them:
    every value equals the golden model's."""
    rng = np.random.default_rng(seed)
    tables = _position_tables(rng, wbits)
    assert all(lp.positions == 2 for lp in plan_core(tables, lanes=lanes, positions=2).layers[:-1])
    images = random_images(rng, 2, tables.input_shape)
    check_core(tables, images, lanes, seed if stalls else None, positions=2, split_state=split, read_reg=read_reg)


def test_spike_pairs_save_cycles_and_change_no_value() -> None:
    """Spike pairs (the default): a layer fed by multi-lane event entries takes one spike of
    the entry's low lanes and one of its high lanes a cycle (two weight memories, one state
    update with both weights). Every value equals the golden model's, as without pairs, in
    fewer cycles; the plan lists the two weight memories; the input layer (one spike an
    entry) does not pair. (The random property test above runs with pairs on.)"""
    tables = _paired_tables()
    images = np.random.default_rng(6).integers(0, 256, size=(3, 1, 6, 6)).astype(np.uint8)
    want = expected(tables, images)
    plans = {sp: plan_core(tables, lanes=6, spike_pairs=sp) for sp in (False, True)}
    assert [lp.pairs for lp in plans[True].layers] == [False, True, True]
    assert not any(lp.pairs for lp in plans[False].layers)
    names = [mm["name"] for mm in plans[True].summary()["memories"]]
    assert {"layer1.weights_lo", "layer1.weights_hi", "layer2.weights_lo", "layer2.weights_hi"} <= set(names)
    runs = {sp: run_pysim(plan, images, stall_seed=4) for sp, plan in plans.items()}
    for got in runs.values():
        assert compare_streams(tables, got.stream, want.stream) == {k: 0 for k in compare_streams(tables, want.stream, want.stream)}
        np.testing.assert_array_equal(got.classes, want.classes)
    assert (runs[True].cycles < runs[False].cycles).all(), (runs[True].cycles, runs[False].cycles)


def test_position_pairs_save_cycles_and_change_no_value() -> None:
    """positions=2: the pooled conv layers keep (x, x+1) in one state word (half the words,
    twice the width, weight columns KW + 1 of two positions); the output layer and a
    layer whose pooling does not tile an even width keep one. Same values as positions=1,
    fewer cycles on every image, with spike pairs on and off."""
    T, rng = 16, np.random.default_rng(8)
    c0 = Layer(kind="conv", in_shape=(1, 8, 8), out_shape=(6, 8, 8), kernel=(3, 3), stride=1, padding=1,
               weights=np.where(rng.random((6, 1, 3, 3)) < 0.7, 1, -1).astype(np.int32), thresholds=np.array([2, 4, 6, 3, 5, 7]),
               weight_bits=1)  # fmt: skip
    p0 = Layer(kind="pool", in_shape=(6, 8, 8), out_shape=(6, 4, 4), kernel=(2, 2), stride=2)
    c1 = Layer(kind="conv", in_shape=(6, 4, 4), out_shape=(2, 4, 4), kernel=(5, 5), stride=1, padding=2,
               weights=np.where(rng.random((2, 6, 5, 5)) < 0.6, 1, -1).astype(np.int32), thresholds=np.array([30, 50]),
               weight_bits=1)  # fmt: skip
    p1 = Layer(kind="pool", in_shape=(2, 4, 4), out_shape=(2, 2, 2), kernel=(2, 2), stride=2)
    fc = Layer(kind="fc", in_shape=(2, 2, 2), out_shape=(3, 1, 1), kernel=(2, 2), stride=1, padding=0,
               weights=np.where(rng.random((3, 2, 2, 2)) < 0.5, 1, -1).astype(np.int32), thresholds=np.array([3, 3, 3]),
               weight_bits=1)  # fmt: skip
    tables = _binary_tables("positions", T, (1, 8, 8), [c0, p0, c1, p1, fc])
    images = np.random.default_rng(9).integers(0, 256, size=(3, 1, 8, 8)).astype(np.uint8)
    want = expected(tables, images)
    for pairs, split in ((True, True), (False, False)):
        plans = {pos: plan_core(tables, lanes=6, positions=pos, spike_pairs=pairs, split_state=split) for pos in (1, 2)}
        assert [lp.positions for lp in plans[2].layers] == [2, 2, 1]
        mem = {pos: {mm["name"]: mm for mm in plans[pos].summary()["memories"]} for pos in (1, 2)}
        assert mem[2]["layer0.state"]["depth"] * 2 == mem[1]["layer0.state"]["depth"]
        # twice the width: in one memory, or split in two (slopes, and (D, time))
        width2 = mem[2]["layer0.state"]["width"] + (mem[2]["layer0.slopes"]["width"] if split else 0)
        assert width2 == 2 * mem[1]["layer0.state"]["width"]
        assert ("layer0.slopes" in mem[2]) == split and "layer0.slopes" not in mem[1] and "layer4.slopes" not in mem[2]
        assert mem[2]["layer0.weights"]["depth"] == 1 * 3 * 4 and mem[1]["layer0.weights"]["depth"] == 1 * 3 * 3
        runs = {pos: run_pysim(plan, images, stall_seed=3) for pos, plan in plans.items()}
        for got in runs.values():
            assert compare_streams(tables, got.stream, want.stream) == {k: 0 for k in compare_streams(tables, want.stream, want.stream)}
            np.testing.assert_array_equal(got.classes, want.classes)
        assert (runs[2].cycles < runs[1].cycles).all(), (runs[2].cycles, runs[1].cycles)
    with pytest.raises(HardwareError, match="positions"):
        plan_core(tables, positions=3)
    # the readout takes each pooled time as its window's earliest spike in the state: no memory of its own
    from firstspike.hw.generate import to_verilog

    for plan in plans.values():
        assert not [mm for mm in plan.summary()["memories"] if "pool" in mm["name"]]
        assert "pooled" not in to_verilog(plan)


@pytest.mark.slow
@pytest.mark.parametrize("logic_depth", [None, 0])
def test_shallow_state_memories_are_flip_flops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logic_depth: int | None) -> None:
    """The output layer's state (10 classes on the iCEBreaker's 2 lanes: 5 words of ~60 bits) is
    built from flip-flops, not block RAM, on an iCE40UP5K-sized network with 24 channels in layer 1
    (Yosys's own choice put it in 4 of the UP5K's 30 EBR, and that network did not fit). With the
    attribute switched off (``logic_depth`` 0) the same synthesis puts it in block RAM: the test
    can tell the two apart. The hidden layers' deeper states stay in block RAM either way."""
    import torch

    from firstspike.boards.link import board_plan
    from firstspike.hw import layer as hw_layer
    from firstspike.hw.generate import TOP, to_verilog
    from firstspike.hw.yosys import synthesis
    from firstspike.quantize.export import tables_from_model
    from firstspike.train.model import CSNN, LayerSpec, NetConfig

    if logic_depth is not None:
        monkeypatch.setattr(hw_layer, "LOGIC_STATE_DEPTH", logic_depth)
    cfg = NetConfig(name="ice40_24", T=32, out_weight_bits=2, layers=[
        LayerSpec("conv", channels=8, kernel=5, stride=2), LayerSpec("conv", channels=24, kernel=6, stride=2),
        LayerSpec("fc", channels=10)])  # fmt: skip
    torch.manual_seed(0)
    net = CSNN(cfg)
    with torch.no_grad():  # no zero weight in the ternary output layer: its widest state (5 x 58 bits, as trained)
        net.layers[-1].weight.copy_(torch.sign(net.layers[-1].weight))
    plan = board_plan(tables_from_model(net), 2, False, 1, True)
    assert [(m["depth"], m["width"]) for m in plan.summary()["memories"] if m["name"] == "layer2.state"] == [(5, 58)]
    (tmp_path / f"{TOP}.v").write_text(to_verilog(plan))
    r = synthesis("ice40").run(tmp_path, TOP, "write_json out.json")
    assert r.returncode == 0, r.stderr[-1500:]
    cells = json.loads((tmp_path / "out.json").read_text())["modules"][TOP]["cells"]
    rams = [k for k, c in cells.items() if c["type"] == "SB_RAM40_4K"]
    out_state = [k for k in rams if "layer2.state" in k]
    assert any("layer1.state" in k for k in rams) and any("layer0.state" in k for k in rams), rams
    assert (len(out_state) == 0) == (logic_depth is None), out_state

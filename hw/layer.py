"""A spiking layer's engine: a component that runs one conv or fc layer of the core, step by step.

Per step t (``go``, with the step in ``t``; ``busy`` until the step is done), like the golden model:

1. events: every input event of step t-1 (the input encoder's list of bucket t-1, or the previous
   layer's entries of step t-1) adds its weight (+-1 or fixed-point) to the slope of each neuron
   of its fan-out; one cycle updates ``L`` output channels (the lanes) of one output word; only
   valid kernel offsets are visited;
2. integration: every neuron word is read once, V += slope, the first crossing of the threshold
   records t; words are visited pooling window by pooling window, so min-time pooling is "some
   lane of the window fires now and none fired before"; newly fired (pooled) lanes become one
   event entry (group, y, x, lane mask) for the next layer (``events_out``: a two-bank buffer, bank
   t%2 written while bank (t-1)%2 is read), or, in the output layer, one word for the decision
   unit (``words``). Window skipping (hidden layers with pooling, ``plan.window_skip``): a flag
   per pooling window says whether any of its neurons can still change; a window without it
   costs one cycle instead of k*k.

Layer windows (``CorePlan.windowed``, model file "windows": "ramp"): the k-th spiking layer runs the
core's steps t0 = k T .. t0 + 2 T - 1 and idles in the others. Step t0 sets the state; steps t0+1 ..
t0+T take the events of its inputs' window, and each adds w (T - t_i) to V itself (no slope, no
integration pass: V(T) = A = sum w (T - t_i) whatever the order); steps t0+T .. t0+2T-1 integrate
with the channel's ramp as the slope (none at t0+T) and record first crossings as t - t0 - T.

State: one memory word per (group, y, x): L lanes (2L with position pairs) of (slope, D = V -
threshold, spike time); weights: a ROM of one word per (input channel, ky, kx, group). With the
debug readout, ``ro_addr`` / ``ro_en`` read the state (``state``) while ``readout`` is high.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from firstspike.hw.decision import lowest_set, word_layout
from firstspike.hw.encoder import _table, list_signature
from firstspike.hw.plan import CorePlan, LayerPlan, fan_out, fan_out_words, idx_bits, ubits
from firstspike.hw.readout import Segment

# State memories this shallow are built from flip-flops (Yosys's ``ram_style = "logic"``): the
# output layer's few words (10 classes on 2 lanes: 5) would otherwise each take block RAM
# whenever Yosys's cost model prefers it (4 of the UP5K's 30 EBR for a 5 x 58-bit state)
LOGIC_STATE_DEPTH = 8


def _state_memory(width: int, depth: int) -> Memory:
    """A layer's state memory (slopes, D and times of its neurons): block RAM, or flip-flops
    when it has at most LOGIC_STATE_DEPTH words."""
    attrs = {"ram_style": "logic"} if depth <= LOGIC_STATE_DEPTH else None
    return Memory(shape=unsigned(width), depth=depth, init=[], attrs=attrs)


def entry_layout(lp: LayerPlan) -> data.StructLayout:
    """An event entry of layer ``lp`` for the next layer: its pooled (y, x), group and lane mask."""
    return data.StructLayout({"x": idx_bits(lp.Wp), "y": idx_bits(lp.Hp), "g": idx_bits(lp.groups), "mask": lp.lanes})


def bank_signature(lp: LayerPlan) -> wiring.Signature:
    """Layer ``lp``'s entries of the last step, from the producer's side: the reader gives an
    entry's index (``addr``, one cycle latency) and gets it (``data``); ``count`` entries."""
    E = lp.entries_per_step
    return wiring.Signature({"addr": In(idx_bits(max(2, E + 1))), "data": Out(entry_layout(lp)), "count": Out(idx_bits(E + 1))})


def _lane_words(lp: LayerPlan, per_channel, bits: int | None = None) -> Array:
    """One field of ``bits`` (default: the potential width) per lane, a word per group
    (thresholds and their negatives; with ``bits`` = slope width, layer windows' ramps)."""
    L, G, pb = lp.lanes, lp.groups, bits or lp.potential_bits
    return _table([sum((int(per_channel[gg * L + j]) & ((1 << pb) - 1)) << (j * pb)
                       for j in range(L) if gg * L + j < lp.Co) for gg in range(G)], L * pb)  # fmt: skip


def _stage(m: Module, v: Value) -> Signal:
    """``v`` one cycle later."""
    r = Signal(len(v), name=f"{getattr(v, 'name', 'v')}_r")
    m.d.sync += r.eq(v)
    return r


def _forwarded(m: Module, raw: Value, addr: Value, wport, name: str, first: Value, init: Value) -> Signal:
    """The word read at ``addr`` last cycle (``raw``, the memory's output), registered, with the
    writes it missed forwarded: the write of this cycle (``wport``'s, which lands after the
    read) and the one of last cycle (the read came in the same cycle, and the port is not
    transparent); ``init`` instead while ``first`` (step 0: the state before the image)."""
    q = Signal(len(raw), name=name)
    p_en, p_addr, p_data = Signal(name=f"{name}_pen"), Signal.like(wport.addr, name=f"{name}_paddr"), Signal(len(raw), name=f"{name}_pdata")
    m.d.sync += [p_en.eq(wport.en), p_addr.eq(wport.addr), p_data.eq(wport.data)]
    with m.If(first):
        m.d.sync += q.eq(init)
    with m.Elif(wport.en & (wport.addr == addr)):
        m.d.sync += q.eq(wport.data)
    with m.Elif(p_en & (p_addr == addr)):
        m.d.sync += q.eq(p_data)
    with m.Else():
        m.d.sync += q.eq(raw)
    return q


class LayerEngine(wiring.Component):
    """One spiking layer ``lp`` of the core ``plan``; ``src`` is the layer before it (None: the
    first layer, fed by the input encoder's lists). Ports: ``go`` / ``t`` / ``busy`` (one step),
    ``events`` (in: the input events), ``events_out`` (hidden layers) or ``words`` (the output
    layer, for the decision unit), and the readout's ``readout`` / ``ro_addr`` / ``ro_en`` /
    ``state`` with ``plan.debug``."""

    def __init__(self, plan: CorePlan, lp: LayerPlan, src: LayerPlan | None):
        self.plan, self.lp, self.src = plan, lp, src
        self.thresholds = _lane_words(lp, lp.thresholds)
        sig = {
            "go": In(1),
            "t": In(plan.step_bits),
            "busy": Out(1),
            "events": In(list_signature(plan) if src is None else bank_signature(src)),
        }
        if lp.last:
            sig["words"] = Out(stream.Signature(word_layout(lp.lanes, lp.groups, lp.potential_bits, plan.time_bits),
                                                always_ready=True))  # fmt: skip
        else:
            sig["events_out"] = Out(bank_signature(lp))
        if plan.debug:
            width = lp.positions * lp.lanes * lp.state_lane(plan.time_bits)[0]
            sig |= {"readout": In(1), "ro_addr": In(idx_bits(lp.words)), "ro_en": In(1), "state": Out(width)}
        super().__init__(sig)

    def segments(self) -> dict[str, Segment]:
        """The readout's segments held in this layer's state: its spike times, a pooling layer's
        (the earliest over each window), and the output layer's V(T-1)."""
        P, lp = self.plan, self.lp
        tb, L, G, PP = P.time_bits, lp.lanes, lp.groups, lp.positions
        sb, pb = lp.slope_bits, lp.potential_bits
        port = (SimpleNamespace(data=self.state), self.ro_addr, self.ro_en)
        sw, so = lp.state_lane(tb)
        segs = {f"layer{lp.index}": Segment(port, L, G, lp.Co, lp.Ho * lp.Wo, sw, so, tb, False, positions=PP)}
        if lp.pool_index is not None:  # a pooled time is its window's earliest spike: read from the state
            k = lp.pool
            segs[f"layer{lp.pool_index}"] = Segment(port, L, G, lp.Co, lp.Hp * lp.Wp * k * (k // PP), sw, so, tb, False,
                                                    positions=PP, window=(k, lp.Wq, lp.Ho, lp.Hp, lp.Wp))  # fmt: skip
        if lp.last:  # V(T-1) = D + threshold: the readout adds the word's thresholds back
            assert not lp.split_state
            segs["v_last"] = Segment(port, L, G, lp.Co, 1, sb + pb + tb, sb, pb, True, (self.thresholds, pb))
        return segs

    def elaborate(self, platform) -> Module:  # noqa: C901 (one generator, read top to bottom)
        P, lp, src = self.plan, self.lp, self.src
        m = Module()
        T, tb = P.T, P.time_bits
        t, go = self.t, self.go
        readout = self.readout if P.debug else None
        ev = self.events  # the input events: the encoder's lists, or the previous layer's bank
        # the layer's steps: 0 .. T-1, or with layer windows (CorePlan.windowed) 2 T from its
        # window start t0: events in steps t0+1 .. t0+T ("takes"), firing in t0+T .. t0+2T-1
        # ("fire_ok", spike time t - t0 - T), the channel's ramp as the slope after t0+T ("ramp_on")
        win, t0 = lp.ramps is not None, lp.window_start
        first, active, takes, fire_ok, ramp_on, fire_start = (Signal(name=f"l{lp.index}_{n}") for n in
                                                              ("first", "active", "takes", "fire_ok", "ramp_on", "fire_start"))  # fmt: skip
        tf = Signal(tb, name=f"l{lp.index}_tf")  # the spike time a crossing of this step records
        kk = Signal(tb, name=f"l{lp.index}_kk")  # layer windows: T - t_i of this step's events (t_i = t - t0 - 1): 1 .. T
        m.d.comb += first.eq(t == t0)
        k2 = Signal(tb + 1, name=f"l{lp.index}_k2")  # 2 (T - t_i), and the negatives: an event's +-k / +-2k (spike pairs)
        nk, nk2 = Signal(signed(tb + 2), name=f"l{lp.index}_nk"), Signal(signed(tb + 2), name=f"l{lp.index}_nk2")
        if win:
            # registered (off the datapaths): t changes at the core's GO, and these are first read a cycle later (START)
            k_t = (t0 + T + 1 - t)[:tb]
            m.d.comb += active.eq((t >= t0) & (t < t0 + 2 * T))
            m.d.sync += [takes.eq(t <= t0 + T), fire_ok.eq(t >= t0 + T), ramp_on.eq(t > t0 + T), fire_start.eq(t == t0 + T),
                         tf.eq((t - (t0 + T))[:tb]), kk.eq(k_t), k2.eq(k_t << 1), nk.eq(-k_t), nk2.eq(-(k_t << 1))]  # fmt: skip
        else:
            m.d.comb += [active.eq(1), takes.eq(1), fire_ok.eq(1), tf.eq(t[:tb])]
        L, G = lp.lanes, lp.groups
        PP, Wq = lp.positions, lp.Wq  # output positions per state word, words per output row
        PL = PP * L  # neurons per state word
        sb, pb, wb = lp.slope_bits, lp.potential_bits, lp.weight_bits
        LW = sb + pb + tb
        HoWq = lp.Ho * Wq  # words per group
        name = f"l{lp.index}"
        # state: one memory of (slope, D, time) per neuron; with position pairs two, the slopes
        # (written by events and integration) and (D, time) (written by integration only): wide
        # words need no write-data multiplexer between the two kinds of update
        split = lp.split_state
        VW = pb + tb
        if split:
            sm = _state_memory(PL * sb, lp.words)
            m.submodules.slopes = sm
            st = _state_memory(PL * VW, lp.words)
        else:
            st = _state_memory(PL * LW, lp.words)
        m.submodules.state = st
        # weights: one memory, or with spike pairs two (the input channels of the entries' low lanes, then of the high lanes)
        wm_rs = []
        chans = lp.weight_channels()
        for k, cs in enumerate(chans):
            wm = Memory(shape=unsigned(PL * wb), depth=lp.weight_depth(len(cs)), init=lp.weight_words(cs))
            m.submodules["weights" + (("_lo", "_hi")[k] if len(chans) > 1 else "")] = wm
            wm_rs.append(wm.read_port())
        st_w = st.write_port()
        st_r = st.read_port()
        eng_addr = Signal(idx_bits(lp.words), name=f"{name}_eng_addr")
        if P.debug:  # the readout owns the state's read port while ``readout`` is high
            m.d.comb += [st_r.addr.eq(Mux(readout, self.ro_addr, eng_addr)), st_r.en.eq(Mux(readout, self.ro_en, 1)),
                         self.state.eq(st_r.data)]  # fmt: skip
        else:
            m.d.comb += [st_r.addr.eq(eng_addr), st_r.en.eq(1)]
        if split:
            sm_w, sm_r = sm.write_port(), sm.read_port()
            m.d.comb += [sm_r.addr.eq(st_r.addr), sm_r.en.eq(st_r.en)]
        busy = self.busy

        # fan-out tables per input row / column: (count, weight-address offset, state-address offset);
        # columns in state words (with position pairs a word column and a weight column of two positions)
        fy = fan_out(lp.H, lp.Ho, lp.KH, lp.stride, lp.pad)
        fx = fan_out_words(lp.W, lp.Wo, lp.KW, lp.stride, lp.pad, PP)
        KC = lp.kx_cols  # weight columns per kernel row
        wa_bits, sa_bits = idx_bits(lp.weight_depth(lp.Ci)) + 1, idx_bits(lp.words) + 1
        ny_t = _table([f.n for f in fy], ubits(lp.KH))
        nx_t = _table([f.n for f in fx], ubits(lp.KW))
        wy_t = _table([f.k0 * KC * G for f in fy], wa_bits)
        wx_t = _table([f.k0 * G for f in fx], wa_bits)
        sy_t = _table([f.o0 * Wq for f in fy], sa_bits)
        sx_t = _table([f.o0 for f in fx], sa_bits)
        KKG = lp.KH * KC * G
        # position pairs: the word's weight column c; position p uses kernel column c - p, so the
        # even position adds nothing at c = KW and the odd one nothing at c = 0
        kxc = Signal(ubits(KC), name=f"{name}_kxc")
        kxc0 = Signal(ubits(KC), name=f"{name}_kxc0")
        kc_t = _table([f.k0 for f in fx], ubits(KC))
        wb_pos = Signal(PP, name=f"{name}_wb_pos")
        # per weight memory: the address of (entry group, lane within that memory's half)
        halves = [(0, lp.pair_split), (lp.pair_split, lp.in_lanes)] if lp.pairs else [(0, lp.in_lanes)]
        gin_ts = [_table([g * (hi - lo) * KKG for g in range(lp.in_groups)], wa_bits) for lo, hi in halves]
        li_ts = [_table([j * KKG for j in range(hi - lo)], wa_bits) for lo, hi in halves]

        # current event entry
        Lin = lp.in_lanes
        e_g = Signal(idx_bits(lp.in_groups), name=f"{name}_e_g")
        e_y, e_x = Signal(idx_bits(lp.H), name=f"{name}_e_y"), Signal(idx_bits(lp.W), name=f"{name}_e_x")
        e_mask = Signal(Lin, name=f"{name}_e_mask")
        e_reach = Signal(name=f"{name}_e_reach")  # the entry reaches some output (its fan-out rows and columns), set on LATCH
        more = Signal(name=f"{name}_more")
        ptr = Signal(P.input_node_addr_bits if src is None else 1, name=f"{name}_ptr")
        idx = Signal(idx_bits(max(2, src.entries_per_step + 1)) if src is not None else 1, name=f"{name}_idx")
        # the spike(s) taken next: the lowest set lane of each half of the entry's mask
        h_masks = [e_mask[lo:hi] for lo, hi in halves]
        lis = [lowest_set(m, hm, hi - lo, f"{name}_li{k}") for k, (hm, (lo, hi)) in enumerate(zip(h_masks, halves))]
        # synapse loop
        ky_i, kx_i = Signal(ubits(lp.KH), name=f"{name}_kyi"), Signal(ubits(lp.KW), name=f"{name}_kxi")
        n_y, n_x = Signal(ubits(lp.KH), name=f"{name}_ny"), Signal(ubits(lp.KW), name=f"{name}_nx")
        g = Signal(idx_bits(G), name=f"{name}_g")
        wa_row, wa_col = Signal(wa_bits, name=f"{name}_wa_row"), Signal(wa_bits, name=f"{name}_wa_col")
        # with spike pairs the high half's spike: its weight addresses step with wa_row / wa_col
        wh_row, wh_col = Signal(wa_bits, name=f"{name}_wh_row"), Signal(wa_bits, name=f"{name}_wh_col")
        use = Signal(len(halves), name=f"{name}_use")  # which halves hold a spike of this pass
        wb_use = Signal(len(halves), name=f"{name}_wb_use")
        wa_x0 = Signal(wa_bits, name=f"{name}_wa_x0")
        sa_row, sa_col, sa_g = (Signal(sa_bits, name=f"{name}_{n}") for n in ("sa_row", "sa_col", "sa_g"))
        # integration loop over pooling windows
        k = lp.pool
        kq = k // PP  # words per window row (a window's positions are whole words: position_pairs_fit)
        PY, PX = -(-lp.Ho // k), -(-lp.Wo // k)
        ig = Signal(idx_bits(G), name=f"{name}_ig")
        py, px = Signal(idx_bits(PY), name=f"{name}_py"), Signal(idx_bits(PX), name=f"{name}_px")
        dy, dx = Signal(idx_bits(k), name=f"{name}_dy"), Signal(idx_bits(kq), name=f"{name}_dx")
        pyk, pxk = Signal(ubits(PY * k), name=f"{name}_pyk"), Signal(ubits(PX * kq), name=f"{name}_pxk")
        gbase, rowb = Signal(sa_bits, name=f"{name}_gbase"), Signal(sa_bits + ubits(k * Wq), name=f"{name}_rowb")
        dyw_t = _table([d * Wq for d in range(k)], ubits(k * Wq))
        # window skipping (hidden layers with pooling): one flag per pooling window, "some neuron
        # of it can still change": set by every event that reaches one of its words, written at
        # the end of each visit (some lane not fired and slope != 0); a window whose flag is
        # clear costs one cycle instead of k*k (its neurons keep V: slope 0, or they have fired)
        skip = P.window_skip and k > 1 and not lp.last
        NWIN = G * PY * PX
        flags = Signal(max(1, NWIN), name=f"{name}_flags")
        widx = Signal(idx_bits(NWIN + 1), name=f"{name}_widx")  # window being visited
        s_oy, s_ox, s_ox0 = (Signal(idx_bits(max(lp.Ho, lp.Wo)), name=f"{name}_{n}") for n in ("s_oy", "s_ox", "s_ox0"))
        wb_fidx = Signal.like(widx, name=f"{name}_wb_fidx")  # window of the word an event updates
        wb_tok = Signal(name=f"{name}_wb_tok")
        wb_widx = Signal.like(widx, name=f"{name}_wb_widx")
        # writeback pipeline tags
        wb_syn, wb_int = Signal(name=f"{name}_wb_syn"), Signal(name=f"{name}_wb_int")
        wb_addr = Signal(idx_bits(lp.words), name=f"{name}_wb_addr")
        wb_first, wb_last, wb_pv = Signal(name=f"{name}_wb_first"), Signal(name=f"{name}_wb_last"), Signal(name=f"{name}_wb_pv")
        wb_g = Signal(idx_bits(G), name=f"{name}_wb_g")
        wb_py, wb_px = Signal(idx_bits(PY), name=f"{name}_wb_py"), Signal(idx_bits(PX), name=f"{name}_wb_px")
        m.d.sync += [wb_syn.eq(0), wb_int.eq(0), wb_tok.eq(0), wb_pos.eq(0)]  # wb_pos: 0 outside events
        adv = Signal(name=f"{name}_adv")  # INTEG: this cycle ends the window (its last word, or a skip)
        if skip:
            # the flag of the window visited next cycle, looked up a cycle ahead (off the INTEG
            # path): this window's or the next one's, as this cycle ends a window or not; the
            # flags of windows not yet visited do not change while a layer integrates
            f_this, f_next, adv_q = Signal(name=f"{name}_f_this"), Signal(name=f"{name}_f_next"), Signal(name=f"{name}_adv_q")
            m.d.sync += [f_this.eq(flags.bit_select(widx, 1)), f_next.eq(flags.bit_select(widx + 1, 1)), adv_q.eq(adv)]
            flag_cur = Mux(adv_q, f_next, f_this)
            oy0_t = _table([f.o0 for f in fy], len(s_oy))
            ox0_t = _table([f.o0 for f in fx], len(s_ox))
            gw_t = _table([gg * PY * PX for gg in range(G)], len(widx))
            win_y_t = _table([(o // k) * PX for o in range(lp.Ho)], len(widx))
            win_x_t = _table([o * PP // k for o in range(Wq)], len(widx))  # by word column
            with m.If(wb_syn):
                m.d.sync += flags.bit_select(wb_fidx, 1).eq(1)

        def reaches(y: Value, x: Value) -> Value:  # an input at (y, x) has some output in the kernel's reach
            return _table([int(f.n != 0) for f in fy], 1)[y] & _table([int(f.n != 0) for f in fx], 1)[x]

        def events_done() -> None:
            """After the events: integrate, or with layer windows only from the firing window on
            (before it, events add w (T - t_i) to V themselves: no integration)."""
            if win:
                with m.If(fire_ok):
                    m.next = "INTEG"
                with m.Else():
                    m.next = "DRAIN"
            else:
                m.next = "INTEG"

        fsm_name = f"{name}_fsm"
        with m.FSM(name=fsm_name):
            with m.State("IDLE"):
                with m.If(go & active):  # outside its steps a layer stays idle (layer windows)
                    m.d.sync += busy.eq(1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += [ig.eq(0), py.eq(0), px.eq(0), dy.eq(0), dx.eq(0), pyk.eq(0), pxk.eq(0), gbase.eq(0),
                             rowb.eq(0), widx.eq(0)]  # fmt: skip
                with m.If(first):
                    m.next = "INTEG"
                with m.Elif(~takes):  # one cycle more: the window-skip flag of window 0 is looked up with widx = 0
                    m.next = "SKIPEV"
                with m.Else():
                    if src is None:
                        m.d.comb += ev.head_addr.eq(t - 1)
                        m.next = "HEAD"
                    else:
                        m.d.sync += idx.eq(0)
                        m.next = "FETCH"
            if src is None:
                with m.State("HEAD"):
                    m.d.sync += [more.eq(ev.head.valid), ptr.eq(ev.head.ptr)]
                    m.next = "FETCH"
                with m.State("FETCH"):
                    m.d.comb += ev.node_addr.eq(ptr)
                    with m.If(more):
                        m.next = "LATCH"
                    with m.Else():
                        events_done()
                with m.State("LATCH"):
                    nd = ev.node
                    m.d.sync += [e_x.eq(nd.x), e_y.eq(nd.y), e_g.eq(nd.c), e_mask.eq(1), ptr.eq(nd.next), more.eq(nd.more),
                                 e_reach.eq(reaches(nd.y, nd.x))]  # fmt: skip
                    m.next = "LANE"
            else:
                with m.State("FETCH"):
                    m.d.comb += ev.addr.eq(idx)
                    with m.If(idx == ev.count):
                        events_done()
                    with m.Else():
                        m.d.sync += idx.eq(idx + 1)
                        m.next = "LATCH"
                with m.State("LATCH"):
                    d = ev.data
                    m.d.sync += [e_x.eq(d.x), e_y.eq(d.y), e_g.eq(d.g), e_mask.eq(d.mask), e_reach.eq(reaches(d.y, d.x))]
                    m.next = "LANE"
            with m.State("SKIPEV"):  # layer windows: a step without events
                m.next = "INTEG"
            with m.State("LANE"):
                m.d.sync += e_mask.eq(Cat(*[(hm & (hm - 1))[: len(hm)] for hm in h_masks]))  # the spikes taken now leave
                ny, nx = ny_t[e_y], nx_t[e_x]
                with m.If(e_mask == 0):
                    m.next = "FETCH"
                with m.Elif(e_reach):
                    bases = [gin_ts[k][e_g] + li_ts[k][lis[k]] + wy_t[e_y] for k in range(len(halves))]
                    srow = sy_t[e_y] + sx_t[e_x]
                    m.d.sync += [wa_row.eq(bases[0]), wa_col.eq(bases[0] + wx_t[e_x]), wa_x0.eq(wx_t[e_x]), sa_row.eq(srow), sa_col.eq(srow),
                                 sa_g.eq(srow), ky_i.eq(0), kx_i.eq(0), g.eq(0), n_y.eq(ny), n_x.eq(nx),
                                 use.eq(Cat(*[hm != 0 for hm in h_masks]))]  # fmt: skip
                    if lp.pairs:
                        m.d.sync += [wh_row.eq(bases[1]), wh_col.eq(bases[1] + wx_t[e_x])]
                    if skip:
                        m.d.sync += [s_oy.eq(oy0_t[e_y]), s_ox.eq(ox0_t[e_x]), s_ox0.eq(ox0_t[e_x])]
                    if PP > 1:
                        m.d.sync += [kxc.eq(kc_t[e_x]), kxc0.eq(kc_t[e_x])]
                    m.next = "SYN"
            with m.State("SYN"):
                m.d.comb += [wm_rs[0].addr.eq(wa_col + g), eng_addr.eq(sa_g)]
                if lp.pairs:
                    m.d.comb += wm_rs[1].addr.eq(wh_col + g)
                m.d.sync += [wb_syn.eq(1), wb_addr.eq(sa_g), wb_use.eq(use)]
                if PP > 1:
                    m.d.sync += wb_pos.eq(Cat(kxc != lp.KW, kxc != 0))
                if skip:
                    m.d.sync += wb_fidx.eq(gw_t[g] + win_y_t[s_oy] + win_x_t[s_ox])
                s = lp.stride
                with m.If(g != G - 1):
                    m.d.sync += [g.eq(g + 1), sa_g.eq(sa_g + HoWq)]
                with m.Else():
                    m.d.sync += g.eq(0)
                    with m.If(kx_i != n_x - 1):
                        cs = s * PP * G  # next word column: the weight column moves by stride x positions
                        m.d.sync += [kx_i.eq(kx_i + 1), wa_col.eq(wa_col + cs), sa_col.eq(sa_col - 1), sa_g.eq(sa_col - 1)]
                        if lp.pairs:
                            m.d.sync += wh_col.eq(wh_col + cs)
                        if PP > 1:
                            m.d.sync += kxc.eq(kxc + PP)
                        if skip:
                            m.d.sync += s_ox.eq(s_ox - 1)
                    with m.Else():
                        m.d.sync += kx_i.eq(0)
                        with m.If(ky_i != n_y - 1):
                            wr = wa_row + s * KC * G
                            sr = sa_row - Wq
                            m.d.sync += [ky_i.eq(ky_i + 1), wa_row.eq(wr), wa_col.eq(wr + wa_x0),
                                         sa_row.eq(sr), sa_col.eq(sr), sa_g.eq(sr)]  # fmt: skip
                            if PP > 1:
                                m.d.sync += kxc.eq(kxc0)
                            if lp.pairs:
                                wr_h = wh_row + s * KC * G
                                m.d.sync += [wh_row.eq(wr_h), wh_col.eq(wr_h + wa_x0)]
                            if skip:
                                m.d.sync += [s_oy.eq(s_oy - 1), s_ox.eq(s_ox0)]
                        with m.Else():
                            m.next = "LANE"
            with m.State("INTEG"):
                oy, ox = pyk + dy, pxk + dx
                addr = rowb + dyw_t[dy] + ox
                valid = Const(1, 1)
                if PY * k != lp.Ho:
                    valid = valid & (oy < lp.Ho)
                if PX * kq != Wq:
                    valid = valid & (ox < Wq)
                m.d.sync += [wb_addr.eq(addr), wb_first.eq((dy == 0) & (dx == 0)), wb_last.eq((dy == k - 1) & (dx == kq - 1)),
                             wb_pv.eq((py < lp.Hp) & (px < lp.Wp)), wb_g.eq(ig), wb_py.eq(py), wb_px.eq(px)]  # fmt: skip
                idle = Const(0, 1)
                if skip:
                    idle = (dy == 0) & (dx == 0) & ~first & ~fire_start & ~flag_cur  # a window's first firing step visits all
                    m.d.sync += wb_widx.eq(widx)
                    with m.If(adv):
                        m.d.sync += widx.eq(widx + 1)
                # the read address does not wait for ``idle``: an idle cycle's read is never written
                # back (wb_int stays 0), and the window-skip flag stays off the block RAMs' address path
                m.d.comb += eng_addr.eq(addr)
                with m.If(idle):
                    m.d.comb += adv.eq(1)
                with m.Else():
                    m.d.sync += [wb_int.eq(valid), wb_tok.eq(1)]
                    with m.If(dx != kq - 1):
                        m.d.sync += dx.eq(dx + 1)
                    with m.Else():
                        m.d.sync += dx.eq(0)
                        with m.If(dy != k - 1):
                            m.d.sync += dy.eq(dy + 1)
                        with m.Else():
                            m.d.sync += dy.eq(0)
                            m.d.comb += adv.eq(1)
                with m.If(adv):
                    with m.If(px != PX - 1):
                        m.d.sync += [px.eq(px + 1), pxk.eq(pxk + kq)]
                    with m.Else():
                        m.d.sync += [px.eq(0), pxk.eq(0)]
                        with m.If(py != PY - 1):
                            m.d.sync += [py.eq(py + 1), pyk.eq(pyk + k), rowb.eq(rowb + k * Wq)]
                        with m.Else():
                            m.d.sync += [py.eq(0), pyk.eq(0)]
                            with m.If(ig != G - 1):
                                m.d.sync += [ig.eq(ig + 1), gbase.eq(gbase + HoWq), rowb.eq(gbase + HoWq)]
                            with m.Else():
                                m.next = "DRAIN"
            if lp.read_reg:
                with m.State("DRAIN"):  # the last read is registered
                    m.next = "DRAIN1"
            with m.State("DRAIN1" if lp.read_reg else "DRAIN"):  # the last writeback lands this cycle
                m.next = "DRAIN2"
            with m.State("DRAIN2"):  # and its pooling window's event
                m.d.sync += busy.eq(0)
                m.next = "IDLE"

        # ---- writeback -----------------------------------------------------------------
        word = st_r.data
        wwords = [r.data for r in wm_rs]
        s_word = sm_r.data if split else None
        valid_masks = _table([sum(1 << j for j in range(L) if gg * L + j < lp.Co) for gg in range(G)], L)
        thr_t = self.thresholds
        # the state's potential field holds D = V - threshold: -threshold before the first step
        d0_t = _lane_words(lp, -lp.thresholds)

        def weight(q: int, ww_: list, use: Value, pos_en: Value) -> Value:
            """Neuron q's weight of this event, or with spike pairs the sum of the two halves' (a half without a spike: 0)."""
            pos = q // L
            ws_j = [Mux(ww[q], 1, -1) if wb == 1 else ww[q * wb : (q + 1) * wb].as_signed() for ww in ww_]
            w_j = ws_j[0] if not lp.pairs else Mux(use[0], ws_j[0], 0) + Mux(use[1], ws_j[1], 0)
            if PP > 1:  # a position outside the kernel adds nothing (binary weights have no 0); nor does integration
                w_j = Mux(pos_en[pos], w_j, 0)
            return w_j

        zero_first = first  # at step 0 the state reads as slope 0, D = -threshold, silent
        if lp.read_reg:
            # one more stage: the words read last cycle are registered, and so are the tags that
            # go with them; a read misses the writes of its own cycle and of the next (the block
            # RAM is not transparent), so those two are forwarded into the register. Step 0's
            # initial state and each event's weights are made before that register too, so the
            # stage after it is only the add, the threshold's sign and the write
            a1, g1 = wb_addr, wb_g
            d0_1 = Signal(L * pb, name=f"{name}_d0_1")
            m.d.comb += d0_1.eq(d0_t[g1])
            if split:
                init = Cat(*[Cat(d0_1[(q % L) * pb :][:pb], Const(T, tb)) for q in range(PL)])
                s_word = _forwarded(m, s_word, a1, sm_w, f"{name}_sq", first, Const(0, len(s_word)))
            else:
                init = Cat(*[Cat(Const(0, sb), d0_1[(q % L) * pb :][:pb], Const(T, tb)) for q in range(PL)])
            word = _forwarded(m, word, a1, st_w, f"{name}_q", first, init)
            w_regs = []
            for q in range(PL):
                w_q = Signal(signed(max(wb, 2) + 1), name=f"{name}_w{q}")
                m.d.sync += w_q.eq(weight(q, wwords, wb_use, wb_pos))
                w_regs.append(w_q)
            zero_first = Const(0, 1)
            wb_syn, wb_int, wb_tok, wb_widx, wb_addr, wb_first, wb_last, wb_pv, wb_g, wb_py, wb_px = (
                _stage(m, v) for v in (wb_syn, wb_int, wb_tok, wb_widx, wb_addr, wb_first, wb_last, wb_pv, wb_g, wb_py, wb_px))  # fmt: skip
        thr_w = Signal(L * pb, name=f"{name}_thr")
        m.d.comb += thr_w.eq(thr_t[wb_g])
        ramp_w = Signal(L * sb, name=f"{name}_ramp")  # layer windows: the ramps of the word's channels
        if win:
            m.d.comb += ramp_w.eq(_lane_words(lp, lp.ramps, sb)[wb_g])
        d0_w = Signal(L * pb, name=f"{name}_d0")
        m.d.comb += d0_w.eq(d0_t[wb_g])
        vmask = Signal(L, name=f"{name}_vmask")
        m.d.comb += vmask.eq(valid_masks[wb_g])
        syn_word, int_word = [], []
        assert not (win and split), "layer windows keep one state memory (plan_core)"

        def times_k(w: Value) -> Value:
            """w (T - t_i): for binary weights (a sum of at most two +-1) a choice of +-k, +-2k, 0."""
            if wb > 1:
                return w * kk
            return Mux(w == 0, 0, Mux(w > 0, Mux(w == 1, kk, k2), Mux(w == -1, nk, nk2)))
        fire = Signal(PL, name=f"{name}_fire")  # per neuron of the word: position-major (p * L + lane)
        prev = Signal(PL, name=f"{name}_prev")
        vs, lives = [], []
        for q in range(PL):  # neuron q of the word read last cycle (zeros and "silent" at step 0)
            j = q % L
            s_f = s_word[q * sb : (q + 1) * sb] if split else word[q * LW : q * LW + sb]
            vt_f = word[q * VW : (q + 1) * VW] if split else word[q * LW + sb : (q + 1) * LW]  # (D, time)
            s_j = Signal(signed(sb), name=f"{name}_s{q}")
            tm_j = Signal(tb, name=f"{name}_t{q}")
            m.d.comb += [s_j.eq(Mux(zero_first, 0, s_f.as_signed())), tm_j.eq(Mux(zero_first, T, vt_f[pb:]))]
            p_j = Mux(zero_first, d0_w[j * pb : (j + 1) * pb].as_signed(), vt_f[:pb].as_signed())
            w_j = w_regs[q] if lp.read_reg else weight(q, wwords, wb_use, wb_pos)
            r_j = ramp_w[j * sb : (j + 1) * sb].as_signed()
            v = Signal(signed(pb), name=f"{name}_d{q}")  # V - threshold after this step
            if win:  # layer windows: an event adds w (T - t_i) to D itself (the slope field stays); steps add the ramp
                nd = Signal(signed(pb), name=f"{name}_nd{q}")
                m.d.comb += [nd.eq(p_j + times_k(w_j)), v.eq(p_j + Mux(ramp_on, r_j, 0))]
                syn_word.append(Cat(s_f, nd, vt_f[pb:]))
            else:
                ns = Signal(signed(sb), name=f"{name}_ns{q}")
                m.d.comb += [ns.eq(s_j + w_j), v.eq(p_j + s_j)]
                syn_word.append(ns if split else Cat(ns, vt_f))  # event: slope += weight
            vs.append(v)
            m.d.comb += [fire[q].eq(vmask[j] & ~v[pb - 1] & (tm_j == T) & fire_ok), prev[q].eq(tm_j != T)]  # V >= threshold
            # not fired before, V moves next step (and not firing now: below); with layer windows only the ramp moves it
            lives.append(vmask[j] & (tm_j == T) & (fire_ok & (r_j != 0) if win else (s_j != 0)))
            vt_new = Cat(v, Mux(fire[q], tf, tm_j))
            int_word.append(vt_new if split else Cat(s_j, vt_new))  # integration: V += slope, first crossing
        if split:  # slopes: events add the weight, integration writes them back (0 at step 0: w is 0 then)
            m.d.comb += [sm_w.addr.eq(wb_addr), sm_w.data.eq(Cat(*syn_word)), sm_w.en.eq(wb_syn | wb_int),
                         st_w.addr.eq(wb_addr), st_w.data.eq(Cat(*int_word)), st_w.en.eq(wb_int)]  # fmt: skip
        else:
            with m.If(wb_syn):
                m.d.comb += [st_w.addr.eq(wb_addr), st_w.data.eq(Cat(*syn_word)), st_w.en.eq(1)]
            with m.Elif(wb_int):
                m.d.comb += [st_w.addr.eq(wb_addr), st_w.data.eq(Cat(*int_word)), st_w.en.eq(1)]

        # pooling window, one cycle after the writeback (a register stage: the state read, the
        # add and the threshold compare are one path, the pooling and the event write another):
        # some lane fires now and none of the window fired before
        pl_int, pl_first, pl_last, pl_pv = (Signal(name=f"{name}_pl_{n}") for n in ("int", "first", "last", "pv"))
        pl_fire_q, pl_prev_q = Signal(PL, name=f"{name}_pl_fire_q"), Signal(PL, name=f"{name}_pl_prev_q")
        pl_g, pl_py, pl_px = Signal.like(wb_g, name=f"{name}_pl_g"), Signal.like(wb_py, name=f"{name}_pl_py"), Signal.like(wb_px, name=f"{name}_pl_px")
        m.d.sync += [pl_int.eq(wb_int), pl_first.eq(wb_first), pl_last.eq(wb_last), pl_pv.eq(wb_pv), pl_fire_q.eq(fire),
                     pl_prev_q.eq(prev), pl_g.eq(wb_g), pl_py.eq(wb_py), pl_px.eq(wb_px)]  # fmt: skip

        def by_lane(v: Signal) -> Signal:  # per lane: some position of the word (both in the same pooling window)
            out = v[:L]
            for pos in range(1, PP):
                out = out | v[pos * L : (pos + 1) * L]
            return out

        pl_fire, pl_prev = by_lane(pl_fire_q), by_lane(pl_prev_q)
        if skip:  # the window's flag after its visit: some valid word of it has a live lane
            pl_tok, pl_lives = Signal(name=f"{name}_pl_tok"), Signal(PL, name=f"{name}_pl_lives")
            pl_widx = Signal.like(widx, name=f"{name}_pl_widx")
            win_live, cur_live = Signal(name=f"{name}_win_live"), Signal(name=f"{name}_cur_live")
            m.d.sync += [pl_tok.eq(wb_tok), pl_lives.eq(Mux(wb_int, Cat(*lives), 0)), pl_widx.eq(wb_widx)]
            pl_live = (pl_lives & ~pl_fire_q).any()  # a neuron that can still cross and did not fire now
            m.d.comb += cur_live.eq(Mux(pl_first, pl_live, win_live | pl_live))
            with m.If(pl_tok):
                m.d.sync += win_live.eq(cur_live)
                with m.If(pl_last):
                    m.d.sync += flags.bit_select(pl_widx, 1).eq(cur_live)
        win_f, win_p = Signal(L, name=f"{name}_win_f"), Signal(L, name=f"{name}_win_p")
        cur_f, cur_p = Signal(L, name=f"{name}_cur_f"), Signal(L, name=f"{name}_cur_p")
        m.d.comb += [cur_f.eq(Mux(pl_first, pl_fire, win_f | pl_fire)), cur_p.eq(Mux(pl_first, pl_prev, win_p | pl_prev))]
        with m.If(pl_int):
            m.d.sync += [win_f.eq(cur_f), win_p.eq(cur_p)]
        newp = Signal(L, name=f"{name}_newp")
        m.d.comb += newp.eq(Mux(pl_int & pl_last & pl_pv, cur_f & ~cur_p, 0))
        emit = pl_int & pl_last & pl_pv

        # ---- outputs: next layer's event bank, or the decision ------------------------------
        if not lp.last:
            E = lp.entries_per_step
            xb, yb, gb = idx_bits(lp.Wp), idx_bits(lp.Hp), idx_bits(G)
            bank = Memory(shape=unsigned(xb + yb + gb + L), depth=2 * E, init=[])
            m.submodules.events = bank
            bw = bank.write_port()
            br = bank.read_port()
            cnt_cur = Signal(idx_bits(E + 1), name=f"{name}_cnt_cur")
            cnt_prev = Signal(idx_bits(E + 1), name=f"{name}_cnt_prev")
            with m.If(go):
                m.d.sync += [cnt_prev.eq(Mux(first, 0, cnt_cur)), cnt_cur.eq(0)]
            with m.Elif(emit & (newp != 0)):
                m.d.sync += cnt_cur.eq(cnt_cur + 1)
            m.d.comb += [bw.addr.eq(Mux(t[0], E, 0) + cnt_cur), bw.data.eq(Cat(pl_px[:xb], pl_py[:yb], pl_g[:gb], newp)),
                         bw.en.eq(emit & (newp != 0))]  # fmt: skip
            # the next layer reads last step's entries: bank (t-1) % 2, ``count`` of them
            out = self.events_out
            m.d.comb += [br.addr.eq(Mux(t[0], 0, E) + out.addr), out.data.eq(br.data), out.count.eq(cnt_prev)]
        else:
            w = self.words
            m.d.comb += [w.valid.eq(wb_int & fire_ok), w.payload.group.eq(wb_g), w.payload.t.eq(tf), w.payload.fire.eq(fire),
                         w.payload.valid.eq(vmask), *[w.payload.dist[j].eq(vs[j]) for j in range(L)],
                         *[w.payload.thr[j].eq(thr_w[j * pb : (j + 1) * pb].as_signed()) for j in range(L)]]  # fmt: skip
        return m

"""The event-driven time-to-first-spike core, in Amaranth, generated from a CorePlan: a small
top that composes one component per block (one image at a time, all layers advance together
one time step at a time):

* ``InputEncoder`` (hw/encoder.py): each pixel p becomes the spike time table[p] while it
  streams in; pixels that spike are pushed on a per-time-step linked list, so the first layer
  later walks exactly the events of one step.
* ``LayerEngine`` (hw/layer.py), one per conv or fc layer: per step, the input events of the
  step before add their weights to the slopes of their fan-out, then every neuron word
  integrates (V += slope, first crossing records t, min-time pooling by window) and the new
  spikes become the next layer's event entries; every layer runs its step concurrently, and
  a step ends when all are done.
* ``Decision`` (hw/decision.py): the earliest output spike (lowest class on ties); if none
  fires, the largest V(T-1) - threshold (model files' "max-margin"; older "max-potential"
  files: the largest V(T-1)), lowest class on ties. Optional early exit when the decision is
  known (with the debug port: chosen per image by ``exit_early``).
* ``Readout`` (hw/readout.py, the debug port): after the result, every layer's spike times and
  the output potentials stream out in GoldenModel.run order (CorePlan.readout_segments).

With layer windows (model file version 2) the layers take their windows one after another:
(spiking layers + 1) x T steps, each layer active in 2 T of them (hw/layer.py).

The control here: load (clear the buckets, take the pixels), steps until the last (T, or the
windows') or early exit, the result, the readout.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import wiring

from firstspike.hw.decision import Decision
from firstspike.hw.encoder import InputEncoder, _table  # noqa: F401 (_table: re-exported for tests)
from firstspike.hw.layer import LayerEngine
from firstspike.hw.plan import CorePlan, idx_bits
from firstspike.hw.readout import Readout, Segment


class Core(Elaboratable):
    """The core. Ports (all synchronous to ``clk``; ``rst`` is synchronous):

    * ``start`` (pulse while idle): begin an image; ``busy`` high until ``done`` (1-cycle pulse).
    * pixel stream ``pix_valid``/``pix_ready``/``pix_data`` (uint8, (c, y, x) order). With
      ``time_input`` (T <= 128) also ``pix_time``: this beat's ``pix_data`` is the pixel's
      spike time itself (>= T: silent), not a pixel for the input table (the board link's
      compact frames).
    * result stream ``res_valid``/``res_ready``: ``res_class``, ``res_fired`` (an output
      spiked), ``res_time`` (its step; T if none), ``res_cycles`` (compute cycles).
    * debug stream ``dbg_valid``/``dbg_ready``/``dbg_data``/``dbg_last`` (only with
      ``plan.debug``), after the result: one memory word per beat, up to ``debug_lanes``
      signed 32-bit values (see CorePlan.unpack_debug).
    * ``exit_early`` (only with both ``plan.debug`` and ``plan.early_exit``; sampled with
      ``start``): this image stops at its first output spike and has no debug readout (a
      board's plain CLASSIFY); low, it runs all T steps and streams its spike times. A core
      with early exit and no debug port always exits early.
    """

    def __init__(self, plan: CorePlan, time_input: bool = False):
        self.plan = plan
        P = plan
        if time_input and plan.T > 128:
            raise ValueError(f"time_input needs T <= 128 (spike times in 7 bits), not T={plan.T}")
        self.time_input = time_input
        self.pix_time = Signal()
        self.start = Signal()
        self.busy = Signal()
        self.done = Signal()
        self.pix_valid = Signal()
        self.pix_ready = Signal()
        self.pix_data = Signal(8)
        self.res_valid = Signal()
        self.res_ready = Signal()
        self.res_class = Signal(idx_bits(P.num_classes))
        self.res_fired = Signal()
        self.res_time = Signal(P.time_bits)
        self.res_cycles = Signal(32)
        self.dbg_valid = Signal()
        self.dbg_ready = Signal()
        self.dbg_data = Signal(32 * plan.debug_lanes)
        self.dbg_last = Signal()
        self.exit_early = Signal()

    def ports(self) -> list[Signal]:
        p = [self.start, self.busy, self.done, self.pix_valid, self.pix_ready, self.pix_data, self.res_valid,
             self.res_ready, self.res_class, self.res_fired, self.res_time, self.res_cycles]  # fmt: skip
        if self.plan.debug:
            p += [self.dbg_valid, self.dbg_ready, self.dbg_data, self.dbg_last]
            if self.plan.early_exit:
                p.append(self.exit_early)
        if self.time_input:
            p.append(self.pix_time)
        return p

    # ------------------------------------------------------------------------------------
    def elaborate(self, platform) -> Module:
        P = self.plan
        m = Module()
        T, tb = P.T, P.time_bits
        C, H, W = P.input_shape

        t = Signal(P.step_bits)  # current step (0 .. P.steps - 1: T, or with layer windows (layers + 1) T)
        first = Signal()
        m.d.comb += first.eq(t == 0)
        go = Signal()  # 1-cycle: every stage starts step t
        readout = Signal()
        ro_start = Signal()
        ro_sel = Signal()  # the debug readout owns the layers' state read ports
        m.d.comb += ro_sel.eq(readout | ro_start)

        # ---- input: the encoder (spike times, per-step event lists) -------------------------
        enc = InputEncoder(P, self.time_input)
        m.submodules.encoder = enc
        m.d.comb += [enc.pixels.valid.eq(self.pix_valid), self.pix_ready.eq(enc.pixels.ready),
                     enc.pixels.payload.data.eq(self.pix_data), enc.pixels.payload.time.eq(self.pix_time)]  # fmt: skip
        ro_ports: dict[str, Segment] = {}  # segment name -> where and how its words are read
        if P.debug:
            ro_ports["input"] = Segment(enc.times_port(), 1, C, C, H * W, tb, 0, tb, False)

        # ---- spiking layers, then the decision --------------------------------------------
        busy_all = []
        prev = None
        for lp in P.layers:
            eng = LayerEngine(P, lp, prev.lp if prev else None)
            m.submodules[f"layer{lp.index}"] = eng
            m.d.comb += [eng.go.eq(go), eng.t.eq(t)]
            wiring.connect(m, enc.lists if prev is None else prev.events_out, eng.events)
            if P.debug:
                m.d.comb += eng.readout.eq(ro_sel)
                ro_ports.update(eng.segments())
            busy_all.append(eng.busy)
            prev = eng
        out = P.layers[-1]
        dec = Decision(out.lanes, out.groups, P.num_classes, out.potential_bits, tb, T, margin=P.silent_margin)
        m.submodules.decision = dec
        wiring.connect(m, prev.words, dec.words)
        m.d.comb += dec.clear.eq(go & first)

        # ---- control -------------------------------------------------------------------
        cycles = Signal(32)
        any_busy = Signal()
        m.d.comb += any_busy.eq(Cat(*busy_all, dec.busy).any())  # the decision's pipeline too
        m.d.comb += [self.res_class.eq(dec.cls), self.res_fired.eq(dec.fired), self.res_time.eq(dec.time), self.res_cycles.eq(cycles)]
        ro_done = Signal()
        early = Signal()  # this image exits early (and skips the readout)
        if P.early_exit and not P.debug:
            m.d.comb += early.eq(1)
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += enc.start.eq(1)
                    m.d.sync += [self.busy.eq(1), cycles.eq(0)]
                    if P.early_exit and P.debug:
                        m.d.sync += early.eq(self.exit_early)
                    m.next = "LOAD"
            with m.State("LOAD"):  # the encoder clears its buckets, then takes the pixels
                with m.If(enc.loaded):
                    m.d.sync += t.eq(0)
                    m.next = "GO"
            with m.State("GO"):  # also lets the last pixel's bucket write land
                m.d.comb += go.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.next = "STEP"
            with m.State("STEP"):
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~any_busy):
                    stop = (t == P.steps - 1) | (early & dec.fired)
                    with m.If(stop):
                        m.next = "RESULT"
                    with m.Else():
                        m.d.sync += t.eq(t + 1)
                        m.next = "GO"
            with m.State("RESULT"):
                m.d.comb += self.res_valid.eq(1)
                with m.If(self.res_ready):
                    if P.debug:
                        with m.If(early):
                            m.next = "DONE"
                        with m.Else():
                            m.d.comb += ro_start.eq(1)
                            m.next = "READOUT"
                    else:
                        m.next = "DONE"
            with m.State("READOUT"):
                m.d.comb += readout.eq(1)
                with m.If(ro_done):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
        if P.debug:
            ro = Readout([ro_ports[name] for name, _ in P.readout_segments()], P.debug_lanes)
            m.submodules.readout = ro
            m.d.comb += [ro.start.eq(ro_start), ro.active.eq(readout), ro_done.eq(ro.done),
                         self.dbg_valid.eq(ro.beats.valid), ro.beats.ready.eq(self.dbg_ready),
                         self.dbg_data.eq(ro.beats.payload.data), self.dbg_last.eq(ro.beats.payload.last)]  # fmt: skip
        return m

"""The decision unit of the core: a component fed by the output layer's integration words.

Semantics (the model file's decision rule): the class is the earliest output spike, lowest
class on ties; if no output fires by T-1, the largest V(T-1) - threshold ("max-margin") or the
largest V(T-1) ("max-potential" model files), lowest class on ties.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from firstspike.hw.plan import idx_bits


def lowest_set(m: Module, bits: Signal, n: int, name: str) -> Signal:
    """Index of the lowest set bit of ``bits`` (0 when none): a priority encoder."""
    out = Signal(idx_bits(n), name=name)
    for j in reversed(range(n)):
        with m.If(bits[j]):
            m.d.comb += out.eq(j)
    return out


def word_layout(lanes: int, groups: int, potential_bits: int, time_bits: int) -> data.StructLayout:
    """One integration word of the output layer: ``lanes`` outputs of group ``group`` at step
    ``t`` (class = group * lanes + lane), which of them fire now, which are real outputs (the
    last group may be partial), their distances to the threshold after this step (V - threshold:
    the state the core keeps) and their thresholds."""
    return data.StructLayout({
        "group": idx_bits(groups),
        "t": time_bits,
        "fire": lanes,
        "valid": lanes,
        "dist": data.ArrayLayout(signed(potential_bits), lanes),
        "thr": data.ArrayLayout(signed(potential_bits), lanes),
    })  # fmt: skip


class Decision(wiring.Component):
    """``clear`` (a pulse at the first step of an image) resets it; every word of ``words``
    (always ready: one per cycle while the output layer integrates) updates it. ``fired``,
    ``cls`` and ``time`` hold the decision so far, ``latency`` cycles after the word: the unit is
    pipelined (each word is registered on entry, its scores registered, then reduced by a tree
    of log2(lanes) comparators with one register per level, so no long path); ``busy`` is high
    while a word is in flight (the core waits for it before it ends a step)."""

    def __init__(self, lanes: int, groups: int, num_classes: int, potential_bits: int, time_bits: int, T: int,
                 margin: bool = True):  # fmt: skip
        self.lanes, self.groups, self.num_classes = lanes, groups, num_classes
        self.potential_bits, self.time_bits, self.T, self.margin = potential_bits, time_bits, T, margin
        cw = idx_bits(num_classes)
        self.latency = (lanes - 1).bit_length() + 3  # a word -> ``cls``: entry, scores, tree levels, best
        super().__init__({
            "clear": In(1),
            "words": In(stream.Signature(word_layout(lanes, groups, potential_bits, time_bits), always_ready=True)),
            "fired": Out(1),
            "cls": Out(cw),
            "time": Out(time_bits),
            "busy": Out(1),
        })  # fmt: skip

    @staticmethod
    def _stage(vb: int, lanes: int, name: str) -> tuple[Signal, Signal, Signal]:
        """Registers of one tree node: score, lane index, whether any lane below it is valid."""
        return Signal(signed(vb), name=f"{name}_v"), Signal(idx_bits(lanes), name=f"{name}_i"), Signal(name=f"{name}_m")

    def elaborate(self, platform) -> Module:
        m = Module()
        L, T, pb = self.lanes, self.T, self.potential_bits
        cw = idx_bits(self.num_classes)
        # every word is registered on entry (the output layer's compare and this unit are two paths)
        w = Signal(self.words.payload.shape())
        w_valid = Signal()
        m.d.sync += [w.eq(self.words.payload), w_valid.eq(self.words.valid)]
        base = Array(Const(g * L, cw + 1) for g in range(self.groups))  # first class of each group

        # earliest spike: the first word with a firing lane, its lowest lane
        decided, first_cls, dtime = Signal(), Signal(cw), Signal(self.time_bits)
        lowest = lowest_set(m, w.fire, L, "lowest_fire")
        with m.If(self.clear):
            m.d.sync += [decided.eq(0), first_cls.eq(0), dtime.eq(T)]
        with m.Elif(w_valid & ~decided & (w.fire != 0)):
            m.d.sync += [decided.eq(1), first_cls.eq(base[w.group] + lowest), dtime.eq(w.t)]

        # argmax of the scores of step T-1 over the valid lanes and groups, lowest class on ties
        vb = pb + 1  # V = (V - threshold) + threshold needs one bit more
        score = [Signal(signed(vb), name=f"score{j}") for j in range(L)]
        mask, group, en = Signal(L), Signal.like(w.group), Signal()
        m.d.sync += [*[score[j].eq(w.dist[j] if self.margin else w.dist[j] + w.thr[j]) for j in range(L)],
                     mask.eq(w.valid), group.eq(w.group), en.eq(w_valid & (w.t == T - 1))]  # fmt: skip
        # a tree of pairwise maxima, one registered level per cycle (pairs, lower index first:
        # the higher one wins only if strictly larger), then the running best over the groups
        level = [(score[j], Const(j, idx_bits(L)), mask[j] if j else Const(1, 1)) for j in range(L)]
        stage_en, stage_group, inflight = en, group, [w_valid, en]
        depth = 0
        while len(level) > 1:
            nxt = []
            for i, (a, b) in enumerate(zip(level[0::2], level[1::2])):
                take_b = b[2] & (~a[2] | (b[0] > a[0]))
                rv, ri, rm = self._stage(vb, L, f"t{depth}_{i}")
                m.d.sync += [rv.eq(Mux(take_b, b[0], a[0])), ri.eq(Mux(take_b, b[1], a[1])), rm.eq(a[2] | b[2])]
                nxt.append((rv, ri, rm))
            if len(level) % 2:
                rv, ri, rm = self._stage(vb, L, f"t{depth}_last")
                m.d.sync += [rv.eq(level[-1][0]), ri.eq(level[-1][1]), rm.eq(level[-1][2])]
                nxt.append((rv, ri, rm))
            ne, ng = Signal(name=f"t{depth}_en"), Signal.like(group, name=f"t{depth}_group")
            m.d.sync += [ne.eq(stage_en), ng.eq(stage_group)]
            stage_en, stage_group = ne, ng
            inflight.append(ne)
            level = nxt
            depth += 1
        assert depth + 3 == self.latency
        best_v, best_cls = Signal(signed(vb)), Signal(cw)
        with m.If(stage_en & ((stage_group == 0) | (level[0][0] > best_v))):
            m.d.sync += [best_v.eq(level[0][0]), best_cls.eq(base[stage_group] + level[0][1])]
        m.d.comb += self.busy.eq(Cat(*inflight).any())

        m.d.comb += [self.fired.eq(decided), self.cls.eq(Mux(decided, first_cls, best_cls)), self.time.eq(Mux(decided, dtime, T))]
        return m

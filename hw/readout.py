"""The core's debug readout: a component that streams every layer's spike times (and the
output layer's potentials) from the memories that hold them, after an image's last step.

Stream order and beat format are CorePlan.readout_segments / CorePlan.unpack_debug's: per
segment, memory order (group, y, x), one beat per position, lane j's signed 32-bit value in
bits 32j..32j+31 of ``data``. A pooling layer has no memory of its own: its beat is the
earliest spike time over its window's state words of the layer before it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from firstspike.hw.plan import idx_bits, ubits


class Segment(NamedTuple):
    """One readout segment: where its words are and how a beat's values sit in them."""

    port: Any  # a memory read port, or (a layer's state read port, its address, its enable) shared with the engine
    lanes: int  # values per beat
    groups: int
    Co: int
    HW: int  # beats per group (with ``window``: words per group)
    LW: int  # bits per lane in the word
    off: int  # the value's offset inside a lane
    bits: int
    signed: bool
    bias: tuple | None = None  # (per-group table, width) added lane by lane (V = D + threshold)
    positions: int = 1  # positions per memory word (a beat selects one)
    window: tuple | None = None  # a pooled layer read from its input's state: (k, Wq, Ho, Hp, Wp); a beat
    #   is the minimum over its window's k x k / positions words


def beat_layout(lanes: int) -> data.StructLayout:
    """A debug beat: ``lanes`` signed 32-bit values, and the stream's last beat."""
    return data.StructLayout({"data": 32 * lanes, "last": 1})


class Readout(wiring.Component):
    """``start`` (a pulse) begins the stream; while ``active`` it sends ``beats``, one memory word
    a cycle while ``beats.ready`` is high (a pooled window's words one a cycle, one beat for the
    window); ``done`` pulses when the last beat is taken. It owns the segments' read ports from
    ``start`` to ``done`` (the core's layers multiplex their state ports on that)."""

    def __init__(self, segments: list[Segment], lanes: int):
        self.segments = list(segments)
        self.lanes = lanes
        super().__init__({
            "start": In(1),
            "active": In(1),
            "done": Out(1),
            "beats": Out(stream.Signature(beat_layout(lanes))),
        })  # fmt: skip

    def elaborate(self, platform) -> Module:
        m = Module()
        segs = self.segments
        S = len(segs)
        seg = Signal(idx_bits(S))
        addr = Signal(idx_bits(max(s.groups * s.HW for s in segs)) + 1)  # word (or beat) of the segment
        last = Signal()
        issue = Signal()
        sub_last = Signal()  # the current word completes a beat (inside a pooled window: its last word)
        n_seg, n_addr = Signal.like(seg, name="n_seg"), Signal.like(addr, name="n_addr")
        m.d.comb += [n_seg.eq(seg), n_addr.eq(addr + 1), sub_last.eq(1)]
        for si, sg in enumerate(segs):
            with m.If((seg == si) & (addr == sg.groups * sg.HW - 1)):
                if si == S - 1:
                    m.d.comb += last.eq(1)
                else:
                    m.d.comb += [n_seg.eq(si + 1), n_addr.eq(0)]
        iaddr = Signal.like(addr, name="issue_addr")
        iseg = Signal.like(seg, name="issue_seg")
        with m.If(self.start):
            m.d.comb += [iaddr.eq(0), iseg.eq(0)]
        with m.Else():
            m.d.comb += [iaddr.eq(n_addr), iseg.eq(n_seg)]
        # pooled windows: counters of the current word, the next word's address
        win_addr, win_first = {}, {}
        for si, sg in enumerate(segs):
            if sg.window is not None:
                win_addr[si], win_first[si] = _window_walk(m, si, sg, seg == si, iseg == si, issue,
                                                           self.start | (n_seg != seg), sub_last)  # fmt: skip
        # drive the read ports: issue the next word's address
        ports: dict[int, list[int]] = {}
        for si, s in enumerate(segs):
            ports.setdefault(id(s.port[0] if isinstance(s.port, tuple) else s.port), []).append(si)
        for sis in ports.values():
            port = segs[sis[0]].port
            sel = Cat(*[iseg == si for si in sis]).any() & issue
            a = None
            for si in sis:
                ai = win_addr[si] if si in win_addr else iaddr[segs[si].positions.bit_length() - 1 :]
                a = ai if a is None else Mux(iseg == si, ai, a)
            if isinstance(port, tuple):  # a layer's state memory, shared with its engine
                _, pa, pe = port
                m.d.comb += [pa.eq(a), pe.eq(sel)]
            else:
                m.d.comb += [port.addr.eq(a), port.en.eq(sel)]
        # the current word (its read was issued last cycle; held while not ready)
        advance = Signal()
        for si, (port, L, G, Co, HW, LW, off, nbits, sgn, bias, npos, window) in enumerate(segs):
            rdata = port[0].data if isinstance(port, tuple) else port.data
            if npos > 1 and window is None:  # this beat's position of the word
                rdata = rdata.word_select(addr[: npos.bit_length() - 1], L * LW)
            vals = []
            if bias is not None:  # a per-word table (one word per group: HW == 1) added lane by lane
                tab, bw = bias
                bword = Signal(L * bw, name=f"s{si}_bias")
                m.d.comb += bword.eq(tab[addr])
            for j in range(L):
                v = Signal(signed(32), name=f"s{si}_v{j}")
                if window is not None:  # earliest over the word's positions and the window's earlier words
                    acc = Signal(nbits, name=f"s{si}_acc{j}")
                    cur = acc
                    for pos in range(npos):
                        f = rdata[(pos * L + j) * LW + off :][:nbits]
                        take = (f < cur) if pos else (win_first[si] | (f < cur))  # a window's first word ignores acc
                        cur = Mux(take, f, cur)
                    mn = Signal(nbits, name=f"s{si}_min{j}")
                    m.d.comb += [mn.eq(cur), v.eq(mn)]
                    with m.If(advance & (seg == si)):
                        m.d.sync += acc.eq(mn)
                elif bias is None:
                    f = rdata[j * LW + off : j * LW + off + nbits]
                    m.d.comb += v.eq(f.as_signed() if sgn else f)
                else:
                    f = rdata[j * LW + off : j * LW + off + nbits]
                    m.d.comb += v.eq(f.as_signed() + bword[j * bw : (j + 1) * bw].as_signed())
                vals.append(v)
            with m.If(seg == si):
                m.d.comb += self.beats.payload.data.eq(Cat(*vals))
        valid = Signal()
        m.d.comb += [self.beats.valid.eq(valid & self.active & sub_last), self.beats.payload.last.eq(last),
                     advance.eq(self.active & valid & (self.beats.ready | ~sub_last))]  # fmt: skip
        with m.If(self.start):
            m.d.comb += issue.eq(1)
            m.d.sync += [seg.eq(0), addr.eq(0), valid.eq(1)]
        with m.Elif(advance):
            with m.If(last):
                m.d.sync += valid.eq(0)
                m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.comb += issue.eq(1)
                m.d.sync += [seg.eq(n_seg), addr.eq(n_addr)]
        return m


def _window_walk(m: Module, si: int, sg: Segment, here: Signal, next_here: Signal, issue: Signal, enter: Signal,
                 sub_last: Signal) -> tuple[Signal, Signal]:  # fmt: skip
    """Walk a pooled segment's windows over its layer's state words: (group, py, px), then
    the window's rows r and word columns c. Returns the next word's address (issued with
    ``issue`` while ``next_here``) and "the current word is its window's first"; drives
    ``sub_last`` while ``here``."""
    k, Wq, Ho, Hp, Wp = sg.window
    kc = k // sg.positions  # words per window row
    ab = idx_bits(sg.groups * Ho * Wq) + 1
    c, r = Signal(ubits(kc), name=f"s{si}_c"), Signal(ubits(k), name=f"s{si}_r")
    px, py = Signal(ubits(Wp), name=f"s{si}_px"), Signal(ubits(Hp), name=f"s{si}_py")
    wa, ra, wb, rb = (Signal(ab, name=f"s{si}_{n}") for n in ("wa", "ra", "wb", "rb"))  # word, row, window, row block
    regs = (c, r, px, py, wa, ra, wb, rb)
    nxt = [Signal.like(x, name=f"{x.name}_n") for x in regs]
    n_c, n_r, n_px, n_py, n_wa, n_ra, n_wb, n_rb = nxt
    m.d.comb += [n.eq(x) for n, x in zip(nxt, regs)]
    with m.If(enter):  # the segment's first word: all 0
        m.d.comb += [n.eq(0) for n in nxt]
    with m.Elif(c != kc - 1):
        m.d.comb += [n_c.eq(c + 1), n_wa.eq(wa + 1)]
    with m.Elif(r != k - 1):
        m.d.comb += [n_c.eq(0), n_r.eq(r + 1), n_ra.eq(ra + Wq), n_wa.eq(ra + Wq)]
    with m.Elif(px != Wp - 1):
        m.d.comb += [n_c.eq(0), n_r.eq(0), n_px.eq(px + 1), n_wb.eq(wb + kc), n_ra.eq(wb + kc), n_wa.eq(wb + kc)]
    with m.Elif(py != Hp - 1):
        m.d.comb += [n_c.eq(0), n_r.eq(0), n_px.eq(0), n_py.eq(py + 1), *[n.eq(rb + k * Wq) for n in (n_rb, n_wb, n_ra, n_wa)]]
    with m.Else():  # the next group (rb is its last row block's)
        nxt_g = rb + (Ho - (Hp - 1) * k) * Wq
        m.d.comb += [n_c.eq(0), n_r.eq(0), n_px.eq(0), n_py.eq(0), *[n.eq(nxt_g) for n in (n_rb, n_wb, n_ra, n_wa)]]
    with m.If(issue & next_here):
        m.d.sync += [x.eq(n) for x, n in zip(regs, nxt)]
    with m.If(here):
        m.d.comb += sub_last.eq((c == kc - 1) & (r == k - 1))
    return n_wa, (c == 0) & (r == 0)

"""The core's input encoder: a component that turns the pixel stream into per-step event lists.

Each pixel p becomes the spike time table[p] as it streams in (or, with ``time_input``, the
beat carries the time itself); a pixel that spikes at step t is pushed on bucket t's linked
list (a head per step, a next pointer per node). The first layer later walks exactly the
events of one step (``head`` then ``node`` reads), in no particular order within it.

Nodes are addressed by the pixel's packed (c, y, x) bit fields when that takes fewer bits
(``CorePlan.input_packed``: a node then holds only its next pointer), else by the pixel's
index with (c, y, x) stored beside the pointer; the ``node`` port decodes both the same way.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from firstspike.hw.plan import CorePlan, idx_bits


def _table(values: list[int], width: int) -> Array:
    return Array(Const(int(v) & ((1 << width) - 1), width) for v in values)


def pixel_layout() -> data.StructLayout:
    """A pixel beat: ``data`` a pixel for the input table, or (``time`` set) its spike time (>= T: silent)."""
    return data.StructLayout({"data": 8, "time": 1})


def head_layout(plan: CorePlan) -> data.StructLayout:
    """A bucket head: the first node's address, and whether the list is non-empty."""
    return data.StructLayout({"ptr": plan.input_node_addr_bits, "valid": 1})


def node_layout(plan: CorePlan) -> data.StructLayout:
    """A decoded node: the pixel's (x, y, c), the next node's address, and whether there is one."""
    C, H, W = plan.input_shape
    return data.StructLayout({"x": idx_bits(W), "y": idx_bits(H), "c": idx_bits(C),
                              "next": plan.input_node_addr_bits, "more": 1})  # fmt: skip


def list_signature(plan: CorePlan) -> wiring.Signature:
    """The event lists, from the encoder's side: a step's head (``head_addr`` -> ``head``), a
    node (``node_addr`` -> ``node``), one cycle latency each."""
    return wiring.Signature({
        "head_addr": In(idx_bits(plan.T)),
        "head": Out(head_layout(plan)),
        "node_addr": In(plan.input_node_addr_bits),
        "node": Out(node_layout(plan)),
    })  # fmt: skip


class InputEncoder(wiring.Component):
    """``start`` (a pulse) clears the T buckets (T cycles), then takes ``pixels`` (one a cycle, in
    (c, y, x) order) until the image's last; ``loaded`` pulses the cycle after the last pixel's
    transfer, and the last bucket write lands the cycle after that. ``lists``: the buckets, read by the
    first layer (``list_signature``). With ``plan.debug``
    the pixels' spike times are kept for the readout (``times_port``)."""

    def __init__(self, plan: CorePlan, time_input: bool = False):
        self.plan, self.time_input = plan, time_input
        sig = {
            "start": In(1),
            "loaded": Out(1),
            "pixels": In(stream.Signature(pixel_layout())),
            "lists": Out(list_signature(plan)),
        }
        if plan.debug:
            sig |= {"times_addr": In(idx_bits(plan.n_inputs)), "times_en": In(1), "times": Out(plan.time_bits)}
        super().__init__(sig)

    def times_port(self) -> tuple:
        """The spike-time memory's read port in the readout's shared-port form (port, addr, en)."""
        return SimpleNamespace(data=self.times), self.times_addr, self.times_en

    def elaborate(self, platform) -> Module:
        P = self.plan
        m = Module()
        T, tb = P.T, P.time_bits
        C, H, W = P.input_shape
        N = P.n_inputs
        nb = P.input_node_addr_bits
        packed = P.input_packed
        fx, fy, fc = P.input_fields()

        heads = Memory(shape=unsigned(nb + 1), depth=T, init=[])
        n_depth, n_width = P.input_nodes_shape
        nodes = Memory(shape=unsigned(n_width), depth=n_depth, init=[])
        m.submodules.heads, m.submodules.nodes = heads, nodes
        heads_w = heads.write_port()
        heads_r = heads.read_port(transparent_for=(heads_w,))
        nodes_w = nodes.write_port()
        nodes_r = nodes.read_port()
        table = _table(P.input_table, tb)

        clearing, loading = Signal(), Signal()
        clr = Signal(idx_bits(T))
        ld_n = Signal(idx_bits(N))
        ld_c, ld_y, ld_x = Signal(idx_bits(C)), Signal(idx_bits(H)), Signal(idx_bits(W))
        px = self.pixels
        accept = Signal()
        tt = Signal(tb)  # this beat's spike time (T: silent)
        m.d.comb += [px.ready.eq(loading), accept.eq(px.valid & loading)]
        if self.time_input:
            m.d.comb += tt.eq(Mux(px.payload.time, Mux(px.payload.data >= T, T, px.payload.data), table[px.payload.data]))
        else:
            m.d.comb += tt.eq(table[px.payload.data])

        # push, three stages: the pixel's spike time is registered as it is taken (s1, so the input
        # stream and the table stay out of the heads memory's address path), its bucket's head is
        # read (s1), the node and the head are written (s2; a read of the same head in that cycle
        # sees the write)
        s1_valid, s1_last, s1_n, s1_t = Signal(), Signal(), Signal(nb), Signal(tb)
        s2_valid, s2_n, s2_t = Signal(), Signal(nb), Signal(tb)
        last = Signal()  # this beat is the image's last pixel
        m.d.comb += last.eq(accept & (ld_n == N - 1))
        m.d.sync += [s1_valid.eq(accept), s1_last.eq(last), s1_t.eq(tt)]
        m.d.sync += [s2_valid.eq(s1_valid & (s1_t != T)), s2_t.eq(s1_t), s2_n.eq(s1_n)]
        if packed:
            m.d.sync += s1_n.eq(Cat(ld_x[:fx], ld_y[:fy], ld_c[:fc]))
            node_word = heads_r.data
        else:
            xyc = Cat(ld_x, ld_y, ld_c)
            s1_xyc, s2_xyc = Signal(len(xyc)), Signal(len(xyc))
            m.d.sync += [s1_n.eq(ld_n), s1_xyc.eq(xyc), s2_xyc.eq(s1_xyc)]
            node_word = Cat(s2_xyc, heads_r.data)
        m.d.comb += [heads_r.addr.eq(Mux(s1_valid, s1_t, self.lists.head_addr)), self.loaded.eq(s1_last)]
        m.d.comb += [nodes_w.addr.eq(s2_n), nodes_w.data.eq(node_word), nodes_w.en.eq(s2_valid)]
        with m.If(clearing):
            m.d.comb += [heads_w.addr.eq(clr), heads_w.data.eq(0), heads_w.en.eq(1)]
        with m.Else():
            m.d.comb += [heads_w.addr.eq(s2_t), heads_w.data.eq(Cat(s2_n, Const(1, 1))), heads_w.en.eq(s2_valid)]
        with m.If(accept):
            m.d.sync += ld_n.eq(ld_n + 1)
            with m.If(ld_x == W - 1):
                m.d.sync += ld_x.eq(0)
                with m.If(ld_y == H - 1):
                    m.d.sync += [ld_y.eq(0), ld_c.eq(ld_c + 1)]
                with m.Else():
                    m.d.sync += ld_y.eq(ld_y + 1)
            with m.Else():
                m.d.sync += ld_x.eq(ld_x + 1)

        # reads: a head, a node decoded (a packed node's (c, y, x) is the address it was read at)
        m.d.comb += [self.lists.head.ptr.eq(heads_r.data[:nb]), self.lists.head.valid.eq(heads_r.data[nb])]
        m.d.comb += nodes_r.addr.eq(self.lists.node_addr)
        nd = nodes_r.data
        if packed:
            a_q = Signal(nb)
            m.d.sync += a_q.eq(self.lists.node_addr)
            m.d.comb += [self.lists.node.x.eq(a_q[:fx]), self.lists.node.y.eq(a_q[fx:][:fy]), self.lists.node.next.eq(nd[:nb]),
                         self.lists.node.more.eq(nd[nb])]  # fmt: skip
            if fc:
                m.d.comb += self.lists.node.c.eq(a_q[fx + fy :][:fc])
        else:
            o = 0
            for f, wdt in zip(("x", "y", "c", "next", "more"), (idx_bits(W), idx_bits(H), idx_bits(C), nb, 1)):
                m.d.comb += getattr(self.lists.node, f).eq(nd[o : o + wdt])
                o += wdt

        if P.debug:
            tmem = Memory(shape=unsigned(tb), depth=N, init=[])
            m.submodules.times = tmem
            tw, tr = tmem.write_port(), tmem.read_port()
            m.d.comb += [tw.addr.eq(ld_n), tw.data.eq(tt), tw.en.eq(accept)]
            m.d.comb += [tr.addr.eq(self.times_addr), tr.en.eq(self.times_en), self.times.eq(tr.data)]

        with m.FSM(name="encoder"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += clr.eq(0)
                    m.next = "CLEAR"
            with m.State("CLEAR"):
                m.d.comb += clearing.eq(1)
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == T - 1):
                    m.d.sync += [ld_n.eq(0), ld_c.eq(0), ld_y.eq(0), ld_x.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                with m.If(last):
                    m.next = "IDLE"
        return m

"""8N1 UART receiver and transmitter in Amaranth: components with a byte stream each
(``amaranth.lib.stream``). The bit time (``divisor``, clock cycles per bit) may be a
fraction (a 50 MHz core at 3 Mbaud: 16 2/3 cycles a bit): each edge and sample point is put on
the cycle nearest its exact time from the frame's start bit (TX edges within half a cycle, RX
samples within one cycle of the bit's centre), so no error accumulates over the frame."""

import math
from collections.abc import Callable
from fractions import Fraction

from amaranth.hdl import Array, Const, Module, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

Divisor = int | float | Fraction | str  # clock cycles per bit: exact (int, Fraction, "50/3") or a float
MIN_DIVISOR = 4  # clock cycles per bit, at least


def bit_time(divisor: Divisor) -> Fraction:
    """``divisor`` as an exact Fraction (a float or string: the nearest with denominator <= 1000);
    ValueError below 4 cycles a bit."""
    d = Fraction(divisor) if isinstance(divisor, (int, Fraction)) else Fraction(divisor).limit_denominator(1000)
    if d < MIN_DIVISOR:
        raise ValueError(f"UART divisor must be >= {MIN_DIVISOR} clock cycles per bit, not {d}")
    return d


def _nearest(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))  # halves round up (Python's round() takes them to even)


def tx_edges(divisor: Divisor) -> list[int]:
    """Cycle (from the start bit's edge) at which TX bit k = 0..10 starts (10: the frame's end)."""
    d = bit_time(divisor)
    return [_nearest(k * d) for k in range(11)]


def rx_samples(divisor: Divisor) -> list[int]:
    """Cycle (after the start edge is seen) at which RX samples bit i = 0..7 (data) and 8 (stop):
    the cycle nearest the middle of the bit's cycles, floor((i + 1.5) d)."""
    d = bit_time(divisor)
    return [math.floor((i + Fraction(3, 2)) * d) for i in range(9)]


def _steps(points: list[int]) -> Callable[[Signal], Value | int]:
    """Down-counter reloads (step - 1) between consecutive points: a constant when they are all
    equal (an integer divisor), else a small table indexed by the bit counter."""
    steps = [b - a - 1 for a, b in zip(points, points[1:])]
    if len(set(steps)) == 1:
        return lambda _bit: steps[0]
    table = Array(Const(s, range(max(steps) + 1)) for s in steps)
    return lambda bit: table[bit]


class UARTRx(wiring.Component):
    """Receives 8N1 bytes on ``rx`` into the stream ``o`` (no backpressure: a byte is valid
    for one cycle). ``divisor`` = clock cycles per bit (>= 4, may be fractional). After the
    2-flop synchroniser sees the start edge, bit i is sampled at ``rx_samples(divisor)[i]``
    cycles. A bad stop bit sets ``error`` for one cycle."""

    rx: In(1, init=1)
    o: Out(stream.Signature(8, always_ready=True))
    error: Out(1)

    def __init__(self, divisor: Divisor):
        self._MustUse__silence = True  # a refused divisor: never elaborated, no "unused" warning
        self.divisor = bit_time(divisor)
        self._MustUse__silence = False
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        pts = rx_samples(self.divisor)
        step = _steps(pts)  # cycles between sample i and i + 1, minus one
        sync1, sync2 = Signal(init=1), Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), sync2.eq(sync1)]
        cnt = Signal(range(max(pts[0], *(b - a for a, b in zip(pts, pts[1:]))) + 1))
        bit = Signal(range(9))
        shreg = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~sync2):  # start bit edge: the sync latency cancels out (edge and samples alike)
                    m.d.sync += [cnt.eq(pts[0] - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(cnt == 0):
                    m.d.sync += [shreg.eq((shreg >> 1) | (sync2 << 7)), cnt.eq(step(bit)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
            with m.State("STOP"):
                with m.If(cnt == 0):
                    with m.If(sync2):
                        m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(shreg)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
            with m.State("BREAK"):  # wait for the line to go idle again
                with m.If(sync2):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """Sends the bytes of the stream ``i`` as 8N1 on ``tx`` (``ready`` while idle). Bit k of a
    frame starts ``tx_edges(divisor)[k]`` cycles after its start bit (``divisor`` >= 4, may be
    fractional); the line then idles at least 2 cycles before the next start bit."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: Divisor):
        self._MustUse__silence = True  # a refused divisor: never elaborated, no "unused" warning
        self.divisor = bit_time(divisor)
        self._MustUse__silence = False
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        edges = tx_edges(self.divisor)
        step = _steps(edges)  # bit k's length in cycles, minus one
        cnt = Signal(range(max(b - a for a, b in zip(edges, edges[1:]))))
        bit = Signal(range(11))
        shreg = Signal(10)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += self.tx.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [shreg.eq((self.i.payload << 1) | (1 << 9)), cnt.eq(0), bit.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                with m.If(cnt == 0):
                    m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1), bit.eq(bit + 1)]
                    with m.If(bit == 10):
                        m.d.sync += self.tx.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += cnt.eq(step(bit))
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
        return m

"""8N1 UART receiver and transmitter in Amaranth: components with a byte stream each
(``amaranth.lib.stream``)."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


def _divisor(divisor: int) -> int:
    if divisor < 4:
        raise ValueError("UART divisor must be >= 4 clock cycles per bit")
    return divisor


class UARTRx(wiring.Component):
    """Receives 8N1 bytes on ``rx`` into the stream ``o`` (no backpressure: a byte is valid
    for one cycle). ``divisor`` = clock cycles per bit (>= 4). A bad stop bit sets ``error``
    for one cycle."""

    rx: In(1, init=1)
    o: Out(stream.Signature(8, always_ready=True))
    error: Out(1)

    def __init__(self, divisor: int):
        self.divisor = _divisor(divisor)
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        d = self.divisor
        sync1, sync2 = Signal(init=1), Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), sync2.eq(sync1)]
        cnt = Signal(range(d * 3 // 2 + 1))
        bit = Signal(range(9))
        shreg = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~sync2):  # start bit edge: sample in the middle of data bit 0
                    m.d.sync += [cnt.eq(d + d // 2 - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(cnt == 0):
                    m.d.sync += [shreg.eq((shreg >> 1) | (sync2 << 7)), cnt.eq(d - 1), bit.eq(bit + 1)]
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
    """Sends the bytes of the stream ``i`` as 8N1 on ``tx`` (``ready`` while idle)."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = _divisor(divisor)
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        d = self.divisor
        cnt = Signal(range(d))
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
                    m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1), cnt.eq(d - 1), bit.eq(bit + 1)]
                    with m.If(bit == 10):
                        m.d.sync += self.tx.eq(1)
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += cnt.eq(cnt - 1)
        return m

"""8N1 UART receiver and transmitter in Amaranth (one byte stream each way)."""

from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Signal


class UARTRx(Elaboratable):
    """Receives 8N1 bytes on ``rx``; ``valid`` pulses for one cycle with ``data``.
    ``divisor`` = clock cycles per bit (>= 4). A bad stop bit sets ``error`` for one cycle."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError("UART divisor must be >= 4 clock cycles per bit")
        self.divisor = divisor
        self.rx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()
        self.error = Signal()

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
                        m.d.comb += [self.valid.eq(1), self.data.eq(shreg)]
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


class UARTTx(Elaboratable):
    """Sends ``data`` when ``valid`` and ``ready`` (stream handshake) as 8N1 on ``tx``."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError("UART divisor must be >= 4 clock cycles per bit")
        self.divisor = divisor
        self.tx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()
        self.ready = Signal()

    def elaborate(self, platform) -> Module:
        m = Module()
        d = self.divisor
        cnt = Signal(range(d))
        bit = Signal(range(11))
        shreg = Signal(10)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                m.d.sync += self.tx.eq(1)
                with m.If(self.valid):
                    m.d.sync += [shreg.eq((self.data << 1) | (1 << 9)), cnt.eq(0), bit.eq(0)]
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

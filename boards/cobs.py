"""COBS on the board: the receiving side's decoder (protocol.py, ``cobs_decode``, in logic).

The board's transmitter encodes in link.py (``BoardLink``), where the response bytes are
at hand by index; the decoder here sits between the UART receiver and the frame parser.
"""


from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class CobsDecoder(wiring.Component):
    """Byte in, byte out one cycle later (registered, so the UART receiver and the frame
    parser are not one long path; at most one decoded byte per received byte).

    ``i``: the received bytes. ``delim`` pulses on a 0x00 (a frame boundary: the decoder
    restarts); ``o``: the decoded bytes. The zero a block of
    fewer than 254 bytes stands for comes out when the next block's code byte arrives, so the
    zero before the delimiter is never emitted, as COBS requires."""

    i: In(stream.Signature(8, always_ready=True))
    o: Out(stream.Signature(8, always_ready=True))
    delim: Out(1)

    def elaborate(self, platform) -> Module:
        m = Module()
        left = Signal(8)  # data bytes left in this block (0: the next byte is a code byte)
        pending = Signal()  # the block that ended stands for a zero (its code was < 0xFF)
        m.d.sync += [self.delim.eq(self.i.valid & (self.i.payload == 0)), self.o.payload.eq(Mux(left == 0, 0, self.i.payload)),
                     self.o.valid.eq(0)]  # fmt: skip
        with m.If(self.i.valid):
            with m.If(self.i.payload == 0):
                m.d.sync += [left.eq(0), pending.eq(0)]
            with m.Elif(left == 0):  # a code byte: emit the previous block's zero, if any
                m.d.sync += [self.o.valid.eq(pending), left.eq(self.i.payload - 1), pending.eq(self.i.payload != 0xFF)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(1), left.eq(left - 1)]
        return m

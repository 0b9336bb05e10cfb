"""COBS on the board: the receiving side's decoder (protocol.py, ``cobs_decode``, in logic).

The board's transmitter encodes in link.py (``BoardLink``), where the response bytes are
at hand by index; the decoder here sits between the UART receiver and the frame parser.
"""


from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class CobsDecoder(wiring.Component):
    """Byte in, byte out, in the same cycle (at most one decoded byte per received byte).

    ``i_valid``/``i_data``: the received bytes. ``delim`` pulses on a 0x00 (a frame boundary:
    the decoder restarts); ``o_valid``/``o_data``: the next decoded byte. The zero a block of
    fewer than 254 bytes stands for comes out when the next block's code byte arrives, so the
    zero before the delimiter is never emitted, as COBS requires."""

    i_valid: In(1)
    i_data: In(8)
    o_valid: Out(1)
    o_data: Out(8)
    delim: Out(1)

    def elaborate(self, platform) -> Module:
        m = Module()
        left = Signal(8)  # data bytes left in this block (0: the next byte is a code byte)
        pending = Signal()  # the block that ended stands for a zero (its code was < 0xFF)
        m.d.comb += [self.delim.eq(self.i_valid & (self.i_data == 0)), self.o_data.eq(Mux(left == 0, 0, self.i_data))]
        with m.If(self.i_valid):
            with m.If(self.i_data == 0):
                m.d.sync += [left.eq(0), pending.eq(0)]
            with m.Elif(left == 0):  # a code byte: emit the previous block's zero, if any
                m.d.comb += self.o_valid.eq(pending)
                m.d.sync += [left.eq(self.i_data - 1), pending.eq(self.i_data != 0xFF)]
            with m.Else():
                m.d.comb += self.o_valid.eq(1)
                m.d.sync += left.eq(left - 1)
        return m

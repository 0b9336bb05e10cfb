"""The board's side of the protocol (protocol.py, version 3): UART in, COBS-decoded frames
parsed with CRC, pixels streamed into the core, results (or errors) framed and COBS-encoded
back out. Platform independent: the
board tops (top.py) wire ``rx``/``tx``/``leds`` to pins; the virtual board simulates it."""

from __future__ import annotations

import math

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO

from firstspike.boards import protocol as P
from firstspike.boards.cobs import CobsDecoder
from firstspike.boards.uart import Divisor, UARTRx, UARTTx, bit_time
from firstspike.hw.core import Core
from firstspike.hw.plan import CorePlan, HardwareError, plan_core
from firstspike.quantize.modelfile import ModelTables, tables_sha256


def board_plan(tables: ModelTables, lanes: int, spikes: bool, positions: int = 1, read_reg: bool = False) -> CorePlan:
    """The core a board runs: early exit (it stops at the first output spike: the same class,
    fired flag and time, fewer cycles) and, with the spike readout, the debug port; there a
    CLASSIFY_SPIKES request runs all T steps (the readout needs full runs), the others exit
    early. ``positions``: output positions per state word, ``read_reg``: registered state reads (plan_core)."""
    return plan_core(tables, lanes=lanes, debug=spikes, early_exit=True, positions=positions, read_reg=read_reg)


def model_hash(tables: ModelTables) -> bytes:
    """What INFO reports: the first 8 bytes of the model file's SHA-256."""
    return bytes.fromhex(tables_sha256(tables))[:8]


def _crc_step(crc: int, byte: int) -> int:
    c = crc ^ (byte << 8)
    for _ in range(8):
        c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
    return c


# the byte step of CRC-16/CCITT is linear over GF(2): output bit i = XOR of these input bits
_TAPS = [([k for k in range(16) if _crc_step(1 << k, 0) >> i & 1], [k for k in range(8) if _crc_step(0, 1 << k) >> i & 1])
         for i in range(16)]  # fmt: skip


def crc16_byte(crc, byte):
    """Next CRC-16/CCITT-FALSE after one byte (combinational, one XOR tree per bit)."""
    bits = []
    for ci, bi in _TAPS:
        terms = [crc[k] for k in ci] + [byte[k] for k in bi]
        x = terms[0]
        for tm in terms[1:]:
            x = x ^ tm
        bits.append(x)
    return Cat(*bits)


class BoardLink(Elaboratable):
    """Core + UART + frame logic. ``model_hash`` (8 bytes) is reported by INFO so the host
    can check that the board runs the same model file. With a debug core (``plan.debug``)
    a CLASSIFY_SPIKES request also gets every spike time, one SPIKES frame per debug beat;
    after a plain CLASSIFY the beats are drained unsent."""

    def __init__(self, plan: CorePlan, divisor: Divisor, model_hash: bytes = bytes(8),
                 timeout_cycles: int | None = None):
        self._MustUse__silence = True  # refused: never elaborated, no "unused" warning
        divisor = bit_time(divisor)  # UART clock cycles per bit, exact (may be fractional)
        if 10 * divisor <= plan.T + 5:
            raise HardwareError(f"UART divisor {divisor} too small for T={plan.T}: need 10*divisor > T+5 cycles")
        self._MustUse__silence = False
        self.plan = plan
        self.divisor = divisor
        self.model_hash = (bytes(model_hash) + bytes(8))[:8]
        self.timeout = timeout_cycles or math.ceil(40 * 10 * divisor)  # ~40 byte times of silence inside a frame
        self.rx = Signal(init=1)
        self.tx = Signal(init=1)
        self.busy = Signal()
        self.last_class = Signal(8)
        self.errors = Signal(8)  # count of frames answered with ERROR (wraps)

    def elaborate(self, platform) -> Module:
        p = self.plan
        m = Module()
        compact = p.T <= P.TIMES_T_MAX  # CLASSIFY_TIMES: spike times and runs of silent pixels (protocol.py)
        m.submodules.core = core = Core(p, time_input=compact)
        m.submodules.urx = urx = UARTRx(self.divisor)
        m.submodules.utx = utx = UARTTx(self.divisor)
        m.submodules.cobs = dec = CobsDecoder()
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.busy.eq(core.busy)]
        wiring.connect(m, urx.o, dec.i)
        N = p.n_inputs
        typ, seq = Signal(8), Signal(8)
        length, cnt = Signal(16), Signal(16)
        crc, rcrc = Signal(16, init=0xFFFF), Signal(16)
        byte = dec.o.payload
        got = dec.o.valid  # a decoded byte
        delim = dec.delim  # a 0x00 on the wire: a frame boundary
        timer = Signal(range(self.timeout + 1))
        # pixel hand-over to the core (one byte of slack: the core clears its buckets first)
        pend, pend_data = Signal(), Signal(8)
        with m.If(pend & core.pix_ready):
            m.d.sync += pend.eq(0)
        pcount = Signal(range(N + 1))  # pixels the core took for this image
        with m.If(core.pix_valid & core.pix_ready):
            m.d.sync += pcount.eq(pcount + 1)
        start_req, start_q = Signal(), Signal()  # the core's start, registered (off the UART-to-core path)
        m.d.sync += start_q.eq(start_req)
        m.d.comb += core.start.eq(start_q)
        full_run = Const(0)  # this request runs all T steps: CLASSIFY_SPIKES (it reads the spike times)
        if p.debug:
            full_run = typ == P.CLASSIFY_SPIKES
            if p.early_exit:
                m.d.comb += core.exit_early.eq(~full_run)
        use_gen = Signal()  # this frame's pixels come from the compact-frame generator
        over = Signal()  # a compact frame held more than N pixels
        gen_idle = Const(1)
        if compact:
            # compact frames: bytes are queued and expanded at the core's pace (a run of up to 128
            # silent pixels takes that many cycles, a byte arrives every 10 x divisor cycles)
            depth = max(4, math.ceil(N / (10 * self.divisor)) + 2)
            m.submodules.cfifo = cf = SyncFIFO(width=8, depth=depth)
            run = Signal(8)  # silent pixels still to issue
            g_valid, g_data = Signal(), Signal(8)
            full_img = pcount == N
            with m.If(run != 0):
                with m.If(full_img):
                    m.d.sync += [run.eq(0), over.eq(1)]
                with m.Else():
                    m.d.comb += [g_valid.eq(1), g_data.eq(p.T)]
                    with m.If(core.pix_ready):
                        m.d.sync += run.eq(run - 1)
            with m.Elif(cf.r_rdy):
                b = cf.r_data
                with m.If(b[7]):
                    m.d.comb += cf.r_en.eq(1)
                    m.d.sync += run.eq(b[:7] + 1)
                with m.Elif(full_img):
                    m.d.comb += cf.r_en.eq(1)
                    m.d.sync += over.eq(1)
                with m.Else():
                    m.d.comb += [g_valid.eq(1), g_data.eq(b), cf.r_en.eq(core.pix_ready)]
            gen_idle = (run == 0) & ~cf.r_rdy
            with m.If(cf.w_en & ~cf.w_rdy):  # cannot happen at this depth; never silently
                m.d.sync += over.eq(1)
            m.d.comb += [core.pix_valid.eq(Mux(use_gen, g_valid, pend)), core.pix_data.eq(Mux(use_gen, g_data, pend_data)),
                         core.pix_time.eq(use_gen), cf.w_data.eq(byte)]  # fmt: skip
        else:
            m.d.comb += [core.pix_valid.eq(pend), core.pix_data.eq(pend_data)]
        # result registers and response
        r_cls, r_fired, r_time, r_cycles = Signal(8), Signal(8), Signal(16), Signal(32)
        ecode = Signal(8)  # ERROR's code
        good = Signal()  # CLASSIFY frame's CRC was right
        DL = p.debug_lanes
        beats = p.debug_beats() if p.debug else 0
        kind = Signal(2)  # 0 RESULT, 1 INFO, 2 ERROR, 3 SPIKES
        beat, bidx, blast = Signal(32 * DL), Signal(16), Signal()  # the debug beat being sent
        spk = Signal()  # this image's spike times are to be sent

        def le(v: int, n: int) -> list[int]:
            return [v >> (8 * k) & 0xFF for k in range(n)]

        flags = (P.FLAG_SPIKES if p.debug else 0) | (P.FLAG_TIMES if compact else 0) | (P.FLAG_EARLY if p.early_exit else 0)
        info = [*b"FSPK", P.PROTOCOL_VERSION, *le(p.T, 2), *le(N, 4), p.num_classes, *self.model_hash,
                flags, *le(p.lanes, 2), *le(DL, 2), *le(beats, 4)]  # fmt: skip
        assert len(info) == P.INFO_LEN
        payloads = {
            0: [r_cls, r_fired, r_time[:8], r_time[8:], r_cycles[:8], r_cycles[8:16], r_cycles[16:24], r_cycles[24:]],
            1: info,
            2: [ecode],
        }
        if p.debug:
            payloads[3] = [bidx[:8], bidx[8:], *[beat[8 * k : 8 * k + 8] for k in range(4 * DL)]]
        i = Signal(range(max(len(pl) for pl in payloads.values()) + 8))  # index into the body
        g = Signal.like(i)  # start of the COBS block being sent
        code, rem = Signal(8), Signal(8)  # its code byte, data bytes still to send
        rtypes = {0: P.RESULT, 1: P.INFO_RSP, 2: P.ERROR, 3: P.SPIKES}
        out_byte = Signal(8)  # body[i]: type, seq, len, payload, crc
        out_len = Signal(16)  # payload length
        scrc = Signal(16)
        for k, pl in payloads.items():
            with m.If(kind == k):
                seqs = [rtypes[k], seq, *le(len(pl), 2), *pl]
                arr = Array(Const(v, 8) if isinstance(v, int) else v for v in seqs)
                m.d.comb += out_len.eq(len(pl))
                with m.If(i < len(seqs)):
                    m.d.comb += out_byte.eq(arr[i])
                with m.Elif(i == len(seqs)):
                    m.d.comb += out_byte.eq(scrc[:8])
                with m.Else():
                    m.d.comb += out_byte.eq(scrc[8:])
        body_len = out_len + P.HEADER_LEN + P.CRC_LEN
        ob = Signal(8)  # out_byte, registered
        m.d.sync += ob.eq(out_byte)
        mid_frame = Signal()
        with m.If(urx.o.valid | ~mid_frame):
            m.d.sync += timer.eq(0)
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        expired = timer == self.timeout

        def respond(k: int, err: int = 0) -> None:
            m.d.sync += [kind.eq(k), ecode.eq(err), i.eq(0), scrc.eq(0xFFFF)]
            if k == 2:
                m.d.sync += self.errors.eq(self.errors + 1)
            m.next = "CRC"

        is_raw = (typ == P.CLASSIFY) | (typ == P.CLASSIFY_SPIKES) if p.debug else typ == P.CLASSIFY
        is_cls = is_raw | (typ == P.CLASSIFY_TIMES) if compact else is_raw

        def cut_image(err: int) -> None:
            """A frame ended early after its header: a CLASSIFY's image is (partly) in the core
            (complete it, drop its result); anything else is answered with ERROR ``err``."""
            with m.If(is_cls):
                m.d.sync += [good.eq(0), ecode.eq(err)]
                m.next = "SETTLE"
            with m.Else():
                respond(2, err)

        def ended(action) -> None:
            """The Elif branches of a state inside a frame: cut short by a 0x00 (ERROR 2) or
            stalled for ``timeout`` cycles (ERROR 3), handled by ``action(code)``."""
            with m.Elif(delim):
                action(P.ERR_FRAME)
            with m.Elif(expired):
                action(P.ERR_TIMEOUT)

        def answer_error(err: int) -> None:
            respond(2, err)

        with m.FSM():
            with m.State("SKIP"):  # after an answer or an error: nothing until the next 0x00
                with m.If(delim):
                    m.next = "TYPE"
            with m.State("TYPE"):  # after a 0x00: the first byte of a frame (or more 0x00)
                with m.If(got):
                    m.d.sync += [typ.eq(byte), crc.eq(crc16_byte(Const(0xFFFF, 16), byte))]
                    m.next = "SEQ"
            with m.State("SEQ"):
                m.d.comb += mid_frame.eq(1)
                with m.If(got):
                    m.d.sync += [seq.eq(byte), crc.eq(crc16_byte(crc, byte))]
                    m.next = "LEN0"
                ended(answer_error)
            with m.State("LEN0"):
                m.d.comb += mid_frame.eq(1)
                with m.If(got):
                    m.d.sync += [length[:8].eq(byte), crc.eq(crc16_byte(crc, byte))]
                    m.next = "LEN1"
                ended(answer_error)
            with m.State("LEN1"):
                m.d.comb += mid_frame.eq(1)
                full = Cat(length[:8], byte)
                with m.If(got):
                    m.d.sync += [length[8:].eq(byte), crc.eq(crc16_byte(crc, byte)), cnt.eq(0), pcount.eq(0),
                                 over.eq(0), use_gen.eq(0)]  # fmt: skip
                    with m.If(is_raw & (full == N)):
                        m.d.comb += start_req.eq(1)
                        m.next = "PIX"
                    if compact:  # a compact image: 1..N bytes
                        with m.Elif((typ == P.CLASSIFY_TIMES) & (full != 0) & (full <= N)):
                            m.d.comb += start_req.eq(1)
                            m.d.sync += use_gen.eq(1)
                            m.next = "PIX"
                    with m.Elif((typ == P.INFO) & (full == 0)):
                        m.next = "CRC0"
                    with m.Else():
                        respond(2, P.ERR_FRAME)
                ended(answer_error)
            with m.State("PIX"):
                m.d.comb += mid_frame.eq(1)
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_byte(crc, byte)), cnt.eq(cnt + 1)]
                    if compact:
                        m.d.comb += cf.w_en.eq(use_gen)
                        with m.If(~use_gen):
                            m.d.sync += [pend.eq(1), pend_data.eq(byte)]
                    else:
                        m.d.sync += [pend.eq(1), pend_data.eq(byte)]
                    with m.If(cnt == length - 1):
                        m.next = "CRC0"
                ended(cut_image)
            with m.State("SETTLE"):  # the pixels in flight reach the core; then the image is whole or not
                with m.If(gen_idle & ~pend):
                    with m.If((pcount == N) & ~over):
                        m.next = "WAIT"
                    with m.Else():
                        m.d.sync += [good.eq(0), use_gen.eq(0)]
                        with m.If(good):  # CRC right, wrong number of pixels
                            m.d.sync += ecode.eq(P.ERR_FRAME)
                        m.next = "FLUSH"
            with m.State("FLUSH"):  # a short frame: finish the image with silent pixels, drop its result
                with m.If(pcount == N):
                    m.next = "WAIT"
                with m.Elif(~pend):
                    m.d.sync += [pend.eq(1), pend_data.eq(0)]
            with m.State("CRC0"):
                m.d.comb += mid_frame.eq(1)
                with m.If(got):
                    m.d.sync += rcrc[:8].eq(byte)
                    m.next = "CRC1"
                ended(cut_image)
            with m.State("CRC1"):
                m.d.comb += mid_frame.eq(1)
                ok = Cat(rcrc[:8], byte) == crc
                with m.If(got):
                    with m.If(is_cls):
                        m.d.sync += [good.eq(ok), ecode.eq(P.ERR_CRC)]
                        m.next = "SETTLE"
                    with m.Elif(ok):
                        respond(1)
                    with m.Else():
                        respond(2, P.ERR_CRC)
                ended(cut_image)
            with m.State("WAIT"):
                m.d.comb += core.res_ready.eq(1)
                with m.If(core.res_valid):
                    want_spikes = good & full_run if p.debug else 0
                    m.d.sync += [r_cls.eq(core.res_class), r_fired.eq(core.res_fired), r_time.eq(core.res_time),
                                 r_cycles.eq(core.res_cycles), bidx.eq(0), spk.eq(want_spikes),
                                 kind.eq(Mux(good, 0, 2)), i.eq(0), scrc.eq(0xFFFF)]  # fmt: skip
                    with m.If(good):
                        m.d.sync += self.last_class.eq(core.res_class)
                    with m.Else():
                        m.d.sync += self.errors.eq(self.errors + 1)
                    # unrequested spike times are drained *before* answering: once the host has
                    # its answer it may send the next request at once, and must not be ignored
                    m.next = "CRC" if not p.debug else "DRAIN"
                    if p.debug:  # a core that exited early streams nothing
                        with m.If(want_spikes | (~full_run if p.early_exit else 0)):
                            m.next = "CRC"
            # the answer: CRC over the body first, then 00 COBS(body) 00, one block at a time.
            # body[i] is registered (``ob``, a cycle after i changes: the byte mux over the
            # payloads and what uses it are two paths), so each state that reads it is
            # entered through a one-cycle state that lets it settle (CRC, SCAN, DATA_RD)
            with m.State("CRC"):
                m.next = "CRC_ADD"
            with m.State("CRC_ADD"):
                m.d.sync += [scrc.eq(crc16_byte(scrc, ob)), i.eq(i + 1)]
                m.next = "CRC"
                with m.If(i == body_len - P.CRC_LEN - 1):
                    m.d.sync += i.eq(0)
                    m.next = "OPEN"
            with m.State("OPEN"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(0)]
                with m.If(utx.i.ready):
                    m.d.sync += g.eq(0)
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.next = "SCAN_END"
            with m.State("SCAN_END"):  # find the block's end: a zero, the body's end or 254 bytes
                m.next = "SCAN"
                with m.If((i < body_len) & (ob != 0) & (i - g < 254)):
                    m.d.sync += i.eq(i + 1)
                with m.Else():
                    m.d.sync += [code.eq(i - g + 1), rem.eq(i - g), i.eq(g)]
                    m.next = "CODE"
            with m.State("CODE"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(code)]
                with m.If(utx.i.ready):
                    m.next = "DATA_RD"
                    with m.If(rem == 0):
                        m.next = "BLOCK"
            with m.State("DATA_RD"):
                m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(ob)]
                with m.If(utx.i.ready):
                    m.d.sync += [i.eq(i + 1), rem.eq(rem - 1)]
                    m.next = "DATA_RD"
                    with m.If(rem == 1):
                        m.next = "BLOCK"
            with m.State("BLOCK"):  # a block was sent: the next one starts after its zero
                with m.If(i == body_len):
                    m.next = "CLOSE"
                with m.Elif(code == 0xFF):
                    m.d.sync += g.eq(i)
                    m.next = "SCAN"
                with m.Else():
                    m.d.sync += [i.eq(i + 1), g.eq(i + 1)]
                    m.next = "SCAN"
            with m.State("CLOSE"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(0)]
                with m.If(utx.i.ready):
                    m.next = "SKIP"
                    if p.debug:
                        with m.If(kind == 3):
                            m.d.sync += bidx.eq(bidx + 1)
                            with m.If(blast):
                                m.d.sync += spk.eq(0)
                        with m.If(spk & ~((kind == 3) & blast)):
                            m.next = "DBG"
            if p.debug:
                with m.State("DRAIN"):  # spike times nobody asked for: read and drop them
                    m.d.comb += core.dbg_ready.eq(1)
                    with m.If(core.dbg_valid & core.dbg_last):
                        m.next = "CRC"
                with m.State("DBG"):  # the next debug beat, framed as SPIKES
                    m.d.comb += core.dbg_ready.eq(1)
                    with m.If(core.dbg_valid):
                        m.d.sync += [beat.eq(core.dbg_data), blast.eq(core.dbg_last), kind.eq(3), i.eq(0),
                                     scrc.eq(0xFFFF)]  # fmt: skip
                        m.next = "CRC"
        return m

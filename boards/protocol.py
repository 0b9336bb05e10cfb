"""The host <-> board frame protocol (UART 8N1, version 3), shared by the host runtime, the
board's link logic (link.py) and the tests. docs/boards.md ("Protocol") is the reference a
client is written from; this is its summary.

On the wire every frame, in both directions, is ``00 COBS(body) 00``: the body is
Consistent-Overhead-Byte-Stuffed, so 0x00 appears only as the delimiter and no byte of a
payload can ever start a frame. Empty frames (``00 00``) are ignored.

    body = type u8, seq u8, len u16, payload[len], crc u16
    multi-byte fields little-endian; crc = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF,
    no reflection, no final XOR) over type, seq, len and payload.

seq: chosen by the host, echoed unchanged by the board in every frame of its answer (the
host drops answers whose seq is not the one it sent; the board never checks it).

Requests:  CLASSIFY (payload: the image's pixels, exactly INFO's ``inputs`` bytes, (c, y, x)
order), CLASSIFY_SPIKES (the same, and the board also sends every spike time), INFO (no
payload), CLASSIFY_TIMES (the compact image, ``times_payload``: the pixels' spike times from
the model's input table, one byte each (0..T-1), and runs of silent pixels, one byte each
(0x80 | count - 1, count 1..128); 1..inputs bytes that expand to exactly ``inputs`` pixels;
boards with INFO flag bit 1, T <= 128).
Responses: RESULT (class u8, fired u8, time u16, cycles u32); after a CLASSIFY_SPIKES's
RESULT, one SPIKES frame per debug beat of the core (beat index u16, then the beat's
debug-lane values as i32: see hw/plan.py, ``CorePlan.debug_words``); INFO (magic b"FSPK",
protocol version u8, T u16, inputs u32, classes u8, first 8 bytes of the model file's
SHA-256, flags u8 (bit 0: spike readout built in), lanes u16, debug lanes u16, debug beats
u32); ERROR (code u8: 1 bad CRC, 2 bad type or length, 3 timeout inside a frame). After an
ERROR the board ignores everything up to the next 0x00.
The board is stop-and-wait: one request at a time; bytes that arrive while it computes or
answers are dropped, and it listens again from the next 0x00. A request whose bytes were
lost or corrupted gets an ERROR or no answer; the host retries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

DELIM = 0x00
# 3 Mbaud: the fastest rate of the ULX3S's FT231X (3 MHz / 1), which the iCEBreaker's FT2232H
# makes exactly too (12 MHz / 4); 10, 16 2/3 and 22 cycles a bit at the default core clocks
# (iCEBreaker 30 MHz, ULX3S 50 MHz and OrangeCrab 66 MHz from their PLLs; the UART times
# fractional bits, boards/uart.py); 26x 115200
DEFAULT_BAUD = 3_000_000
CLASSIFY = 0x01
INFO = 0x02
CLASSIFY_SPIKES = 0x03
CLASSIFY_TIMES = 0x04
RESULT = 0x81
INFO_RSP = 0x82
SPIKES = 0x83
ERROR = 0xFF
ERR_CRC, ERR_FRAME, ERR_TIMEOUT = 1, 2, 3
PROTOCOL_VERSION = 3
HEADER_LEN = 4  # type, seq, len
CRC_LEN = 2
INFO_LEN = 4 + 1 + 2 + 4 + 1 + 8 + 1 + 2 + 2 + 4
FLAG_SPIKES = 1
FLAG_TIMES = 2  # CLASSIFY_TIMES understood (models with T <= 128)
FLAG_EARLY = 4  # CLASSIFY / CLASSIFY_TIMES stop at the first output spike (CLASSIFY_SPIKES runs all T steps)
RUN_MAX = 128  # silent pixels one run byte stands for, at most
TIMES_T_MAX = 128  # CLASSIFY_TIMES codes a spike time in the 7 bits below the run flag: models with T <= this
RESULT_LEN = 8


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: ``data`` without any 0x00 (one code byte per run of
    up to 254 non-zero bytes; 0x00 is then free to delimit frames)."""
    out = bytearray()
    code_at, code = 0, 1
    out.append(0)
    for b in data:
        if b == 0:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
            continue
        out.append(b)
        code += 1
        if code == 0xFF:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of ``cobs_encode``; ValueError on a 0x00 or a code that runs past the end."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            raise ValueError("bad COBS block")
        out += data[i + 1 : i + code]
        if 0 in data[i + 1 : i + code]:
            raise ValueError("0x00 inside a COBS block")
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def body(typ: int, seq: int, payload: bytes) -> bytes:
    """A frame before stuffing: type, seq, len, payload, crc (the CRC covers all before it)."""
    b = bytes([typ, seq & 0xFF]) + struct.pack("<H", len(payload)) + payload
    return b + struct.pack("<H", crc16(b))


def frame(typ: int, seq: int, payload: bytes) -> bytes:
    """One frame as it goes on the wire: 00 COBS(body) 00."""
    return bytes([DELIM]) + cobs_encode(body(typ, seq, payload)) + bytes([DELIM])


@dataclass
class Frame:
    typ: int
    seq: int
    payload: bytes


class FrameReader:
    """Incremental parser of frames: feed bytes, get the whole frames whose COBS, length and
    CRC are right (anything else between two 0x00 is counted in ``bad`` and dropped)."""

    def __init__(self, max_len: int = 1 << 16):
        self.max_len = max_len
        self.buf = bytearray()
        self.bad = 0  # frames dropped (bad stuffing, length or CRC)

    def feed(self, data: bytes) -> list[Frame]:
        self.buf.extend(data)
        out = []
        while True:
            i = self.buf.find(bytes([DELIM]))
            if i < 0:
                if len(self.buf) > 2 * (self.max_len + HEADER_LEN + CRC_LEN) + 8:
                    self.bad += 1  # a lost delimiter: no frame is this long
                    self.buf.clear()
                return out
            chunk = bytes(self.buf[:i])
            del self.buf[: i + 1]
            if chunk:
                fr = self._parse(chunk)
                if fr is None:
                    self.bad += 1
                else:
                    out.append(fr)

    def _parse(self, chunk: bytes) -> Frame | None:
        try:
            b = cobs_decode(chunk)
        except ValueError:
            return None
        if len(b) < HEADER_LEN + CRC_LEN:
            return None
        (n,) = struct.unpack_from("<H", b, 2)
        if n > self.max_len or len(b) != HEADER_LEN + n + CRC_LEN:
            return None
        (crc,) = struct.unpack_from("<H", b, HEADER_LEN + n)
        if crc != crc16(b[: HEADER_LEN + n]):
            return None
        return Frame(b[0], b[1], b[HEADER_LEN : HEADER_LEN + n])


def times_payload(times: np.ndarray, T: int) -> bytes:
    """CLASSIFY_TIMES payload of one image's input spike times (model input table applied;
    >= T: silent): times as bytes, silent pixels as runs of up to RUN_MAX."""
    out = bytearray()
    run = 0
    for t in np.asarray(times).reshape(-1).tolist():
        if t >= T:
            run += 1
            if run == RUN_MAX:
                out.append(0x80 | (run - 1))
                run = 0
            continue
        if run:
            out.append(0x80 | (run - 1))
            run = 0
        out.append(int(t))
    if run:
        out.append(0x80 | (run - 1))
    return bytes(out)


def parse_result(p: bytes) -> tuple[int, int, int, int]:
    """class, fired, time, cycles."""
    return struct.unpack("<BBHI", p)


def parse_info(p: bytes) -> dict:
    magic, ver, T, n_in, classes, h, flags, lanes, dlanes, beats = struct.unpack("<4sBHIB8sBHHI", p)
    return {"magic": magic, "version": ver, "T": T, "inputs": n_in, "classes": classes, "model_sha256_prefix": h.hex(),
            "spikes": bool(flags & FLAG_SPIKES), "times": bool(flags & FLAG_TIMES),
            "early_exit": bool(flags & FLAG_EARLY), "lanes": lanes, "debug_lanes": dlanes, "debug_beats": beats}


def parse_spikes(p: bytes) -> tuple[int, np.ndarray]:
    """beat index, the beat's values (int64)."""
    (k,) = struct.unpack_from("<H", p)
    return k, np.frombuffer(p, dtype="<i4", offset=2).astype(np.int64)

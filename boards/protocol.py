"""The host <-> board frame protocol (UART, 8N1), shared by the host runtime, the board's
link logic (link.py) and the tests.

Request  (host -> board): 0xA5, type, seq, len (u16 LE), payload[len], crc (u16 LE)
Response (board -> host): 0x5A, type, seq, len (u16 LE), payload[len], crc (u16 LE)

crc = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over type, seq, len and payload.

Requests:  CLASSIFY (payload: the image's pixels, (c, y, x) order), CLASSIFY_SPIKES (the
same, and the board also sends every spike time), INFO (no payload).
Responses: RESULT (class u8, fired u8, time u16, cycles u32); after a CLASSIFY_SPIKES's
RESULT, one SPIKES frame per debug beat of the core (beat index u16, then the beat's
debug-lane values as i32: see hw/plan.py, ``CorePlan.debug_words``); INFO (magic b"FSPK",
protocol version u8, T u16, inputs u32, classes u8, first 8 bytes of the model file's
SHA-256, flags u8 (bit 0: spike readout built in), lanes u16, debug lanes u16, debug beats
u32); ERROR (code u8: 1 bad CRC, 2 bad type or length, 3 timeout inside a frame).
A request whose bytes were lost or corrupted gets an ERROR or no answer; the host retries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

REQ_SOF = 0xA5
RSP_SOF = 0x5A
CLASSIFY = 0x01
INFO = 0x02
CLASSIFY_SPIKES = 0x03
RESULT = 0x81
INFO_RSP = 0x82
SPIKES = 0x83
ERROR = 0xFF
ERR_CRC, ERR_FRAME, ERR_TIMEOUT = 1, 2, 3
PROTOCOL_VERSION = 2
INFO_LEN = 4 + 1 + 2 + 4 + 1 + 8 + 1 + 2 + 2 + 4
FLAG_SPIKES = 1
RESULT_LEN = 8


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(sof: int, typ: int, seq: int, payload: bytes) -> bytes:
    body = bytes([typ, seq & 0xFF]) + struct.pack("<H", len(payload)) + payload
    return bytes([sof]) + body + struct.pack("<H", crc16(body))


@dataclass
class Frame:
    typ: int
    seq: int
    payload: bytes


class FrameReader:
    """Incremental parser of response frames: feed bytes, get whole frames whose CRC is right
    (anything else is skipped up to the next start byte)."""

    def __init__(self, sof: int = RSP_SOF, max_len: int = 1 << 16):
        self.sof = sof
        self.max_len = max_len
        self.buf = bytearray()
        self.bad = 0  # frames dropped (bad CRC or length)

    def feed(self, data: bytes) -> list[Frame]:
        self.buf.extend(data)
        out = []
        while True:
            i = self.buf.find(bytes([self.sof]))
            if i < 0:
                self.buf.clear()
                return out
            del self.buf[:i]
            if len(self.buf) < 5:
                return out
            n = struct.unpack_from("<H", self.buf, 3)[0]
            if n > self.max_len:
                self.bad += 1
                del self.buf[:1]
                continue
            if len(self.buf) < 7 + n:
                return out
            body = bytes(self.buf[1 : 5 + n])
            (crc,) = struct.unpack_from("<H", self.buf, 5 + n)
            if crc != crc16(body):
                self.bad += 1
                del self.buf[:1]
                continue
            out.append(Frame(body[0], body[1], body[4:]))
            del self.buf[: 7 + n]


def parse_result(p: bytes) -> tuple[int, int, int, int]:
    """class, fired, time, cycles."""
    return struct.unpack("<BBHI", p)


def parse_info(p: bytes) -> dict:
    magic, ver, T, n_in, classes, h, flags, lanes, dlanes, beats = struct.unpack("<4sBHIB8sBHHI", p)
    return {"magic": magic, "version": ver, "T": T, "inputs": n_in, "classes": classes, "model_sha256_prefix": h.hex(),
            "spikes": bool(flags & FLAG_SPIKES), "lanes": lanes, "debug_lanes": dlanes, "debug_beats": beats}


def parse_spikes(p: bytes) -> tuple[int, np.ndarray]:
    """beat index, the beat's values (int64)."""
    (k,) = struct.unpack_from("<H", p)
    return k, np.frombuffer(p, dtype="<i4", offset=2).astype(np.int64)

"""Host runtime: talk to a board (real, over a serial port, or the virtual board over a
pseudo-terminal) with the framed protocol of protocol.py; same calls as GoldenModel
(``run`` and ``classify``), so one script runs against either."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from firstspike.boards import protocol as P
from firstspike.errors import FirstSpikeError, InputError

log = logging.getLogger(__name__)


class BoardError(FirstSpikeError):
    """No board, no answer after the retries, or a board that runs another model."""


@dataclass
class BoardResult:
    classes: np.ndarray
    fired: np.ndarray
    times: np.ndarray
    cycles: np.ndarray
    retries: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # ERROR codes the board answered, by code


class BoardRuntime:
    """``port``: a device path (/dev/ttyUSB1), a pyserial URL, or an open serial object."""

    def __init__(self, port, baud: int = 115200, timeout: float = 2.0, retries: int = 5):
        import serial

        self.timeout = timeout
        self.retries = retries
        if isinstance(port, str):
            try:
                self.ser = serial.serial_for_url(port, baudrate=baud, timeout=0.02)
            except (serial.SerialException, OSError) as e:
                raise BoardError(f"cannot open serial port {port}: {e}. Is the board plugged in? "
                                 "(`firstspike deploy` lists what it found; use --port)") from None  # fmt: skip
        else:
            self.ser = port
        self.reader = P.FrameReader()
        self.seq = 0
        self._info: dict | None = None

    def close(self) -> None:
        self.ser.close()

    def __enter__(self) -> BoardRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, typ: int, payload: bytes, want: int) -> tuple[P.Frame, int, dict[int, int]]:
        """Send one request and wait for its answer; resend on ERROR, bad CRC or timeout."""
        errors: dict[int, int] = {}
        for attempt in range(self.retries + 1):
            self.seq = (self.seq + 1) & 0xFF
            self.ser.reset_input_buffer()
            self.reader = P.FrameReader()
            self.ser.write(P.frame(P.REQ_SOF, typ, self.seq, payload))
            self.ser.flush()
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                data = self.ser.read(4096)
                if not data:
                    continue
                for fr in self.reader.feed(data):
                    if fr.seq != self.seq:
                        continue  # a stale answer
                    if fr.typ == P.ERROR:
                        code = fr.payload[0] if fr.payload else 0
                        errors[code] = errors.get(code, 0) + 1
                        deadline = 0.0  # resend now
                        break
                    if fr.typ == want:
                        return fr, attempt, errors
            log.debug("request %d: no valid answer (attempt %d)", self.seq, attempt + 1)
        raise BoardError(f"no valid answer from the board after {self.retries + 1} attempts "
                         f"(errors reported: {errors or 'none'}); check the port, baud rate and bitstream")  # fmt: skip

    def info(self) -> dict:
        if self._info is None:
            fr, _, _ = self._request(P.INFO, b"", P.INFO_RSP)
            self._info = P.parse_info(fr.payload)
        return self._info

    def check_model(self, sha256_hex: str) -> None:
        """Refuse a board that runs another model file than ``sha256_hex``."""
        got = self.info()["model_sha256_prefix"]
        if not sha256_hex.startswith(got):
            raise BoardError(f"the board runs model {got}..., not {sha256_hex[:16]}...: rebuild and reprogram it "
                             "(`firstspike deploy MODEL --board B`)")  # fmt: skip

    def run(self, images: np.ndarray, progress: bool = False) -> BoardResult:
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise InputError(f"images must be uint8 (0..255), got {x.dtype}")
        x = x.reshape(len(x), -1)
        n_in = self.info()["inputs"]
        if x.shape[1] != n_in:
            raise InputError(f"images have {x.shape[1]} pixels, the board's model takes {n_in}")
        out = np.zeros((len(x), 4), np.int64)
        retries = 0
        errors: dict[int, int] = {}
        for k, img in enumerate(tqdm(x, desc="board", unit="img", disable=not progress, leave=False)):
            fr, r, e = self._request(P.CLASSIFY, img.tobytes(), P.RESULT)
            retries += r
            for c, v in e.items():
                errors[c] = errors.get(c, 0) + v
            out[k] = P.parse_result(fr.payload)
        return BoardResult(out[:, 0], out[:, 1], out[:, 2], out[:, 3], retries, errors)

    def classify(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        return self.run(images, progress=progress).classes

    def accuracy(self, images: np.ndarray, labels: np.ndarray, progress: bool = False) -> float:
        return float((self.classify(images, progress=progress) == labels).mean())

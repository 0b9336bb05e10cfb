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
    stream: np.ndarray | None = None  # with spikes=True: (N, values) in GoldenModel.run order
    layer_times: list[np.ndarray] | None = None  # with spikes=True: like GoldenResult.layer_times
    v_last: np.ndarray | None = None  # with spikes=True: the output layer's V(T-1), (N, classes)


class BoardRuntime:
    """``port``: a device path (/dev/ttyUSB1), a pyserial URL, or an open serial object."""

    def __init__(self, port, baud: int = P.DEFAULT_BAUD, timeout: float = 2.0, retries: int = 5):
        import serial

        self.timeout = timeout
        self.retries = retries
        if isinstance(port, str):
            try:
                self.ser = serial.serial_for_url(port, baudrate=baud, timeout=0.02)
            except (serial.SerialException, OSError) as e:
                raise BoardError(f"cannot open serial port {port}: {e}. Is the board plugged in? "
                                 "(Linux: `ls /dev/ttyUSB* /dev/ttyACM*`; pass it as --port)") from None  # fmt: skip
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

    def _request(self, typ: int, payload: bytes, want: int, beats: int = 0
                 ) -> tuple[P.Frame, int, dict[int, int], list[np.ndarray]]:  # fmt: skip
        """Send one request and wait for its answer (and ``beats`` SPIKES frames after it);
        resend on ERROR, bad CRC, a missing beat or timeout. The board is deterministic, so
        beats received on earlier attempts are kept and later attempts only fill the gaps."""
        errors: dict[int, int] = {}
        answer: P.Frame | None = None
        got: dict[int, np.ndarray] = {}
        for attempt in range(self.retries + 1):
            self.seq = (self.seq + 1) & 0xFF
            self.ser.reset_input_buffer()
            # the longest answer this board sends: a corrupted length byte cannot stall the parser
            self.reader = P.FrameReader(max_len=max(P.INFO_LEN, P.RESULT_LEN, 2 + 4 * (self._info or {}).get("debug_lanes", 0)))
            self.ser.write(P.frame(typ, self.seq, payload))
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
                        answer = fr
                    elif fr.typ == P.SPIKES and beats:
                        k, vals = P.parse_spikes(fr.payload)
                        got.setdefault(k, vals)
                        deadline = time.monotonic() + self.timeout
                        if k == beats - 1 and len(got) < beats:
                            deadline = 0.0  # the last beat came, some were lost: ask again
                            break
                    if answer is not None and len(got) == beats:
                        return answer, attempt, errors, [got[k] for k in range(beats)]
            log.debug("request %d: no valid answer (attempt %d; answer %s, %d of %d beats)", self.seq, attempt + 1,
                      answer is not None, len(got), beats)  # fmt: skip
        raise BoardError(f"no valid answer from the board after {self.retries + 1} attempts "
                         f"(errors reported: {errors or 'none'}); check the port, the baud rate (the bitstream's --baud, default "
                         f"{P.DEFAULT_BAUD:,}) and that the bitstream is of this firstspike (protocol {P.PROTOCOL_VERSION})")  # fmt: skip

    def info(self) -> dict:
        if self._info is None:
            fr, _, _, _ = self._request(P.INFO, b"", P.INFO_RSP)
            info = P.parse_info(fr.payload)
            if info["magic"] != b"FSPK" or info["version"] != P.PROTOCOL_VERSION:
                raise BoardError(f"the board speaks protocol {info['version']} ({info['magic']!r}), this firstspike "
                                 f"{P.PROTOCOL_VERSION}: rebuild and reprogram the bitstream (`firstspike deploy MODEL --board B`)")  # fmt: skip
            self._info = info
        return self._info

    def check_model(self, sha256_hex: str) -> None:
        """Refuse a board that runs another model file than ``sha256_hex``."""
        got = self.info()["model_sha256_prefix"]
        if not sha256_hex.startswith(got):
            raise BoardError(f"the board runs model {got}..., not {sha256_hex[:16]}...: rebuild and reprogram it "
                             "(`firstspike deploy MODEL --board B`)")  # fmt: skip

    def run(self, images: np.ndarray, progress: bool = False, spikes: bool = False, tables=None,
            compact: bool | None = None) -> BoardResult:  # fmt: skip
        """Classify ``images`` on the board. ``spikes=True`` also reads every layer's spike
        times and V(T-1) back (the board must be built with its spike readout; ``tables``,
        the model file the board runs, lays them out like GoldenModel.run). ``compact``: send
        CLASSIFY_TIMES frames (spike times, silent pixels as runs: about 4x fewer bytes on
        MNIST); needs ``tables`` (their input table codes the pixels) and a board that
        understands them. None: whenever possible."""
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise InputError(f"images must be uint8 (0..255), got {x.dtype}")
        x = x.reshape(len(x), -1)
        n_in = self.info()["inputs"]
        if x.shape[1] != n_in:
            raise InputError(f"images have {x.shape[1]} pixels, the board's model takes {n_in}")
        plan = self._spike_plan(tables) if spikes else None
        info = self.info()
        if compact is None:
            compact = tables is not None and not spikes and info["times"]
        if compact:
            from firstspike.quantize.modelfile import tables_sha256

            if tables is None or spikes:
                raise InputError("compact frames need the model tables (tables=...) and no spike readout")
            if not info["times"]:
                raise BoardError("this bitstream does not understand compact frames (CLASSIFY_TIMES): rebuild it "
                                 "with this firstspike, or pass compact=False")  # fmt: skip
            self.check_model(tables_sha256(tables))
        beats = plan.debug_beats() if plan else 0
        out = np.zeros((len(x), 4), np.int64)
        raw = np.zeros((len(x), beats, plan.debug_lanes if plan else 0), np.int64)
        retries = 0
        errors: dict[int, int] = {}
        for k, img in enumerate(tqdm(x, desc="board", unit="img", disable=not progress, leave=False)):
            if compact:
                typ, payload = P.CLASSIFY_TIMES, P.times_payload(tables.input_table[img], tables.T)
            else:
                typ, payload = (P.CLASSIFY_SPIKES if spikes else P.CLASSIFY), img.tobytes()
            fr, r, e, got = self._request(typ, payload, P.RESULT, beats)
            retries += r
            for c, v in e.items():
                errors[c] = errors.get(c, 0) + v
            out[k] = P.parse_result(fr.payload)
            if beats:
                raw[k] = np.stack(got)
        res = BoardResult(out[:, 0], out[:, 1], out[:, 2], out[:, 3], retries, errors)
        if plan is not None:
            from firstspike.sim.vectors import stream_layout

            res.stream = plan.unpack_debug(raw)
            n = len(x)
            shapes = [tuple(tables.input_shape)] + [tuple(ly.out_shape) for ly in tables.layers]
            blocks = stream_layout(tables)
            res.layer_times = [res.stream[:, a : a + ln].reshape(n, *sh) for (_nm, a, ln), sh in zip(blocks, shapes)]
            _nm, a, ln = blocks[-1]
            res.v_last = res.stream[:, a : a + ln]
        return res

    def _spike_plan(self, tables):
        """The board's debug-stream layout, after checking the board can send it for ``tables``."""
        from firstspike.hw.plan import plan_core
        from firstspike.quantize.modelfile import tables_sha256

        if tables is None:
            raise InputError("spikes=True needs the model tables the board runs (tables=...) to lay the spike times out")
        info = self.info()
        if not info["spikes"]:
            raise BoardError("this bitstream has no spike readout: rebuild it with `firstspike build MODEL --board B "
                             "--spikes` (off by default on the icebreaker, whose block RAM is too small for it)")  # fmt: skip
        self.check_model(tables_sha256(tables))
        plan = plan_core(tables, lanes=info["lanes"], debug=True)
        if plan.debug_beats() != info["debug_beats"] or plan.debug_lanes != info["debug_lanes"]:
            raise BoardError(f"the board sends {info['debug_beats']} beats of {info['debug_lanes']} values, this "
                             f"firstspike expects {plan.debug_beats()} of {plan.debug_lanes}: rebuild the bitstream")  # fmt: skip
        return plan

    def classify(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        return self.run(images, progress=progress).classes

    def accuracy(self, images: np.ndarray, labels: np.ndarray, progress: bool = False) -> float:
        return float((self.classify(images, progress=progress) == labels).mean())

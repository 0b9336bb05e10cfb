"""The model file (.fsm): the versioned contract between software and hardware.

Layout (all integers little-endian):

    offset 0   8 bytes   magic b"FSPKMDL\\0"
    offset 8   u16       format version (FORMAT_VERSION)
    offset 10  u16       reserved (0)
    offset 12  u32       header length H
    offset 16  H bytes   header: UTF-8 JSON (geometry, widths, decision rule, blob table)
    ...        payload   blobs referenced by the header as {"offset", "nbytes"} (offsets from
                         the start of the payload)
    last 32 bytes        SHA-256 of everything before them

Blobs: the input table (256 x u16), per layer the weights (binary: packed sign bits,
bit = 1 for +1, MSB first, order co, ci, ky, kx; fixed: two's complement ints of
``width`` bits stored as int8/int16/int32) and the integer thresholds (int32 per output
channel). Everything the core needs, nothing else.

Version 2 adds layer windows (``"windows": "ramp"`` in the header): every spiking layer fires
in a window of its own after all input spikes have arrived, its slope replaced by a constant
ramp at the window's start (``"ramps"``: int32 per output channel, >= 1). Files without
windows are written as version 1, byte for byte as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firstspike.errors import FirstSpikeError
from firstspike.files import atomic_write

MAGIC = b"FSPKMDL\0"
FORMAT_VERSION = 2  # the newest version this reads and writes (2: layer windows; others are written as 1)
WINDOWS = ("off", "ramp")  # ModelTables.windows
_PRE = struct.Struct("<8sHHI")
_DIGEST = 32
MAX_HEADER = 1 << 24


class ModelFileError(FirstSpikeError):
    """A model file that is missing, corrupt, tampered, truncated or from a newer version."""


@dataclass
class Layer:
    """One layer of the integer network."""

    kind: str  # conv | pool | fc
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: int = 0
    weights: np.ndarray | None = None  # (Co, C, KH, KW) int32: +-1 or fixed-point ints
    thresholds: np.ndarray | None = None  # (Co,) int64
    weight_bits: int = 1  # 1 = binary (+-1)
    slope_bits: int = 0  # signed widths of the two accumulators (worst case)
    potential_bits: int = 0
    ramps: np.ndarray | None = None  # (Co,) int64 >= 1: the slope in the layer's own window (windows "ramp")

    @property
    def fan_in(self) -> int:
        return self.in_shape[0] * self.kernel[0] * self.kernel[1]


@dataclass
class ModelTables:
    """Everything in a model file, decoded."""

    name: str
    T: int
    input_shape: tuple[int, int, int]
    input_table: np.ndarray  # (256,) int32, values 0..T (T = silent)
    layers: list[Layer]
    decision: dict[str, Any] = field(default_factory=lambda: dict(DECISION))
    meta: dict[str, Any] = field(default_factory=dict)
    windows: str = "off"  # "ramp": a window per layer (module docstring; golden._spiking_layer)

    @property
    def version(self) -> int:
        """The format version this file is written as: the oldest that carries it."""
        return 1 if self.windows == "off" else 2

    @property
    def spiking(self) -> list[Layer]:
        return [ly for ly in self.layers if ly.kind != "pool"]

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_shape[0]

    @property
    def silent_margin(self) -> bool:
        """If no output fires: the largest V(T-1) - threshold ("max-margin"), else the largest V(T-1)."""
        return self.decision["if_silent"] == "max-margin"


DECISION = {
    "rule": "earliest-spike",
    "ties": "lowest-index",
    "if_silent": "max-margin",  # largest V(T-1) - threshold
    "potential_at": "T-1",
    "silent_ties": "lowest-index",
}
# the rule of model files written before 2026-11-29 (largest V(T-1)); still read and run
DECISION_POTENTIAL = {**DECISION, "if_silent": "max-potential"}
DECISIONS = {"margin": DECISION, "potential": DECISION_POTENTIAL}  # by NetConfig.silent_rule


# --- bounds ------------------------------------------------------------------------------
def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's complement width holding every integer in [lo, hi]."""
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


def potential_range(w: np.ndarray, T: int, ramps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, the lowest and highest V(t) possible for t <= T-1:
    (T-1) * (sum of negative w) and (T-1) * (sum of positive w). With ``ramps`` (a window
    per layer: V(t') = A + t' r, A = sum w (T - t_i)): T * those sums, the highest + (T-1) r."""
    wf = w.reshape(w.shape[0], -1).astype(np.int64)
    neg, pos = np.clip(wf, None, 0).sum(1), np.clip(wf, 0, None).sum(1)
    if ramps is not None:
        return neg * T, pos * T + (T - 1) * np.asarray(ramps, np.int64)
    return neg * (T - 1), pos * (T - 1)


def clip_thresholds(thr: np.ndarray, w: np.ndarray, T: int, ramps: np.ndarray | None = None) -> np.ndarray:
    """Same behaviour, bounded values: a threshold <= 0 fires at t = 0 like 0 does, and one
    above the highest reachable V never fires, like highest V + 1."""
    _, hi = potential_range(w, T, ramps)
    return np.clip(np.asarray(thr, dtype=np.int64), 0, hi + 1)


def accumulator_bounds(w: np.ndarray, T: int, ramps: np.ndarray | None = None) -> tuple[int, int]:
    """Worst-case signed widths (slope, potential) of a layer's accumulators: the slope holds
    any partial sum of a channel's weights (and its ramp); the potential any V(t), t <= T-1,
    and any (clipped) threshold."""
    wf = w.reshape(w.shape[0], -1).astype(np.int64)
    hi_slope = int(np.clip(wf, 0, None).sum(1).max(initial=0))
    if ramps is not None:
        hi_slope = max(hi_slope, int(np.max(ramps, initial=0)))
    slope = signed_bits(int(np.clip(wf, None, 0).sum(1).min(initial=0)), hi_slope)
    lo, hi = potential_range(w, T, ramps)
    pot = signed_bits(int(lo.min(initial=0)), int(hi.max(initial=0)) + 1)
    return slope, pot


# --- writing -----------------------------------------------------------------------------
def _pack_weights(ly: Layer) -> bytes:
    w = ly.weights
    assert w is not None
    if ly.weight_bits == 1:
        return np.packbits((w.reshape(-1) > 0).astype(np.uint8)).tobytes()
    return w.astype(_int_dtype(ly.weight_bits)).reshape(-1).tobytes()


def _int_dtype(bits: int) -> np.dtype:
    return np.dtype("<i1") if bits <= 8 else np.dtype("<i2") if bits <= 16 else np.dtype("<i4")


def encode(tables: ModelTables) -> bytes:
    """Serialise to the file format (see module docstring)."""
    payload = bytearray()

    def blob(data: bytes) -> dict[str, int]:
        ref = {"offset": len(payload), "nbytes": len(data)}
        payload.extend(data)
        return ref

    header: dict[str, Any] = {
        "format": "firstspike-model",
        "version": tables.version,
        "name": tables.name,
        "T": int(tables.T),
        "input_shape": list(tables.input_shape),
        "input_table": blob(tables.input_table.astype("<u2").tobytes()),
        "decision": tables.decision,
        "layers": [],
        "meta": tables.meta,
    }
    if tables.windows != "off":
        header["windows"] = tables.windows
    for ly in tables.layers:
        d: dict[str, Any] = {"kind": ly.kind, "in_shape": list(ly.in_shape), "out_shape": list(ly.out_shape),
                             "kernel": list(ly.kernel), "stride": ly.stride, "padding": ly.padding}  # fmt: skip
        if ly.kind != "pool":
            d["weight_bits"] = ly.weight_bits
            d["weights"] = {"encoding": "sign-bits" if ly.weight_bits == 1 else "int", **blob(_pack_weights(ly))}
            d["thresholds"] = blob(ly.thresholds.astype("<i4").tobytes())
            d["slope_bits"], d["potential_bits"] = ly.slope_bits, ly.potential_bits
            if tables.windows == "ramp":
                assert ly.ramps is not None
                d["ramps"] = blob(np.asarray(ly.ramps).astype("<i4").tobytes())
        header["layers"].append(d)
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _PRE.pack(MAGIC, tables.version, 0, len(hbytes)) + hbytes + bytes(payload)
    return body + hashlib.sha256(body).digest()


def save(tables: ModelTables, path: str | os.PathLike) -> Path:
    """Write atomically (temporary file + rename): a failure leaves nothing half-written."""
    validate(tables)
    return atomic_write(path, encode(tables))


# --- reading -----------------------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelFileError(msg)


def decode(data: bytes, name: str = "<bytes>") -> ModelTables:
    """Parse and check a model file; any defect raises ModelFileError."""
    fix = "re-create it with `firstspike quantize CHECKPOINT -o FILE`"
    _need(len(data) >= _PRE.size + _DIGEST, f"{name}: truncated ({len(data)} bytes); {fix}")
    magic, version, reserved, hlen = _PRE.unpack_from(data)
    _need(magic == MAGIC, f"{name}: not a firstspike model file (bad magic); {fix}")
    _need(
        version <= FORMAT_VERSION,
        f"{name}: model file format version {version} is newer than this firstspike reads "
        f"({FORMAT_VERSION}); upgrade firstspike",
    )
    _need(version >= 1, f"{name}: invalid format version {version}; {fix}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    _need(hashlib.sha256(body).digest() == digest, f"{name}: checksum mismatch (file corrupt, truncated or edited); {fix}")
    _need(reserved == 0, f"{name}: reserved header field is {reserved}, not 0; {fix}")
    _need(hlen <= MAX_HEADER and _PRE.size + hlen <= len(body), f"{name}: header length out of range; {fix}")
    try:
        h = json.loads(body[_PRE.size : _PRE.size + hlen].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{name}: header is not valid JSON ({type(e).__name__}); {fix}") from e
    payload = body[_PRE.size + hlen :]
    try:
        return _from_header(h, payload, version)
    except ModelFileError as e:
        raise ModelFileError(f"{name}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise ModelFileError(f"{name}: malformed header ({type(e).__name__}: {e}); {fix}") from e


def _blob(payload: bytes, ref: dict, nbytes: int, what: str) -> bytes:
    off, n = int(ref["offset"]), int(ref["nbytes"])
    _need(n == nbytes, f"{what}: {n} bytes stored, {nbytes} expected")
    _need(0 <= off and off + n <= len(payload), f"{what}: blob outside the payload")
    return payload[off : off + n]


def _shape3(v: Any, what: str) -> tuple[int, int, int]:
    _need(isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and 1 <= x <= 1 << 16 for x in v), f"{what}: bad shape {v!r}")
    return (v[0], v[1], v[2])


def _from_header(h: dict, payload: bytes, version: int = FORMAT_VERSION) -> ModelTables:
    _need(isinstance(h, dict) and h.get("format") == "firstspike-model", "not a firstspike model header")
    windows = h.get("windows", "off")
    _need("windows" not in h or windows in WINDOWS[1:], f"unknown layer windows {windows!r} (this firstspike runs {WINDOWS})")
    _need(windows == "off" or version >= 2, f"layer windows in a version {version} file (they came with version 2)")
    T = h["T"]
    _need(isinstance(T, int) and 2 <= T <= 65535, f"T={T!r} out of range")
    table = np.frombuffer(_blob(payload, h["input_table"], 512, "input table"), dtype="<u2").astype(np.int32)
    _need(int(table.max()) <= T, "input table holds times beyond T")
    layers = []
    shape = _shape3(h["input_shape"], "input_shape")
    for i, d in enumerate(h["layers"]):
        kind = d["kind"]
        _need(kind in ("conv", "pool", "fc"), f"layer {i}: unknown kind {kind!r}")
        ins, outs = _shape3(d["in_shape"], f"layer {i}"), _shape3(d["out_shape"], f"layer {i}")
        _need(ins == shape, f"layer {i}: input shape {ins} does not follow {shape}")
        kh, kw = (int(k) for k in d["kernel"])
        stride, pad = int(d["stride"]), int(d["padding"])
        _need(1 <= kh <= 4096 and 1 <= kw <= 4096 and 1 <= stride <= 64 and 0 <= pad <= 64, f"layer {i}: bad geometry")
        ly = Layer(kind=kind, in_shape=ins, out_shape=outs, kernel=(kh, kw), stride=stride, padding=pad)
        if kind == "pool":
            _need(kh == kw == stride and pad == 0, f"layer {i}: pooling must be k x k with stride k")
            _need(outs == (ins[0], ins[1] // kh, ins[2] // kw), f"layer {i}: pooling output shape {outs} inconsistent")
        else:
            eh = (ins[1] + 2 * pad - kh) // stride + 1
            ew = (ins[2] + 2 * pad - kw) // stride + 1
            _need(outs[1:] == (eh, ew), f"layer {i}: output shape {outs} inconsistent with geometry")
            if kind == "fc":
                _need((kh, kw, pad, stride) == (ins[1], ins[2], 0, 1), f"layer {i}: fc must cover its whole input")
            co, n = outs[0], ins[0] * kh * kw
            _need(co * n <= 1 << 28, f"layer {i}: too large")
            bits = int(d["weight_bits"])
            _need(1 <= bits <= 16, f"layer {i}: weight_bits {bits} out of range 1..16")
            if bits == 1:
                raw = _blob(payload, d["weights"], (co * n + 7) // 8, f"layer {i} weights")
                w = np.unpackbits(np.frombuffer(raw, np.uint8))[: co * n].astype(np.int32) * 2 - 1
            else:
                dt = _int_dtype(bits)
                raw = _blob(payload, d["weights"], co * n * dt.itemsize, f"layer {i} weights")
                w = np.frombuffer(raw, dt).astype(np.int32)
                lim = 1 << (bits - 1)
                _need(int(w.min(initial=0)) >= -lim and int(w.max(initial=0)) < lim, f"layer {i}: weights exceed {bits} bits")
            ly.weights = w.reshape(co, ins[0], kh, kw)
            ly.thresholds = np.frombuffer(_blob(payload, d["thresholds"], 4 * co, f"layer {i} thresholds"), "<i4").astype(np.int64)
            ly.weight_bits = bits
            ly.slope_bits, ly.potential_bits = int(d["slope_bits"]), int(d["potential_bits"])
            if windows == "ramp":
                ly.ramps = np.frombuffer(_blob(payload, d["ramps"], 4 * co, f"layer {i} ramps"), "<i4").astype(np.int64)
                _need(int(ly.ramps.min()) >= 1, f"layer {i}: a ramp below 1")
            _need(np.array_equal(clip_thresholds(ly.thresholds, ly.weights, T, ly.ramps), ly.thresholds),
                  f"layer {i}: thresholds out of range")  # fmt: skip
            s, p = accumulator_bounds(ly.weights, T, ly.ramps)
            _need((ly.slope_bits, ly.potential_bits) == (s, p), f"layer {i}: accumulator widths do not match the weights")
        layers.append(ly)
        shape = outs
    _need(bool(layers) and layers[-1].kind == "fc", "the last layer must be fc (the output layer)")
    _need(h["decision"] in DECISIONS.values(), f"unsupported decision rule {h['decision']!r}")
    return ModelTables(name=str(h["name"]), T=T, input_shape=_shape3(h["input_shape"], "input_shape"), input_table=table,
                       layers=layers, decision=dict(h["decision"]), meta=dict(h.get("meta", {})), windows=windows)  # fmt: skip


def load(path: str | os.PathLike) -> ModelTables:
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p} is a folder, not a model file")
    if not p.is_file():
        raise ModelFileError(f"model file {p} not found; create it with `firstspike quantize CHECKPOINT -o {p}`")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read model file {p}: {e.strerror}") from e
    return decode(data, str(p))


def validate(tables: ModelTables) -> None:
    """Round-trip check before writing: what is written must load back identically
    (values that would wrap in their stored width are refused)."""
    back = decode(encode(tables), tables.name)
    same = (
        back.T == tables.T
        and back.input_shape == tuple(tables.input_shape)
        and np.array_equal(back.input_table, tables.input_table)
        and len(back.layers) == len(tables.layers)
        and back.windows == tables.windows
    )
    for a, b in zip(back.layers, tables.layers):
        same = same and (a.kind, a.in_shape, a.out_shape, a.kernel, a.stride, a.padding) == (
            b.kind, tuple(b.in_shape), tuple(b.out_shape), tuple(b.kernel), b.stride, b.padding)  # fmt: skip
        if a.kind != "pool":
            same = same and np.array_equal(a.weights, b.weights) and np.array_equal(a.thresholds, b.thresholds)
            same = same and (a.weight_bits, a.slope_bits, a.potential_bits) == (b.weight_bits, b.slope_bits, b.potential_bits)
            same = same and (a.ramps is None) == (b.ramps is None) and (a.ramps is None or np.array_equal(a.ramps, b.ramps))
    _need(same, f"{tables.name}: the tables do not survive encoding (values outside their stored widths?); nothing written")


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tables_sha256(tables: ModelTables) -> str:
    """SHA-256 of the tables' encoding (equal to sha256_of their saved file)."""
    return hashlib.sha256(encode(tables)).hexdigest()


def outputs_never_fire(tables: ModelTables) -> bool:
    """Every output threshold lies above the highest reachable potential (``NetConfig.output =
    "potential"``): the decision's rule for silent outputs decides every image, at the window's end."""
    out = tables.layers[-1]
    return out.weights is not None and bool((out.thresholds > potential_range(out.weights, tables.T, out.ramps)[1]).all())


def summary(tables: ModelTables, path: str | None = None) -> str:
    """Human-readable description (``firstspike info``)."""
    lines = [f"model {tables.name!r}" + (f" ({path})" if path else ""), f"  format version {tables.version}, T={tables.T}, input {tables.input_shape}"]
    if tables.windows != "off":
        lines.append(f"  layer windows: {tables.windows} (every spiking layer fires after its inputs' window, slope = its ramp)")
    lines.append(f"  input table: p=0 -> {tables.input_table[0]}, p=1 -> {tables.input_table[1]}, p=255 -> {tables.input_table[255]}")
    total_bits = 0
    for i, ly in enumerate(tables.layers):
        if ly.kind == "pool":
            lines.append(f"  [{i}] pool {ly.kernel[0]}x{ly.kernel[1]}  {ly.in_shape} -> {ly.out_shape}")
            continue
        assert ly.weights is not None and ly.thresholds is not None
        nbits = ly.weights.size * ly.weight_bits
        total_bits += nbits
        wdesc = "binary +-1" if ly.weight_bits == 1 else f"{ly.weight_bits}-bit ints"
        lines.append(
            f"  [{i}] {ly.kind} {ly.kernel[0]}x{ly.kernel[1]} s{ly.stride} p{ly.padding}  {ly.in_shape} -> {ly.out_shape}  "
            f"{wdesc}, {nbits} weight bits, thresholds {int(ly.thresholds.min())}..{int(ly.thresholds.max())}, "
            f"accumulators slope {ly.slope_bits} b / potential {ly.potential_bits} b"
            + (f", ramps {int(ly.ramps.min())}..{int(ly.ramps.max())}" if ly.ramps is not None else "")
        )
    lines.append(f"  weights total: {total_bits} bits ({total_bits / 8192:.1f} KiB)")
    lines.append(f"  decision: {tables.decision['rule']} (ties {tables.decision['ties']}), if none fires: "
                 f"{tables.decision['if_silent']} at {tables.decision['potential_at']}")  # fmt: skip
    if outputs_never_fire(tables):
        lines.append("  the outputs never fire (thresholds above any reachable potential): every image is decided "
                     f"by {tables.decision['if_silent']} at {tables.decision['potential_at']}")  # fmt: skip
    for k, v in tables.meta.items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)

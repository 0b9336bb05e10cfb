"""The model file (.fsm): exact round trips (binary and fixed-point), a precise
ModelFileError for every kind of defect (corrupt, truncated, wrong magic, newer version,
inconsistent-but-signed headers, out-of-range thresholds and widths, missing file), a
parser that never raises anything else (hypothesis fuzzing), atomic ``save`` and the
``info`` / ``quantize`` / ``eval`` command line on valid and corrupt files."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import firstspike.quantize.modelfile as mf
from firstspike.errors import ConfigError
from firstspike.quantize.export import tables_from_model
from firstspike.quantize.golden import GoldenModel
from firstspike.quantize.modelfile import (
    DECISION,
    DECISION_POTENTIAL,
    FORMAT_VERSION,
    MAGIC,
    Layer,
    ModelFileError,
    ModelTables,
    accumulator_bounds,
    decode,
    encode,
    load,
    potential_range,
    save,
    summary,
    validate,
)
from firstspike.train.model import CSNN, LayerSpec, NetConfig

PRE = struct.Struct("<8sHHI")  # magic, version, reserved, header length (module docstring)
DIGEST = 32
FIX = "firstspike quantize"
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ----------------------------------------------------------------------------------
def small_cfg(mode: str = "binary", T: int = 16) -> NetConfig:
    """conv 3x3 (3 ch, pad 1) -> pool 2 -> fc 4 on 1x10x10 inputs."""
    return NetConfig(
        name="t", T=T, mode=mode, input_shape=(1, 10, 10),
        layers=[LayerSpec("conv", channels=3, kernel=3, padding=1), LayerSpec("pool", kernel=2), LayerSpec("fc", channels=4)],
    )  # fmt: skip


def random_net(mode: str = "binary", seed: int = 0, T: int = 16) -> CSNN:
    """A small CSNN with random weights (and, binary, random per-channel alpha)."""
    torch.manual_seed(seed)
    model = CSNN(small_cfg(mode, T))
    with torch.no_grad():
        for ly in model.spiking_layers():
            if ly.binary:
                ly.log_alpha.uniform_(-4.0, 1.0)
            else:
                ly.weight.mul_(torch.empty(()).uniform_(0.01, 3.0))
    model.eval()
    return model


@functools.lru_cache(maxsize=None)
def _binary_bytes() -> bytes:
    return encode(tables_from_model(random_net("binary", seed=1)))


@functools.lru_cache(maxsize=None)
def _real8_bytes() -> bytes:
    return encode(tables_from_model(random_net("real", seed=2), weight_bits=8))


def binary_tables() -> ModelTables:
    """A fresh (mutable) copy of the random binary network's tables."""
    return decode(_binary_bytes())


def split_file(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header dict, payload) of a valid model file."""
    magic, version, _, hlen = PRE.unpack_from(data)
    assert magic == MAGIC and version == 1  # files without layer windows keep version 1
    header = json.loads(data[PRE.size : PRE.size + hlen])
    return header, data[PRE.size + hlen : -DIGEST]


def sign(body: bytes) -> bytes:
    """Append the SHA-256 trailer."""
    return body + hashlib.sha256(body).digest()


def build_file(
    header: dict[str, Any] | bytes, payload: bytes, version: int = FORMAT_VERSION, magic: bytes = MAGIC
) -> bytes:
    """A model file from a (modified) header and payload, with a valid checksum."""
    hb = header if isinstance(header, bytes) else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return sign(PRE.pack(magic, version, 0, len(hb)) + hb + payload)


def resign(data: bytes) -> bytes:
    """Replace the trailer of (possibly mutated) data by the checksum of what precedes it."""
    return sign(data[:-DIGEST]) if len(data) >= DIGEST else data


def rejects(data: bytes, *needles: str, name: str = "m.fsm") -> str:
    """decode(data) raises ModelFileError naming the file and every needle; returns the message."""
    with pytest.raises(ModelFileError) as ei:
        decode(data, name)
    msg = str(ei.value)
    assert msg.startswith(f"{name}: "), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def assert_tables_equal(a: ModelTables, b: ModelTables) -> None:
    """Every field of two ModelTables is identical (arrays elementwise, same integer values)."""
    assert (a.name, a.T, tuple(a.input_shape)) == (b.name, b.T, tuple(b.input_shape))
    assert (a.decision, a.meta) == (b.decision, b.meta)
    np.testing.assert_array_equal(a.input_table, b.input_table)
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert (la.kind, tuple(la.in_shape), tuple(la.out_shape), tuple(la.kernel), la.stride, la.padding) == (
            lb.kind, tuple(lb.in_shape), tuple(lb.out_shape), tuple(lb.kernel), lb.stride, lb.padding)  # fmt: skip
        if la.kind == "pool":
            continue
        assert (la.weight_bits, la.slope_bits, la.potential_bits) == (lb.weight_bits, lb.slope_bits, lb.potential_bits)
        assert la.weights.shape == lb.weights.shape and la.thresholds.shape == lb.thresholds.shape
        np.testing.assert_array_equal(la.weights, lb.weights)
        np.testing.assert_array_equal(la.thresholds, lb.thresholds)


def layer_entry(header: dict[str, Any], kind: str) -> dict[str, Any]:
    """The first layer dict of the given kind in a header."""
    return next(d for d in header["layers"] if d["kind"] == kind)


# --- 1. round trips ---------------------------------------------------------------------------
def test_silent_rule_travels_in_the_file() -> None:
    """NetConfig.silent_rule becomes the header's if_silent; files of the older rule
    ("max-potential") still load, and the golden model decides by the rule the file names."""
    model = random_net("binary", seed=5)
    t = tables_from_model(model)
    assert t.decision == DECISION and DECISION["if_silent"] == "max-margin"
    model.cfg.silent_rule = "potential"
    old = decode(encode(tables_from_model(model)))
    assert old.decision == DECISION_POTENTIAL
    # the same network under both rules, on images where no output fires (thresholds unreachable)
    for ly in (t, old):
        out = ly.layers[-1]
        out.thresholds = potential_range(out.weights, ly.T)[1] + 1 - np.arange(out.out_shape[0])
    x = np.random.default_rng(0).integers(0, 256, size=(40, 10, 10)).astype(np.uint8)
    new_res, old_res = GoldenModel(t).run(x), GoldenModel(old).run(x)
    assert (new_res.layer_times[-1] == t.T).all()
    np.testing.assert_array_equal(new_res.v_last, old_res.v_last)
    np.testing.assert_array_equal(old_res.classes, old_res.v_last.argmax(1))
    np.testing.assert_array_equal(new_res.classes, (new_res.v_last - t.layers[-1].thresholds).argmax(1))
    assert (new_res.classes != old_res.classes).any()  # the rules differ on these images


def test_binary_round_trip_exact() -> None:
    """Random binary net -> tables -> bytes -> tables: identical, and equal to the model's own
    +-1 weights / integer thresholds, geometry, T, widths and decision rule."""
    model = random_net("binary", seed=3)
    t = tables_from_model(model, meta={"dataset": "x", "exact": True})
    data = encode(t)
    d = decode(data)
    assert_tables_equal(t, d)
    assert d.T == 16 and d.input_shape == (1, 10, 10) and d.decision == DECISION and d.num_classes == 4
    assert [ly.kind for ly in d.layers] == ["conv", "pool", "fc"]
    assert [(ly.in_shape, ly.out_shape) for ly in d.layers] == [
        ((1, 10, 10), (3, 10, 10)), ((3, 10, 10), (3, 5, 5)), ((3, 5, 5), (4, 1, 1))]  # fmt: skip
    assert d.layers[0].kernel == (3, 3) and d.layers[0].padding == 1 and d.layers[2].kernel == (5, 5)
    np.testing.assert_array_equal(d.input_table, model.table.numpy())
    for ly, mod in zip(d.spiking, model.spiking_layers()):
        w, thr = mod.integer_weights()
        assert ly.weight_bits == 1 and set(np.unique(ly.weights)) <= {-1, 1}
        np.testing.assert_array_equal(ly.weights, w.numpy())
        lo, hi = potential_range(ly.weights, d.T)
        np.testing.assert_array_equal(ly.thresholds, np.clip(thr.numpy(), 0, hi + 1))
        assert (ly.slope_bits, ly.potential_bits) == accumulator_bounds(ly.weights, d.T)
    # thresholds really vary (random alpha), so the test would see a permutation or a wrap
    assert len(np.unique(np.concatenate([ly.thresholds for ly in d.spiking]))) > 2
    # deterministic: re-encoding the decoded tables gives the very same bytes
    assert encode(d) == data


def test_file_layout_matches_docstring() -> None:
    """magic, version, reserved 0, header length, UTF-8 JSON header, SHA-256 trailer of the rest."""
    data = _binary_bytes()
    magic, version, reserved, hlen = PRE.unpack_from(data)
    assert (magic, version, reserved) == (MAGIC, 1, 0)  # version 2 only for files with layer windows
    assert data[-DIGEST:] == hashlib.sha256(data[:-DIGEST]).digest()
    header, payload = split_file(data)
    assert header["format"] == "firstspike-model" and header["T"] == 16
    assert header["input_table"] == {"offset": 0, "nbytes": 512}
    assert len(payload) == 512 + sum(
        d["weights"]["nbytes"] + d["thresholds"]["nbytes"] for d in header["layers"] if d["kind"] != "pool")
    conv = layer_entry(header, "conv")
    assert conv["weights"]["encoding"] == "sign-bits" and conv["weights"]["nbytes"] == (3 * 1 * 3 * 3 + 7) // 8
    assert conv["thresholds"]["nbytes"] == 4 * 3


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_real_round_trip_fixed_point(bits: int) -> None:
    """Real-valued net exported with `bits`-bit weights: they fit the signed width (and use
    it: max |w| = 2^(bits-1) - 1), are stored as int8/int16 and round-trip exactly."""
    t = tables_from_model(random_net("real", seed=bits), weight_bits=bits)
    qmax = (1 << (bits - 1)) - 1
    for ly in t.spiking:
        assert ly.weight_bits == bits
        assert int(np.abs(ly.weights).max()) == qmax
        assert -(1 << (bits - 1)) <= int(ly.weights.min()) and int(ly.weights.max()) <= qmax
        assert (ly.slope_bits, ly.potential_bits) == accumulator_bounds(ly.weights, t.T)
    data = encode(t)
    d = decode(data)
    assert_tables_equal(t, d)
    header, _ = split_file(data)
    itemsize = 1 if bits <= 8 else 2
    for entry, ly in zip([e for e in header["layers"] if e["kind"] != "pool"], t.spiking):
        assert entry["weights"]["encoding"] == "int"
        assert entry["weights"]["nbytes"] == ly.weights.size * itemsize


def test_export_width_arguments() -> None:
    """Binary nets take no width; real ones 2..16 only (ConfigError otherwise)."""
    with pytest.raises(ConfigError, match="binary"):
        tables_from_model(random_net("binary"), weight_bits=8)
    for bad in (1, 17):
        with pytest.raises(ConfigError, match="out of range 2..16"):
            tables_from_model(random_net("real"), weight_bits=bad)
    assert tables_from_model(random_net("real")).layers[0].weight_bits == 8  # default


def test_summary_lists_layers() -> None:
    """The human-readable summary names every layer with its geometry and widths."""
    s = summary(binary_tables(), "m.fsm")
    assert s.startswith("model 't' (m.fsm)")
    assert "T=16" in s and "input (1, 10, 10)" in s
    assert "[0] conv 3x3 s1 p1  (1, 10, 10) -> (3, 10, 10)  binary +-1, 27 weight bits" in s
    assert "[1] pool 2x2  (3, 10, 10) -> (3, 5, 5)" in s
    assert "[2] fc 5x5 s1 p0  (3, 5, 5) -> (4, 1, 1)  binary +-1, 300 weight bits" in s
    assert "weights total: 327 bits" in s and "earliest-spike" in s


# --- 2. rejections ------------------------------------------------------------------------------
def test_every_flipped_byte_is_rejected() -> None:
    """Flipping any single byte (header, payload or trailer) is detected with a precise message."""
    data = _binary_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0xA5
        if i < 8:
            rejects(bytes(bad), "bad magic", FIX)
        elif i < 10:
            rejects(bytes(bad), "newer than this firstspike", "upgrade")
        else:
            rejects(bytes(bad), "checksum mismatch", FIX)


@pytest.mark.parametrize("n", [0, 1, 8, 15, 16, 47, 48, 100, -1, -32, -33], ids=lambda n: f"len{n}")
def test_truncated_file(n: int) -> None:
    """Every truncation is rejected; the message says 'truncated' (short) or checksum (longer)."""
    data = _binary_bytes()
    cut = data[:n] if n >= 0 else data[: len(data) + n]
    assert len(cut) < len(data)
    msg = rejects(cut, "truncated", FIX)
    if len(cut) < PRE.size + DIGEST:
        assert f"truncated ({len(cut)} bytes)" in msg
    elif cut[:8] == MAGIC:
        assert "checksum mismatch" in msg


@pytest.mark.parametrize(
    "magic", [b"FSPKMDL\x01", b"PK\x03\x04\x00\x00\x00\x00", b"\x00" * 8], ids=["near", "zip", "zeros"]
)
def test_bad_magic(magic: bytes) -> None:
    """Another file type (e.g. a torch zip checkpoint) is 'not a firstspike model file'."""
    header, payload = split_file(_binary_bytes())
    rejects(build_file(header, payload, magic=magic), "not a firstspike model file (bad magic)", FIX)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0xFFFF])
def test_newer_version_asks_for_upgrade(version: int) -> None:
    """A valid file from a newer format version: the message says so and asks to upgrade."""
    header, payload = split_file(_binary_bytes())
    data = build_file(header, payload, version=version)
    msg = rejects(data, f"format version {version}", "newer", "upgrade firstspike")
    assert f"({FORMAT_VERSION})" in msg
    assert "checksum" not in msg


def test_version_zero_is_invalid() -> None:
    header, payload = split_file(_binary_bytes())
    rejects(build_file(header, payload, version=0), "invalid format version 0")


def test_resigned_original_is_accepted() -> None:
    """Sanity of the helpers: rebuilding the unmodified header + payload decodes identically."""
    data = _binary_bytes()
    header, payload = split_file(data)
    assert build_file(header, payload, version=1) == data
    assert_tables_equal(decode(build_file(header, payload)), decode(data))  # (version 2 reads version 1's content)


def _edit(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets header[path...] = value (ints index lists; 'conv'/'pool'/'fc' a layer)."""

    def apply(h: dict[str, Any]) -> None:
        node: Any = h
        for key in path[:-1]:
            node = layer_entry(h, key) if key in ("conv", "pool", "fc") else node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return apply


_DELETE = object()

HEADER_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "conv-out_shape": (_edit(["conv", "out_shape"], [3, 9, 10]), "layer 0: output shape (3, 9, 10) inconsistent"),
    "conv-kernel": (_edit(["conv", "kernel"], [5, 5]), "inconsistent with geometry"),
    "conv-stride": (_edit(["conv", "stride"], 2), "inconsistent with geometry"),
    "conv-channels": (_edit(["conv", "out_shape"], [4, 10, 10]), "layer 0 weights: 4 bytes stored, 5 expected"),
    "pool-in_shape": (_edit(["pool", "in_shape"], [3, 10, 11]), "layer 1: input shape (3, 10, 11) does not follow"),
    "conv-zero-kernel": (_edit(["conv", "kernel"], [0, 3]), "layer 0: bad geometry"),
    "conv-shape-len": (_edit(["conv", "in_shape"], [1, 10]), "layer 0: bad shape [1, 10]"),
    "input_shape": (_edit(["input_shape"], [1, 12, 12]), "layer 0: input shape (1, 10, 10) does not follow (1, 12"),
    "pool-out_shape": (_edit(["pool", "out_shape"], [3, 4, 5]), "layer 1: pooling output shape (3, 4, 5) inconsistent"),
    "pool-stride": (_edit(["pool", "stride"], 1), "pooling must be k x k with stride k"),
    "fc-kernel": (_edit(["fc", "kernel"], [4, 4]), "layer 2: output shape (4, 1, 1) inconsistent with geometry"),
    "fc-padding": (_edit(["fc", "padding"], 1), "inconsistent with geometry"),
    "kind": (_edit(["pool", "kind"], "avgpool"), "layer 1: unknown kind 'avgpool'"),
    "no-output-layer": (lambda h: h["layers"].pop(), "the last layer must be fc"),
    "no-layers": (lambda h: h["layers"].clear(), "the last layer must be fc"),
    "T-too-small": (_edit(["T"], 1), "T=1 out of range"),
    "T-not-int": (_edit(["T"], "16"), "T='16' out of range"),
    "T-below-table": (_edit(["T"], 8), "input table holds times beyond T"),
    "format": (_edit(["format"], "other"), "not a firstspike model header"),
    "decision": (_edit(["decision", "rule"], "majority"), "unsupported decision rule"),
    "if_silent": (_edit(["decision", "if_silent"], "max-vote"), "unsupported decision rule"),
    "slope_bits": (_edit(["conv", "slope_bits"], 31), "layer 0: accumulator widths do not match the weights"),
    "potential_bits": (_edit(["fc", "potential_bits"], 1), "layer 2: accumulator widths do not match the weights"),
    "thr-nbytes": (_edit(["conv", "thresholds", "nbytes"], 8), "layer 0 thresholds: 8 bytes stored, 12 expected"),
    "weights-offset": (_edit(["fc", "weights", "offset"], 10**6), "layer 2 weights: blob outside the payload"),
    "negative-offset": (_edit(["input_table", "offset"], -1), "input table: blob outside the payload"),
    "missing-key": (_edit(["conv", "weight_bits"], _DELETE), "malformed header (KeyError"),
    "wrong-type": (_edit(["layers"], 7), "malformed header (TypeError"),
    "weight_bits-0": (_edit(["conv", "weight_bits"], 0), "layer 0: weight_bits 0 out of range 1..16"),
    "weight_bits-17": (_edit(["fc", "weight_bits"], 17), "layer 2: weight_bits 17 out of range 1..16"),
}


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=list(HEADER_EDITS))
def test_inconsistent_header_with_valid_checksum(edit: str) -> None:
    """A header edited (and re-signed) into something inconsistent: rejected, saying what."""
    apply, needle = HEADER_EDITS[edit]
    header, payload = split_file(_binary_bytes())
    apply(header)
    rejects(build_file(header, payload), needle)


@pytest.mark.parametrize(
    "hbytes", [b"{not json", b"\xff\xfe{}", b"[1, 2]", b"null"], ids=["syntax", "utf8", "list", "null"]
)
def test_header_not_an_object(hbytes: bytes) -> None:
    """A signed header that is not a JSON object: 'not valid JSON' or 'not a firstspike header'."""
    _, payload = split_file(_binary_bytes())
    msg = rejects(build_file(hbytes, payload))
    assert "not valid JSON" in msg or "not a firstspike model header" in msg


def test_header_length_out_of_range() -> None:
    """A header length field pointing past the end of the (re-signed) file."""
    data = bytearray(_binary_bytes())
    struct.pack_into("<I", data, 12, len(data))
    rejects(resign(bytes(data)), "header length out of range")


def _with_thresholds(data: bytes, kind: str, thr: np.ndarray) -> bytes:
    """The file with one layer's threshold blob overwritten (and the checksum redone)."""
    header, payload = split_file(data)
    ref = layer_entry(header, kind)["thresholds"]
    raw = np.asarray(thr, dtype="<i4").tobytes()
    assert len(raw) == ref["nbytes"]
    p = bytearray(payload)
    p[ref["offset"] : ref["offset"] + ref["nbytes"]] = raw
    return build_file(header, bytes(p))


@pytest.mark.parametrize("where", ["negative", "above-max"])
@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_thresholds_out_of_range(kind: str, where: str) -> None:
    """Thresholds below 0 or above the highest reachable potential + 1 (validly signed)."""
    t = binary_tables()
    ly = next(x for x in t.layers if x.kind == kind)
    _, hi = potential_range(ly.weights, t.T)
    thr = ly.thresholds.copy()
    thr[-1] = -1 if where == "negative" else hi[-1] + 2
    idx = t.layers.index(ly)
    rejects(_with_thresholds(_binary_bytes(), kind, thr), f"layer {idx}: thresholds out of range")
    thr[-1] = 0 if where == "negative" else hi[-1] + 1  # the bounds themselves are legal
    d = decode(_with_thresholds(_binary_bytes(), kind, thr))
    assert int(d.layers[idx].thresholds[-1]) == int(thr[-1])


def test_weights_exceeding_declared_width() -> None:
    """An 8-bit file relabelled (and re-signed) as 4-bit: its weights exceed 4 bits."""
    header, payload = split_file(_real8_bytes())
    layer_entry(header, "conv")["weight_bits"] = 4
    rejects(build_file(header, payload), "layer 0: weights exceed 4 bits")


def test_real_weight_bits_out_of_range() -> None:
    header, payload = split_file(_real8_bytes())
    layer_entry(header, "fc")["weight_bits"] = 20
    rejects(build_file(header, payload), "layer 2: weight_bits 20 out of range 1..16")


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    """load() of a file that does not exist: the path and `firstspike quantize` in the message."""
    p = tmp_path / "sub" / "nope.fsm"
    with pytest.raises(ModelFileError) as ei:
        load(p)
    assert str(p) in str(ei.value) and FIX in str(ei.value) and "not found" in str(ei.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    """load() of a corrupt file: the message starts with its path; a good file loads."""
    good, bad = tmp_path / "good.fsm", tmp_path / "bad.fsm"
    good.write_bytes(_binary_bytes())
    bad.write_bytes(_binary_bytes()[:-1] + b"\x00")
    assert_tables_equal(load(good), binary_tables())
    with pytest.raises(ModelFileError, match="checksum mismatch") as ei:
        load(bad)
    assert str(ei.value).startswith(f"{bad}: ")


# json.loads errors that are neither JSONDecodeError nor UnicodeDecodeError must not escape.
@pytest.mark.parametrize("hbytes", [b"[" * 100_000, b'{"T":' + b"1" * 5000 + b"}"], ids=["deep-nesting", "huge-int"])
def test_pathological_json_header_is_modelfileerror(hbytes: bytes) -> None:
    """A signed header that makes json.loads itself fail must still be a ModelFileError."""
    rejects(build_file(hbytes, b""), "header")


# --- 3. fuzzing -------------------------------------------------------------------------------------
def _decode_ok_or_modelfileerror(data: bytes) -> ModelTables | None:
    """decode() returns ModelTables or raises ModelFileError; anything else fails the test."""
    try:
        out = decode(data, "fuzz.fsm")
    except ModelFileError as e:
        assert str(e).startswith("fuzz.fsm: ")
        # which check caught it (pytest --hypothesis-show-statistics)
        event(str(e).split(";")[0].split("(")[0].split(":")[1][:40])
        return None
    assert isinstance(out, ModelTables)
    event("decoded")
    return out


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary byte strings never crash the parser."""
    assert _decode_ok_or_modelfileerror(data) is None


@FUZZ
@given(body=st.binary(max_size=4096), hlen=st.integers(0, 2**32 - 1) | st.integers(0, 4096), version=st.integers(0, 3))
def test_fuzz_signed_random_bodies(body: bytes, hlen: int, version: int) -> None:
    """Random bodies behind a right magic and a valid checksum never crash the parser."""
    assert _decode_ok_or_modelfileerror(sign(PRE.pack(MAGIC, version, 0, hlen) + body)) is None


_MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "set"]), st.integers(0, 1 << 20), st.integers(0, 255)
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]], lo: int = 0) -> bytes:
    """Apply the ops at positions >= lo (wrapped into the current length)."""
    b = bytearray(data)
    for op, pos, val in ops:
        lo_ = min(lo, len(b))
        i = lo_ + pos % (len(b) - lo_ + 1)
        if op == "flip" and i < len(b):
            b[i] ^= 1 << (val % 8)
        elif op == "set" and i < len(b):
            b[i] = val
        elif op == "insert":
            b[i:i] = bytes([val]) * (1 + val % 4)
        elif op == "delete":
            del b[i : i + 1 + val % 4]
        elif op == "truncate":
            del b[i:]
    return bytes(b)


@FUZZ
@given(
    ops=st.lists(_MUTATION, min_size=1, max_size=6),
    resigned=st.booleans(),
    real=st.booleans(),
    payload_only=st.booleans(),
)
def test_fuzz_mutated_valid_file(
    ops: list[tuple[str, int, int]], resigned: bool, real: bool, payload_only: bool
) -> None:
    """Flips, insertions, deletions and truncations of a valid file (anywhere, or only in the
    payload and trailer), with and without a redone checksum: ModelTables or ModelFileError,
    never another exception; unsigned changes are always caught."""
    data = _real8_bytes() if real else _binary_bytes()
    lo = PRE.size + PRE.unpack_from(data)[3] if payload_only else 0
    bad = _mutate(data, ops, lo)
    if resigned:
        bad = resign(bad)
    out = _decode_ok_or_modelfileerror(bad)
    if not resigned and bad != data:
        assert out is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path in a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@FUZZ
@given(data=st.data(), real=st.booleans())
def test_fuzz_signed_header_values(data: st.DataObject, real: bool) -> None:
    """Any field of a valid header replaced by (or deleted for) a random JSON value, re-signed:
    ModelTables or ModelFileError, never another exception."""
    header, payload = split_file(_real8_bytes() if real else _binary_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(header)
        path = data.draw(st.sampled_from(paths))
        parent: Any = header
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_JSON)
    try:
        hb = json.dumps(header).encode()
    except ValueError:  # e.g. ints too long for str(); nothing to test
        return
    _decode_ok_or_modelfileerror(build_file(hb, payload))


# --- 4. save ------------------------------------------------------------------------------------
def test_save_writes_exact_bytes(tmp_path: Path) -> None:
    """save() creates parent folders, writes encode()'s bytes and leaves no temporary file."""
    t = binary_tables()
    p = save(t, tmp_path / "a" / "b" / "m.fsm")
    assert p == tmp_path / "a" / "b" / "m.fsm"
    assert p.read_bytes() == encode(t)
    assert sorted(os.listdir(p.parent)) == ["m.fsm"]


def _failing_write(self: Path, data: bytes) -> int:
    """Write half of the data, then fail like a full disk."""
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(self))


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("fail_at", ["write_bytes", "replace"])
def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str, existing: bool) -> None:
    """A failure while writing or renaming leaves no target, no temp file, and an existing
    file at the target unchanged."""
    target = tmp_path / "m.fsm"
    old = b"old model file contents"
    if existing:
        target.write_bytes(old)
    if fail_at == "write_bytes":
        monkeypatch.setattr(mf.Path, "write_bytes", _failing_write)
    else:

        def failing_replace(src: Any, dst: Any) -> None:
            assert Path(src).is_file() and Path(src).read_bytes() == encode(binary_tables())  # temp fully written
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(mf.os, "replace", failing_replace)
    with pytest.raises(OSError):
        save(binary_tables(), target)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == (["m.fsm"] if existing else [])
    if existing:
        assert target.read_bytes() == old


@pytest.mark.parametrize("where", ["above-max", "negative"])
def test_save_refuses_tables_that_do_not_round_trip(tmp_path: Path, where: str) -> None:
    """Thresholds outside the clip range: save() raises and writes nothing."""
    t = binary_tables()
    ly = t.layers[0]
    _, hi = potential_range(ly.weights, t.T)
    ly.thresholds = ly.thresholds.copy()
    ly.thresholds[0] = hi[0] + 5 if where == "above-max" else -3
    with pytest.raises(ModelFileError, match="layer 0: thresholds out of range"):
        save(t, tmp_path / "m.fsm")
    with pytest.raises(ModelFileError):
        validate(t)
    assert os.listdir(tmp_path) == []


def test_save_refuses_wrong_accumulator_widths(tmp_path: Path) -> None:
    t = binary_tables()
    t.layers[-1].potential_bits += 1
    with pytest.raises(ModelFileError, match="accumulator widths"):
        save(t, tmp_path / "m.fsm")
    assert os.listdir(tmp_path) == []


def _wrapping_tables() -> ModelTables:
    """8-bit layer holding a weight 200 that int8 storage wraps to -56; chosen so that the
    accumulator widths and the (clipped) thresholds are valid both before and after."""
    T = 16
    w = np.array([[200, 0], [127, 127], [-128, -128]], dtype=np.int32).reshape(3, 1, 1, 2)
    sb, pb = accumulator_bounds(w, T)
    ly = Layer("fc", (1, 1, 2), (3, 1, 1), (1, 2), 1, 0, w, np.array([1, 5, 0], dtype=np.int64), 8, sb, pb)
    return ModelTables("wrap", T, (1, 1, 2), np.full(256, T, np.int32), [ly])


def test_save_refuses_weights_that_wrap(tmp_path: Path) -> None:
    """Weights outside the declared width would be stored wrapped (200 -> -56): save() must
    refuse rather than write a different network."""
    t = _wrapping_tables()
    try:
        save(t, tmp_path / "m.fsm")
    except ModelFileError:
        assert os.listdir(tmp_path) == []
        return
    back = load(tmp_path / "m.fsm")
    np.testing.assert_array_equal(back.layers[0].weights, t.layers[0].weights)


# --- 5. command line ----------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python -m firstspike ARGS`` in ``cwd`` and capture its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "firstspike", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2, a single ERROR line on stderr naming everything in names, no traceback."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "ERROR" in lines[0]
    for n in names:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A calibrated (untrained) csnn_tiny checkpoint and `firstspike quantize` of it."""
    from firstspike.data import load_split
    from firstspike.train.model import load_config
    from firstspike.train.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg, _ = load_config("csnn_tiny")
    model = CSNN(cfg)
    model.backend = "torch"
    model.calibrate(torch.from_numpy(load_split("mnist", "train").images[:64].copy()))
    model.eval()
    ck = d / "ckpt.pt"
    save_checkpoint(ck, {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "net": cfg.to_dict(), "train": {"dataset": "mnist"},
        "state_dict": model.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1, "history": [],
        "rng": torch.get_rng_state(), "test_acc": 0.0,
    })  # fmt: skip
    r = run_cli("quantize", "ckpt.pt", "-o", "m.fsm", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "model 'csnn_tiny' (m.fsm)" in r.stdout and "[4] fc" in r.stdout
    return {"dir": d, "model": model, "cfg": cfg, "fsm": d / "m.fsm"}


def test_cli_quantize_writes_loadable_exact_file(cli_model: dict[str, Any]) -> None:
    """The quantized file loads, matches the checkpoint's integer weights and records its source."""
    t = load(cli_model["fsm"])
    assert t.T == 32 and [ly.kind for ly in t.layers] == ["conv", "pool", "conv", "pool", "fc"]
    for ly, mod in zip(t.spiking, cli_model["model"].spiking_layers()):
        np.testing.assert_array_equal(ly.weights, mod.integer_weights()[0].numpy())
    assert t.meta["source_checkpoint_sha256"] == hashlib.sha256((cli_model["dir"] / "ckpt.pt").read_bytes()).hexdigest()
    assert t.meta["exact"] is True and t.meta["dataset"] == "mnist" and t.meta["epochs"] == 1
    assert sorted(os.listdir(cli_model["dir"])) == ["ckpt.pt", "m.fsm"]  # no temp files


def test_cli_info_valid(cli_model: dict[str, Any]) -> None:
    """`info` prints every layer and exits 0."""
    r = run_cli("info", "m.fsm", cwd=cli_model["dir"])
    assert r.returncode == 0, r.stderr
    for s in ["model 'csnn_tiny' (m.fsm)", "T=32", "[0] conv 5x5 s1 p2  (1, 28, 28) -> (8, 28, 28)", "[1] pool 2x2",
              "[2] conv 5x5", "[3] pool 2x2", "[4] fc 7x7 s1 p0  (16, 7, 7) -> (10, 1, 1)", "binary +-1"]:  # fmt: skip
        assert s in r.stdout, r.stdout


@pytest.mark.parametrize("cmd", ["info", "eval"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "newer"])
def test_cli_corrupt_file(cli_model: dict[str, Any], cmd: str, damage: str) -> None:
    """`info` / `eval` on a damaged model file: exit 2, one error line naming the file."""
    data = cli_model["fsm"].read_bytes()
    if damage == "flip":
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0xFF
        bad, needle = bytes(bad), "checksum mismatch"
    elif damage == "truncate":
        bad, needle = data[:40], "truncated"
    else:
        header, payload = split_file(data)
        bad, needle = build_file(header, payload, version=FORMAT_VERSION + 1), "upgrade firstspike"
    p = cli_model["dir"] / f"bad_{damage}_{cmd}.fsm"
    p.write_bytes(bad)
    try:
        r = run_cli(cmd, p.name, cwd=cli_model["dir"])
        assert_one_line_error(r, p.name, needle)
    finally:
        p.unlink()


def test_cli_info_missing_file(cli_model: dict[str, Any]) -> None:
    r = run_cli("info", "absent.fsm", cwd=cli_model["dir"])
    assert_one_line_error(r, "absent.fsm", "not found", FIX)


def test_cli_eval_dump(cli_model: dict[str, Any]) -> None:
    """`eval m.fsm --dump` writes images, classes and every layer's spike times; the classes
    and times equal the float model's (binary export is exact)."""
    d = cli_model["dir"]
    r = run_cli("eval", "m.fsm", "--limit", "100", "--dump", "d.npz", "--dump-images", "0:4", "--no-progress", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "accuracy (integer golden model)" in r.stdout and "(100 images, T=32)" in r.stdout
    try:
        with np.load(d / "d.npz") as z:
            arrays = {k: z[k] for k in z.files}
    finally:
        (d / "d.npz").unlink()
    assert not [f for f in os.listdir(d) if f.startswith(".")], os.listdir(d)
    assert arrays["images"].shape == (4, 28, 28) and arrays["images"].dtype == np.uint8
    assert arrays["classes"].shape == (4,) and set(arrays["classes"].tolist()) <= set(range(10))
    np.testing.assert_array_equal(arrays["indices"], [0, 1, 2, 3])
    shapes = [(4, 1, 28, 28), (4, 8, 28, 28), (4, 8, 14, 14), (4, 16, 14, 14), (4, 16, 7, 7), (4, 10, 1, 1)]
    # the names of verify and the report: "input", then layerK = the output of model layer K
    names = ["input", *(f"layer{k}" for k in range(len(shapes) - 1))]
    assert sorted(k for k in arrays if k.startswith("layer")) == names[1:] and int(arrays["dump_format"]) == 2
    for nm, s in zip(names, shapes):
        assert arrays[nm].shape == s
        assert 0 <= int(arrays[nm].min()) and int(arrays[nm].max()) <= 32
    from firstspike.data import load_split

    imgs = load_split("mnist", "test").images[:4]
    np.testing.assert_array_equal(arrays["images"], imgs)
    model: CSNN = cli_model["model"]
    cls, outs = model.classify(torch.from_numpy(imgs.copy()))
    np.testing.assert_array_equal(arrays["classes"], cls.numpy())
    for nm, o in zip(names, outs):
        np.testing.assert_array_equal(arrays[nm], o.numpy().astype(np.int16))

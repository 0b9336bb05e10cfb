"""Test networks and vectors for the hardware: random model tables, golden expectations,
and the flat debug-stream layout the core emits (CorePlan.readout_segments)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firstspike.quantize.golden import GoldenModel, GoldenResult
from firstspike.quantize.modelfile import DECISIONS, Layer, ModelTables, accumulator_bounds, clip_thresholds


def _conv_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def random_tables(rng: np.random.Generator, *, T: int | None = None, side: int | None = None, max_channels: int = 6,
                  max_layers: int = 2, weight_bits: int = 1, in_channels: int = 1, fire_bias: float | None = None,
                  out_weight_bits: int | None = None, silent_rule: str | None = None, hidden_fc: int = 0,
                  windows: bool = False) -> ModelTables:  # fmt: skip
    """A random valid network: conv layers (random kernel, stride, padding, optional 2x2 or
    3x3 pooling), up to ``hidden_fc`` hidden fc layers (none by default), then fc. Thresholds are drawn around the typical potential so that some
    neurons fire early, some late and some never (plus the edge values 0 and 'unreachable').
    ``out_weight_bits``: another weight width for the output layer (as binary networks with a
    k-bit classifier, ``NetConfig.out_weight_bits``). ``silent_rule``: the decision when no
    output fires ("margin" or "potential", ``DECISIONS``); drawn when not given. ``windows``: layer
    windows with a ramp per channel (model file version 2), thresholds drawn around A + (T/2) r."""
    T = int(T or rng.integers(2, 24))
    side = int(side or rng.integers(5, 11))
    shape = (in_channels, side, side)
    layers: list[Layer] = []

    def spiking(kind: str, ins: tuple[int, int, int], co: int, k: int, s: int, p: int, weight_bits: int = weight_bits) -> Layer:
        ho, wo = (1, 1) if kind == "fc" else (_conv_out(ins[1], k, s, p), _conv_out(ins[2], k, s, p))
        kh, kw = (ins[1], ins[2]) if kind == "fc" else (k, k)
        if weight_bits == 1:
            w = np.where(rng.random((co, ins[0], kh, kw)) < rng.uniform(0.3, 0.8), 1, -1)
        else:
            lim = 1 << (weight_bits - 1)
            w = rng.integers(-lim, lim, size=(co, ins[0], kh, kw))
        fan = ins[0] * kh * kw
        scale = fire_bias if fire_bias is not None else rng.uniform(0.05, 2.0)
        ramps = rng.integers(1, int(2 * np.sqrt(fan)) + 2, size=co).astype(np.int64) if windows else None
        mid = scale * np.sqrt(fan) * T / 4 + (0 if ramps is None else ramps * T / 2)
        thr = np.round(rng.normal(mid, T * np.sqrt(fan) / 4 + 1, size=co)).astype(np.int64)
        edge = rng.random(co)
        thr[edge < 0.1] = 0
        thr[edge > 0.95] = 1 << 30
        thr = clip_thresholds(thr, w, T, ramps)
        ly = Layer(kind=kind, in_shape=ins, out_shape=(co, ho, wo), kernel=(kh, kw), stride=1 if kind == "fc" else s,
                   padding=0 if kind == "fc" else p, weights=w.astype(np.int32), thresholds=thr, weight_bits=weight_bits,
                   ramps=ramps)  # fmt: skip
        ly.slope_bits, ly.potential_bits = accumulator_bounds(ly.weights, T, ramps)
        return ly

    cur = shape
    for _ in range(int(rng.integers(0, max_layers + 1))):
        k = int(rng.integers(1, 4))
        s = int(rng.integers(1, 3))
        p = int(rng.integers(0, k))
        ho = _conv_out(cur[1], k, s, p)
        if ho < 2:
            break
        ly = spiking("conv", cur, int(rng.integers(1, max_channels + 1)), k, s, p)
        layers.append(ly)
        cur = ly.out_shape
        pk = int(rng.choice([0, 0, 2, 3]))
        if pk and cur[1] >= pk:
            po = (cur[0], cur[1] // pk, cur[2] // pk)
            layers.append(Layer(kind="pool", in_shape=cur, out_shape=po, kernel=(pk, pk), stride=pk))
            cur = po
    for _ in range(int(rng.integers(0, hidden_fc + 1)) if hidden_fc else 0):
        ly = spiking("fc", cur, int(rng.integers(1, 3 * max_channels + 1)), 0, 1, 0)
        layers.append(ly)
        cur = ly.out_shape
    layers.append(spiking("fc", cur, int(rng.integers(1, 11)), 0, 1, 0, out_weight_bits or weight_bits))
    table = np.floor((255 - np.arange(256)) * T / 256).astype(np.int32)
    table[0] = T
    rule = silent_rule or str(rng.choice(sorted(DECISIONS)))
    return ModelTables(name="random", T=T, input_shape=shape, input_table=table, layers=layers, decision=dict(DECISIONS[rule]),
                       windows="ramp" if windows else "off")  # fmt: skip


def random_images(rng: np.random.Generator, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 images in mixed styles: uniform, sparse, all-0, all-255, few levels."""
    out = []
    for _ in range(n):
        style = rng.integers(0, 5)
        if style == 0:
            x = rng.integers(0, 256, size=shape)
        elif style == 1:
            x = rng.integers(0, 256, size=shape) * (rng.random(shape) < 0.2)
        elif style == 2:
            x = np.zeros(shape)
        elif style == 3:
            x = np.full(shape, 255)
        else:
            x = rng.choice([0, 1, 128, 255], size=shape)
        out.append(x)
    return np.asarray(out, dtype=np.uint8)


@dataclass
class Expected:
    """What the core must produce for a batch: class and the flat debug stream per image."""

    classes: np.ndarray  # (N,)
    stream: np.ndarray  # (N, total) int64: readout order
    first_time: np.ndarray  # (N,) earliest output spike step (T if none)


def expected(tables: ModelTables, images: np.ndarray) -> Expected:
    """The golden model's answers, laid out like the core's debug stream."""
    res: GoldenResult = GoldenModel(tables).run(images if images.ndim == 4 else images[:, None])
    n = len(images)
    parts = [t.reshape(n, -1).astype(np.int64) for t in res.layer_times] + [res.v_last.astype(np.int64)]
    out_t = res.layer_times[-1].reshape(n, -1)
    return Expected(res.classes, np.concatenate(parts, axis=1), out_t.min(axis=1))


def stream_layout(tables: ModelTables) -> list[tuple[str, int, int]]:
    """(name, start, length) of each block of the debug stream."""
    out, o = [], 0
    names = ["input"] + [f"layer{i}" for i in range(len(tables.layers))] + ["v_last"]
    sizes = [int(np.prod(tables.input_shape))] + [int(np.prod(ly.out_shape)) for ly in tables.layers] + [tables.num_classes]
    for nm, sz in zip(names, sizes):
        out.append((nm, o, sz))
        o += sz
    return out


def compare_streams(tables: ModelTables, got: np.ndarray, want: np.ndarray) -> dict[str, int]:
    """Mismatch count per block of the debug stream (0 everywhere = bit exact)."""
    return {nm: int((got[:, a : a + n] != want[:, a : a + n]).sum()) for nm, a, n in stream_layout(tables)}

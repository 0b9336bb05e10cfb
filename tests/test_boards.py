"""Boards: the frame protocol (CRC, parser against garbage), the UART and CRC blocks in
Amaranth's simulator, and the virtual board: the whole board logic (core + UART + frames)
in Verilator, driven by the unchanged host runtime through a pseudo-terminal, exact against
the golden model, and recovering from dropped and corrupted bytes."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from firstspike.boards import protocol as P
from firstspike.boards.link import BoardLink, crc16_byte
from firstspike.boards.runtime import BoardError, BoardRuntime
from firstspike.boards.uart import UARTRx, UARTTx
from firstspike.hw.plan import HardwareError, plan_core
from firstspike.quantize.golden import GoldenModel
from firstspike.sim.vectors import random_images, random_tables


def test_crc16_known_value() -> None:
    assert P.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


def test_frame_reader_survives_garbage_and_split_reads() -> None:
    rng = random.Random(0)
    frames = [P.frame(P.RSP_SOF, P.RESULT, i, bytes(rng.randrange(256) for _ in range(8))) for i in range(20)]
    stream = bytearray()
    for f in frames:
        stream += bytes(rng.randrange(256) for _ in range(rng.randrange(5)))  # noise between frames
        stream += f
    bad = bytearray(frames[0])
    bad[7] ^= 0x10  # one corrupted frame in the middle
    stream += bad + frames[1]
    r = P.FrameReader()
    got = []
    i = 0
    while i < len(stream):
        n = rng.randrange(1, 9)
        got += r.feed(bytes(stream[i : i + n]))
        i += n
    seqs = [f.seq for f in got]
    assert seqs[-21:] == list(range(20)) + [1]  # noise may not fake a frame with a valid CRC...
    assert all(len(f.payload) == 8 for f in got[-21:])


def test_crc_block_equals_software() -> None:
    m = Module()
    c, b, o = Signal(16), Signal(8), Signal(16)
    m.d.comb += o.eq(crc16_byte(c, b))
    rng = random.Random(1)
    res = []

    async def bench(ctx) -> None:
        for _ in range(500):
            cv, bv = rng.randrange(1 << 16), rng.randrange(256)
            ctx.set(c, cv)
            ctx.set(b, bv)
            res.append((cv, bv, ctx.get(o)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert all(P.crc16(bytes([bv]), cv) == ov for cv, bv, ov in res)


def test_uart_loopback() -> None:
    """TX -> RX at divisor 5: every byte value arrives, in order."""
    m = Module()
    m.submodules.tx = tx = UARTTx(5)
    m.submodules.rx = rx = UARTRx(5)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = list(range(256))
    got: list[int] = []

    async def feed(ctx) -> None:
        for v in sent:
            ctx.set(tx.data, v)
            ctx.set(tx.valid, 1)
            await ctx.tick().until(tx.ready)
            ctx.set(tx.valid, 0)
            await ctx.tick()

    async def watch(ctx) -> None:
        async for _clk, _rst, valid, data, err in ctx.tick().sample(rx.valid, rx.data, rx.error):
            assert not err
            if valid:
                got.append(data)
                if len(got) == len(sent):
                    return

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(feed)
    sim.add_testbench(watch)
    sim.run()
    assert got == sent


def test_link_refuses_bad_parameters() -> None:
    t = random_tables(np.random.default_rng(2), T=60, side=8)
    with pytest.raises(HardwareError, match="debug=False"):
        BoardLink(plan_core(t), 104)
    with pytest.raises(HardwareError, match="divisor"):
        BoardLink(plan_core(t, debug=False), 5)


@pytest.fixture(scope="module")
def small() -> tuple:
    rng = np.random.default_rng(5)
    tables = random_tables(rng, side=8, T=12)
    return tables, random_images(rng, 12, tables.input_shape)


def test_virtual_board_round_trip(small: tuple, tmp_path_factory: pytest.TempPathFactory) -> None:
    from firstspike.boards.link import model_hash
    from firstspike.boards.virtual import VirtualBoard

    tables, images = small
    with VirtualBoard(tables, lanes=3, build_root=tmp_path_factory.mktemp("vb")) as vb:
        with BoardRuntime(vb.port, timeout=5.0) as rt:
            info = rt.info()
            assert info["magic"] == b"FSPK" and info["T"] == tables.T and info["inputs"] == images[0].size
            assert info["model_sha256_prefix"] == model_hash(tables).hex()
            res = rt.run(images)
            with pytest.raises(BoardError, match="runs model"):
                rt.check_model("00" * 32)
    want = GoldenModel(tables).run(images)
    np.testing.assert_array_equal(res.classes, want.classes)
    assert res.retries == 0 and res.errors == {}
    first = want.layer_times[-1].reshape(len(images), -1).min(axis=1)
    np.testing.assert_array_equal(res.times, first)
    assert (res.cycles > 0).all()


def test_virtual_board_recovers_from_dropped_and_corrupted_bytes(small: tuple, tmp_path_factory) -> None:
    from firstspike.boards.virtual import VirtualBoard

    tables, images = small
    with VirtualBoard(tables, lanes=3, build_root=tmp_path_factory.mktemp("vb2"), p_drop=0.004, p_flip=0.004, seed=3) as vb:
        with BoardRuntime(vb.port, timeout=2.0, retries=10) as rt:
            res = rt.run(images)
    np.testing.assert_array_equal(res.classes, GoldenModel(tables).classify(images))
    dropped, flipped = vb.faults
    assert dropped + flipped > 0 and res.retries > 0, (vb.faults, res.retries, res.errors)


def test_runtime_without_board_is_a_clear_error() -> None:
    with pytest.raises(BoardError, match="cannot open serial port /dev/nonexistent-tty"):
        BoardRuntime("/dev/nonexistent-tty")


def test_result_payload_layout() -> None:
    p = struct.pack("<BBHI", 7, 1, 13, 123456)
    assert P.parse_result(p) == (7, 1, 13, 123456)


# ---- bitstreams (real Yosys + nextpnr from PyPI/YoWASP) -------------------------------------
def _ice40_tables():
    import torch

    from firstspike.quantize.export import tables_from_model
    from firstspike.train.model import CSNN, load_config

    cfg, _ = load_config("csnn_ice40")
    torch.manual_seed(0)
    return tables_from_model(CSNN(cfg))


@pytest.mark.slow
def test_icebreaker_build_of_the_small_model_fits(tmp_path) -> None:
    from firstspike.boards.build import build

    r = build(_ice40_tables(), "icebreaker", tmp_path, lanes=2)
    res = r["resources"]
    for k in ("luts", "bram"):
        assert 0 < res[k]["used"] <= res[k]["available"], res
    assert r["fmax_mhz"] >= 12.0
    assert Path(r["bitstream"]).stat().st_size > 100_000
    assert json.loads((tmp_path / "icebreaker" / "build.json").read_text())["model_sha256_prefix"] == r["model_sha256_prefix"]


def test_build_refuses_unknown_board_and_designs_too_big(tmp_path) -> None:
    from firstspike.boards.build import BuildError, build
    from firstspike.quantize.export import quantize_checkpoint

    with pytest.raises(BuildError, match="unknown board"):
        build(_ice40_tables(), "de10", tmp_path)
    big, _ = quantize_checkpoint(Path(__file__).resolve().parent.parent / "bench" / "results" / "mnist_binary.pt")
    with pytest.raises(BuildError, match="kbit of block RAM. Shrink"):
        build(big, "icebreaker", tmp_path)
    assert not (tmp_path / "icebreaker" / "work").exists()


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s", "orangecrab"])
def test_board_tops_elaborate(board: str) -> None:
    """Each board's top (core + UART link + LEDs on its pins) prepares for its toolchain."""
    from firstspike.boards.build import BOARDS, BoardTop

    b = BOARDS[board]
    plan = b.make_platform().prepare(BoardTop(_ice40_tables(), b, lanes=2), name="firstspike")
    names = list(plan.files)
    assert any(n.endswith(".il") or n.endswith(".ys") for n in names), names

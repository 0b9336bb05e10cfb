"""Dataset loading (firstspike.data): the shipped MNIST, Fashion-MNIST, user IDX folders,
and every kind of bad input, which must raise DataError naming the offending file."""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from firstspike import data as fsdata
from firstspike.data import IMAGE_MAGIC, LABEL_MAGIC, Split, load_split
from firstspike.errors import DataError

MNIST_DIR = fsdata.REPO_ROOT / "data" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


# --- helpers --------------------------------------------------------------------------------
def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """A raw IDX file: big-endian magic, one uint32 per dimension, then the data."""
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    """Write an IDX file, gzip-compressed when ``path`` ends in .gz."""
    raw = idx_bytes(magic, dims, payload)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_split(
    folder: Path, prefix: str, n: int, gz: bool, seed: int = 0, n_labels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``prefix``-images/labels IDX files with ``n`` random digits; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n if n_labels is None else n_labels, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", IMAGE_MAGIC, images.shape, images.tobytes())
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", LABEL_MAGIC, labels.shape, labels.tobytes())
    return images, labels


def check_split(s: Split, n: int) -> None:
    """Shape, dtype and label range of a loaded split."""
    assert len(s) == n
    assert s.images.shape == (n, 28, 28)
    assert s.images.dtype == np.uint8
    assert s.labels.shape == (n,)
    assert s.labels.dtype == np.int64
    assert int(s.labels.min()) >= 0 and int(s.labels.max()) <= 9


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the shipped MNIST ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist() -> dict[str, Split]:
    """Both MNIST splits from data/mnist, loaded once for the module."""
    return {sp: load_split("mnist", sp) for sp in ("train", "test")}


def test_mnist_loads(mnist: dict[str, Split]) -> None:
    """data/mnist gives 60,000 + 10,000 28x28 uint8 images with labels 0..9, all classes present."""
    check_split(mnist["train"], 60000)
    check_split(mnist["test"], 10000)
    for s in mnist.values():
        assert set(np.unique(s.labels).tolist()) == set(range(10))
    assert mnist["train"].name == "mnist:train" and mnist["test"].name == "mnist:test"
    # the README states the mean intensities; a wrong file (or wrong parsing) would not match
    assert mnist["train"].images.mean() / 255 == pytest.approx(0.13072, abs=5e-5)
    assert mnist["test"].images.mean() / 255 == pytest.approx(0.13258, abs=5e-5)


def test_mnist_sha256_matches_readme() -> None:
    """The sha256 of each of the four .gz files matches the list in data/mnist/README.md."""
    text = (MNIST_DIR / "README.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)\s*$", text, re.M))
    assert sorted(listed) == sorted(MNIST_FILES), f"README lists {sorted(listed)}"
    for name, digest in listed.items():
        assert sha256(MNIST_DIR / name) == digest, f"{name}: sha256 differs from data/mnist/README.md"


def test_fashion_mnist_loads() -> None:
    """Fashion-MNIST loads from the system folder that `make setup` installs."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} not installed (apt-get install dataset-fashion-mnist, or make setup)")
    train = load_split("fashion-mnist", "train")
    test = load_split("fashion-mnist", "test")
    check_split(train, 60000)
    check_split(test, 10000)
    assert set(np.unique(test.labels).tolist()) == set(range(10))


# --- a user folder of IDX files -------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_user_folder(tmp_path: Path, gz: bool) -> None:
    """Any folder of the four standard IDX files loads, plain or gzip, bit for bit."""
    tr_img, tr_lab = make_split(tmp_path, "train", 7, gz, seed=1)
    te_img, te_lab = make_split(tmp_path, "t10k", 3, gz, seed=2)
    train = load_split(dataset="whatever", split="train", data_dir=tmp_path)
    test = load_split(dataset="whatever", split="test", data_dir=tmp_path)
    check_split(train, 7)
    check_split(test, 3)
    np.testing.assert_array_equal(train.images, tr_img)
    np.testing.assert_array_equal(train.labels, tr_lab.astype(np.int64))
    np.testing.assert_array_equal(test.images, te_img)
    np.testing.assert_array_equal(test.labels, te_lab.astype(np.int64))


def test_user_folder_dotted_names(tmp_path: Path) -> None:
    """The 'train-images.idx3-ubyte' spelling (some mirrors use it) is found too."""
    images, labels = make_split(tmp_path, "train", 4, gz=False)
    for p in list(tmp_path.iterdir()):
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    s = load_split("x", "train", tmp_path)
    np.testing.assert_array_equal(s.images, images)
    np.testing.assert_array_equal(s.labels, labels)


# --- errors ---------------------------------------------------------------------------------
def test_missing_folder(tmp_path: Path) -> None:
    """A --data-dir that does not exist: DataError naming the folder."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as ei:
        load_split("mnist", "train", missing)
    assert str(missing) in str(ei.value)


def test_missing_named_dataset_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named dataset whose folders are all absent: DataError naming the folder and the fix."""
    missing = tmp_path / "fashion"
    monkeypatch.setitem(fsdata.DATASET_DIRS, "fashion-mnist", [missing])
    with pytest.raises(DataError) as ei:
        load_split("fashion-mnist", "test")
    assert str(missing) in str(ei.value)
    assert "install" in str(ei.value)


def test_missing_file(tmp_path: Path) -> None:
    """A folder with the images but no labels: DataError naming the missing labels file."""
    make_split(tmp_path, "train", 3, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(tmp_path / "train-labels-idx1-ubyte") in str(ei.value)


def test_missing_split_files(tmp_path: Path) -> None:
    """Only the train split present: asking for test names the t10k file."""
    make_split(tmp_path, "train", 3, gz=True)
    with pytest.raises(DataError) as ei:
        load_split("x", "test", tmp_path)
    assert str(tmp_path / "t10k-images-idx3-ubyte") in str(ei.value)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_wrong_magic(tmp_path: Path, which: str) -> None:
    """An images file with the label magic (or vice versa): DataError naming that file."""
    make_split(tmp_path, "train", 3, gz=False)
    if which == "images":
        bad = tmp_path / "train-images-idx3-ubyte"
        write_idx(bad, 0x00000801, (3 * 28 * 28,), bytes(3 * 28 * 28))
    else:
        bad = tmp_path / "train-labels-idx1-ubyte"
        write_idx(bad, 0x00000803, (1, 1, 3), bytes(3))
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    msg = str(ei.value)
    assert str(bad) in msg
    assert "magic" in msg


def test_not_an_idx_file(tmp_path: Path) -> None:
    """A text file in place of the IDX file: DataError naming it."""
    make_split(tmp_path, "train", 3, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_data(tmp_path: Path, gz: bool) -> None:
    """Header says 5 images but only 4 and a half are present: DataError naming the file."""
    make_split(tmp_path, "train", 5, gz=gz)
    ext = ".gz" if gz else ""
    bad = tmp_path / f"train-images-idx3-ubyte{ext}"
    write_idx(bad, IMAGE_MAGIC, (5, 28, 28), bytes(4 * 784 + 392))
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    msg = str(ei.value)
    assert str(bad) in msg
    assert "truncated" in msg


def test_trailing_bytes(tmp_path: Path) -> None:
    """More data than the header says is also rejected (the file is not what it claims)."""
    make_split(tmp_path, "train", 2, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    write_idx(bad, LABEL_MAGIC, (2,), bytes(3))
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)


def test_truncated_header(tmp_path: Path) -> None:
    """A file cut inside its header (magic and part of the dims): DataError naming it."""
    make_split(tmp_path, "train", 2, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(struct.pack(">III", IMAGE_MAGIC, 2, 28))  # the third dimension is missing
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)
    bad.write_bytes(b"\x00\x00")
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)


def test_count_mismatch(tmp_path: Path) -> None:
    """5 images but 4 labels: DataError naming both files."""
    make_split(tmp_path, "t10k", 5, gz=True, n_labels=4)
    with pytest.raises(DataError) as ei:
        load_split("x", "test", tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in msg
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in msg


def test_label_out_of_range(tmp_path: Path) -> None:
    """A label of 10 or more: DataError naming the labels file."""
    make_split(tmp_path, "train", 3, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    write_idx(bad, LABEL_MAGIC, (3,), bytes([1, 12, 3]))
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)


def _corrupt_gzip(kind: str) -> bytes:
    """A .gz of a valid labels file, damaged in one of several ways."""
    raw = bytearray(gzip.compress(idx_bytes(LABEL_MAGIC, (300,), bytes(range(10)) * 30)))
    if kind == "garbage":  # gzip magic, then noise
        return b"\x1f\x8b" + bytes(np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8))
    if kind == "not-gzip":  # a plain file named .gz
        return b"this is not gzip data at all"
    if kind == "cut":  # stream ends early
        return bytes(raw[: len(raw) // 2])
    if kind == "crc":  # right data, wrong checksum in the trailer
        raw[-8:-4] = b"\x00\x00\x00\x00"
        return bytes(raw)
    if kind == "bad-deflate":  # first deflate block header set to the reserved block type 11
        raw[10] = 0xFF
        return bytes(raw)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "not-gzip", "cut", "crc", "bad-deflate"])
def test_corrupt_gzip(tmp_path: Path, kind: str) -> None:
    """A damaged .gz file: DataError (not zlib.error, EOFError, ...) naming the file."""
    make_split(tmp_path, "train", 3, gz=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(_corrupt_gzip(kind))
    with pytest.raises(DataError) as ei:
        load_split("x", "train", tmp_path)
    assert str(bad) in str(ei.value)


def test_unknown_dataset() -> None:
    """An unknown dataset name without --data-dir: DataError naming it and the known ones."""
    with pytest.raises(DataError) as ei:
        load_split("cifar-10", "train")
    msg = str(ei.value)
    assert "cifar-10" in msg
    assert "mnist" in msg and "fashion-mnist" in msg


def test_unknown_split() -> None:
    """A split other than train/test: DataError naming it."""
    with pytest.raises(DataError) as ei:
        load_split("mnist", "validation")
    assert "validation" in str(ei.value)

"""Dataset loading: standard IDX files (MNIST, Fashion-MNIST or any folder of them).

Every failure raises :class:`DataError` naming the file and the fix; nothing here
downloads anything.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firstspike.errors import DataError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where each named dataset lives by default (first existing folder wins).
DATASET_DIRS: dict[str, list[Path]] = {
    "mnist": [REPO_ROOT / "data" / "mnist"],
    "fashion-mnist": [
        Path("/usr/share/datasets/fashion-mnist"),
        REPO_ROOT / "data" / "fashion-mnist",
    ],
}
DATASET_FIX = {
    "mnist": "the repository ships it in data/mnist; restore it with `git checkout data/mnist`",
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (or `make setup`)",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split."""

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int = 0) -> "Split":
        """The first ``limit`` images (all of them when ``limit`` <= 0)."""
        if limit <= 0 or limit >= len(self):
            return self
        return Split(images=self.images[:limit], labels=self.labels[:limit], name=self.name)


def _find_file(folder: Path, stem: str) -> Path:
    for cand in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if cand.is_file():
            return cand
    raise DataError(
        f"missing IDX file {folder / stem}[.gz]: the folder must hold the four standard "
        f"files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte (optionally .gz)"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e} (corrupt or truncated file; replace it)") from e


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Parse one IDX file, checking magic number, header and length."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); replace the file")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expect_magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x} (expected 0x{expect_magic:08x}); "
            f"this is not a {'image' if expect_magic == IMAGE_MAGIC else 'label'} IDX file"
        )
    ndim = magic & 0xFF
    hdr = 4 + 4 * ndim
    if len(raw) < hdr:
        raise DataError(f"{path}: truncated IDX header; replace the file")
    dims = struct.unpack(f">{ndim}I", raw[4:hdr])
    size = int(np.prod(dims))
    if len(raw) - hdr != size:
        raise DataError(
            f"{path}: header says {dims} = {size} bytes of data but the file holds "
            f"{len(raw) - hdr}; the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=hdr).reshape(dims)


def resolve_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of IDX files for a named dataset, or the user's ``data_dir``."""
    if data_dir is not None:
        p = Path(data_dir)
        if not p.is_dir():
            raise DataError(f"data folder {p} does not exist; pass --data-dir with a folder of IDX files")
        return p
    if dataset not in DATASET_DIRS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_DIRS)} or pass --data-dir")
    for p in DATASET_DIRS[dataset]:
        if p.is_dir():
            return p
    raise DataError(
        f"dataset {dataset!r} not found in {[str(p) for p in DATASET_DIRS[dataset]]}: {DATASET_FIX[dataset]}"
    )


def load_split(dataset: str = "mnist", split: str = "train", data_dir: str | os.PathLike | None = None) -> Split:
    """Load one split ("train" or "test") of a dataset from IDX files."""
    if split not in SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = resolve_dir(dataset, data_dir)
    pre = SPLIT_PREFIX[split]
    ipath = _find_file(folder, f"{pre}-images-idx3-ubyte")
    lpath = _find_file(folder, f"{pre}-labels-idx1-ubyte")
    images = read_idx(ipath, IMAGE_MAGIC)
    labels = read_idx(lpath, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{ipath} holds {images.shape[0]} images but {lpath} holds {labels.shape[0]} labels; "
            f"the two files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lpath}: label {int(labels.max())} out of range 0..9")
    log.debug("loaded %s/%s: %d images from %s", dataset, split, len(labels), folder)
    return Split(images=images, labels=labels.astype(np.int64), name=f"{dataset}:{split}")

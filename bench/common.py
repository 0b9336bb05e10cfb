"""Shared helpers of the benchmarks: machine description, JSON results, docs table."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def hardware() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def repo_path(path: str | os.PathLike) -> str:
    """A file's path as results record it: relative to the repository root when inside it
    (so results do not name one machine's folders), else as given."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def merge_runs(name: str, runs: list[dict[str, Any]], key, model_field: str | None = None) -> list[dict[str, Any]]:
    """``runs`` with the runs stored in bench/results/NAME.json whose ``key(run)`` none of
    them has (re-running part of a benchmark keeps the rest of its results). Every run keeps
    its own ``date``, ``commit`` and ``hardware``: new runs get now's, kept runs without them the
    file's (the machine only for runs of the file's last write: the report says "not recorded" else).
    With ``model_field`` (the field naming the checkpoint), stored runs of a checkpoint path
    whose ``model_sha256_prefix`` differs from the new runs' are dropped: they measured an
    earlier file at that path (runs recorded without a hash are kept)."""
    path = RESULTS / f"{name}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    old = stored.get("runs", [])
    for r in old:
        r.setdefault("date", stored.get("date"))
        r.setdefault("commit", stored.get("commit"))
        # the file's machine is a kept run's only when that run came with the file's last write (same
        # commit and day); older runs may have run elsewhere, and stay without one ("not recorded")
        if "hardware" not in r and stored.get("hardware") and r["commit"] == stored.get("commit") \
                and str(r["date"])[:10] == str(stored.get("date"))[:10]:  # fmt: skip
            r["hardware"] = stored["hardware"]
    now, rev, hw = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), git_rev(), hardware()
    for r in runs:
        r.setdefault("date", now)
        r.setdefault("commit", rev)
        r.setdefault("hardware", hw)
    if model_field:
        sha = {r[model_field]: r["model_sha256_prefix"] for r in runs if r.get("model_sha256_prefix")}
        def stale(r: dict[str, Any]) -> bool:
            return bool(r.get("model_sha256_prefix")) and sha.get(r.get(model_field), r["model_sha256_prefix"]) != r["model_sha256_prefix"]

        for r in filter(stale, old):
            logging.getLogger("bench").warning("%s: dropped a run of an earlier %s (model %s, now %s)", name, r[model_field],
                                               r["model_sha256_prefix"], sha[r[model_field]])  # fmt: skip
        old = [r for r in old if not stale(r)]
    mine = {key(r) for r in runs}
    return [r for r in old if key(r) not in mine] + runs


def write_result(name: str, data: dict[str, Any]) -> Path:
    """bench/results/NAME.json with the date, commit and hardware added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_rev(), "hardware": hardware(), **data}  # fmt: skip
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    logging.getLogger("bench").info("wrote %s", path)
    return path


def add_model_args(ap, default: str) -> None:
    """The options of the benchmarks that run trained checkpoints on their test sets."""
    ap.add_argument("--models", default=default, help="comma-separated dataset:checkpoint")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test images")
    ap.add_argument("--batch", type=int, default=1000)


def model_bench_args(doc: str, default: str, extra: Callable[[Any], Any] | None = None):
    """Logging set up and the parsed options (``add_model_args``, then ``extra(parser)``'s) of
    such a benchmark."""
    import argparse

    setup_logging()
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_model_args(ap, default)
    if extra is not None:
        extra(ap)
    return ap.parse_args()


def save_runs(name: str, runs: list[dict[str, Any]], model_field: str = "checkpoint") -> None:
    """The runs merged by checkpoint into bench/results/NAME.json, and docs/benchmarks.md refreshed."""
    write_result(name, {"runs": merge_runs(name, runs, lambda r: r[model_field])})
    from report import render_docs

    render_docs()


def model_specs(spec: str) -> list[tuple[str, str]]:
    """``dataset:checkpoint,...`` -> [(dataset, checkpoint)], skipping (with a warning) files
    that are not there."""
    out = []
    for item in spec.split(","):
        dataset, ck = item.split(":", 1)
        if Path(ck).is_file():
            out.append((dataset, ck))
        else:
            logging.getLogger("bench").warning("skipping %s: %s not found (run bench/accuracy.py)", dataset, ck)
    return out


def weights_label(mode: str, bits: list[int] | None) -> str:
    """The weights of an accuracy row: "real", "binary", or for a binary network with k-bit
    layers which ones, e.g. "binary; layers 1, 4 at 4 bits" (spiking layers counted from 1)."""
    wide = [(i + 1, b) for i, b in enumerate(bits or []) if b > 1]
    if mode != "binary" or not wide:
        return mode
    groups = []
    for w in sorted({b for _, b in wide}):
        at = [str(i) for i, b in wide if b == w]
        groups.append(f"layer{'s' if len(at) > 1 else ''} {', '.join(at)} at {w} bits")
    return "binary; " + "; ".join(groups)

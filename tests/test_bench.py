"""The benchmark scripts' shared helpers (bench/common.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402


def test_merge_runs_keeps_each_runs_own_date_and_commit(tmp_path, monkeypatch) -> None:
    """Re-running one row of a benchmark replaces that row only; the rows kept from the file
    keep the date and commit they were measured at (the file's, for files without per-row
    stamps), and the new row gets today's."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    (tmp_path / "demo.json").write_text(json.dumps({"date": "2026-01-01T00:00:00+00:00", "commit": "old1234",
                                                    "runs": [{"board": "a", "x": 1}, {"board": "b", "x": 2}]}))  # fmt: skip
    merged = common.merge_runs("demo", [{"board": "b", "x": 3}], key=lambda r: r["board"])
    rows = {r["board"]: r for r in merged}
    assert rows["a"] == {"board": "a", "x": 1, "date": "2026-01-01T00:00:00+00:00", "commit": "old1234"}
    assert rows["b"]["x"] == 3 and rows["b"]["commit"] == common.git_rev() and rows["b"]["date"] > "2026-01-01"
    assert len(merged) == 2

"""Test-session set-up for `make test`, which runs the suite on pytest-xdist workers
(``-n auto --dist loadfile --no-loadscope-reorder``): each test file runs on one worker (its
module fixtures, a trained model or a flow run, are built once), the costliest files first.

* each worker's numeric libraries get an equal share of the cores (two workers each
  training on every core would only fight over them);
* the files are ordered by their cost (COST), so that no long file is left to run alone
  at the end.

(Not --dist loadgroup: with pytest 9.2 and pytest-xdist 3.8 its xdist_group marks are
silently ignored, pytest-dev/pytest-xdist#1386.) Without xdist none of this changes
anything but the order of the files.
"""

from __future__ import annotations

import os

import pytest

# seconds a file takes under `make test` (2 workers on 2 shared cores, session 19); unlisted: short
COST = {"test_gate_level.py": 1070, "test_memcheck.py": 820, "test_rtl.py": 800, "test_boards.py": 800,
        "test_flow.py": 400, "test_learning.py": 350}  # fmt: skip

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS > 1:  # before the tests import torch and numba (a user's own setting stands)
    _threads = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda it: -COST.get(it.path.name, 0))  # stable: a file's own order is kept

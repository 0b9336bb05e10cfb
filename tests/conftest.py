"""Test-session set-up for `make test`, which runs the suite on pytest-xdist workers
(``-n auto --dist loadgroup``):

* each worker's numeric libraries get an equal share of the cores (two workers each
  training on every core would only fight over them);
* the tests that use a module-scoped fixture (a trained model, a flow run, a compiled
  simulator) run on one worker together, so the fixture is built once; every other test is
  scheduled on its own;
* the slow tests start first, so that no long test is left to run alone at the end.

Without xdist (plain ``pytest``) none of this changes anything but the order.
"""

from __future__ import annotations

import os

import pytest

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS > 1:  # before the tests import torch and numba (a user's own setting stands)
    _threads = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope in ("module", "package") for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _shares_a_module_fixture(item) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
    items.sort(key=lambda it: it.get_closest_marker("slow") is None)  # stable: slow tests first

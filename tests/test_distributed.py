"""Multi-process data parallel training (torchrun, gloo backend, 2 CPU processes).

Two processes with batch b each see, step by step, exactly the images that one process
with batch 2b sees (rank r takes perm[r::2]), and DDP averages their gradients: the
weights after training must match a single-process run up to float summation order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from firstspike.train.trainer import load_checkpoint

pytestmark = pytest.mark.slow

# SGD: its update is linear in the gradient, so float summation-order differences stay tiny
# (Adam turns a gradient of pure rounding noise into a full +-lr step).
COMMON = ["--config", "csnn_tiny", "--epochs", "1", "--train-subset", "256", "--test-subset", "100", "--no-progress",
          "--device", "cpu", "--no-resume", "--optimizer", "sgd", "--lr", "0.05"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", FIRSTSPIKE_DIST_BACKEND="gloo")
    return env


def test_torchrun_two_processes_match_single_process(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    single, multi = tmp_path / "single", tmp_path / "multi"
    r1 = subprocess.run(
        [sys.executable, "-m", "firstspike", "train", *COMMON, "--batch-size", "64", "--out", str(single)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "firstspike", "train", *COMMON,
         "--batch-size", "32", "--out", str(multi)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    a = load_checkpoint(single / "checkpoint.pt")["state_dict"]
    b = load_checkpoint(multi / "checkpoint.pt")["state_dict"]
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        if k.endswith("weight") or k.endswith("log_alpha"):
            close = torch.isclose(a[k], b[k], rtol=1e-4, atol=1e-5).float().mean().item()
            assert close > 0.99, f"{k}: only {100 * close:.2f}% of values match the single-process run"
            signs = ((a[k] >= 0) == (b[k] >= 0)).float().mean().item()
            assert signs > 0.995, f"{k}: binary signs differ in {100 * (1 - signs):.2f}%"
    # the run must really have trained (weights differ from a fresh calibration-only model)
    fresh = tmp_path / "fresh"
    r3 = subprocess.run(
        [sys.executable, "-m", "firstspike", "train", *COMMON[:2], "--epochs", "1", "--train-subset", "64",
         "--test-subset", "10", "--no-progress", "--batch-size", "64", "--lr", "0", "--out", str(fresh)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r3.returncode == 0, r3.stderr[-3000:]
    c = load_checkpoint(fresh / "checkpoint.pt")["state_dict"]
    for k in a:
        if k.endswith("weight"):
            moved += int((~torch.isclose(a[k], c[k])).sum())
    assert moved > 0

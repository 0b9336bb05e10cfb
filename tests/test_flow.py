"""The flow (`firstspike flow`): every step on a small real run (MNIST subset, real Verilator,
Icarus and virtual board), exact at every rung; the content-hash cache (a rerun redoes only
what changed, a failed step leaves nothing behind); the report, rendered in headless
Chromium and checked on the screenshot."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from firstspike import flow as F
from firstspike.cli import main
from firstspike.errors import ConfigError
from firstspike.flow import HARDWARE_STEPS, FlowConfig, FlowError, _check_deployable, run_flow, total_mismatches
from firstspike.report import ReportError, write_report


def small_config(out: Path, **kw) -> FlowConfig:
    base = dict(out=str(out), epochs=1, real_epochs=1, train_subset=600, test_subset=200, verilator_images=3,
                icarus_images=1, gate_images=0, boards=(), virtual_images=8, progress=False)  # fmt: skip
    base.update(kw)
    return FlowConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlowConfig, dict]:
    cfg = small_config(tmp_path_factory.mktemp("flow") / "run")
    return cfg, run_flow(cfg)


def test_every_step_runs_and_every_rung_is_exact(run: tuple[FlowConfig, dict]) -> None:
    cfg, state = run
    steps = state["steps"]
    assert [n for n in F.STEP_NAMES if n in steps] == ["train_real", "train", "quantize", "golden", "hw", "verilator",
                                                        "icarus", "virtual", "report"]  # fmt: skip
    assert all(s["status"] == "ran" for s in steps.values())
    # two jobs (the default): the two training rungs ran side by side, each in its worker
    tr, tb = steps["train_real"], steps["train"]
    assert tr["started_s"] < tb["started_s"] + tb["seconds"] and tb["started_s"] < tr["started_s"] + tr["seconds"]
    g = steps["golden"]["metrics"]
    assert g["images"] == 200 and g["float_values_compared"] > 200 * 784
    assert g["float_spike_mismatches"] == 0 and g["float_class_mismatches"] == 0
    for sim in ("verilator", "icarus"):
        m = steps[sim]["metrics"]
        assert m["total_mismatches"] == 0 and m["values_compared"] > 0 and m["rtl_accuracy"] == m["golden_accuracy"]
    v = steps["virtual"]["metrics"]
    assert v["class_mismatches"] == 0 and v["retries"] == 0 and v["spike_mismatches_one_image"] and sum(v["spike_mismatches_one_image"].values()) == 0
    assert total_mismatches(state) == 0
    root = Path(cfg.out)
    for f in ("quantize/model.fsm", "hw/firstspike_core.v", "report/report.html", "report/report.md", "flow.json"):
        assert (root / f).is_file(), f
    assert not list(root.glob(".*.partial"))


def test_rerun_is_cached_and_redoes_only_what_changed(run: tuple[FlowConfig, dict]) -> None:
    cfg, _ = run
    t0 = time.perf_counter()
    st = run_flow(cfg)
    assert time.perf_counter() - t0 < 30
    assert {n: s["status"] for n, s in st["steps"].items() if n != "report"} == {
        n: "cached" for n in st["steps"] if n != "report"}  # fmt: skip
    st = run_flow(dataclasses.replace(cfg, verilator_images=2))
    status = {n: s["status"] for n, s in st["steps"].items()}
    assert status["verilator"] == "ran" and st["steps"]["verilator"]["metrics"]["images"] == 2
    assert all(status[n] == "cached" for n in ("train", "quantize", "golden", "icarus", "virtual"))
    # quantizing the same checkpoint again gives the same bytes: nothing after it reruns
    st = run_flow(dataclasses.replace(cfg, verilator_images=2), rerun=("quantize",))
    status = {n: s["status"] for n, s in st["steps"].items()}
    assert status["quantize"] == "ran" and status["golden"] == "cached" and status["verilator"] == "cached"


def test_failed_step_leaves_nothing_half_written(run: tuple[FlowConfig, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = run
    before = json.loads((Path(cfg.out) / "flow.json").read_text())["steps"]["icarus"]
    step = next(s for s in F.STEPS if s.name == "icarus")

    def boom(ctx):
        (ctx.work / "partial.txt").write_text("half")
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(step, "run", boom)
    with pytest.raises(RuntimeError, match="crashed"):  # (one job: the patched step runs in this process)
        run_flow(dataclasses.replace(cfg, icarus_images=2, verilator_images=2, jobs=1))
    root = Path(cfg.out)
    assert not list(root.glob(".*.partial"))
    assert json.loads((root / "flow.json").read_text())["steps"]["icarus"]["key"] == before["key"]
    assert (root / "icarus" / "cycles.npy").is_file() and not (root / "icarus" / "partial.txt").exists()


def test_a_failing_worker_step_raises_its_error_and_leaves_nothing_behind(run: tuple[FlowConfig, dict], tmp_path: Path) -> None:
    """Two jobs: a step failing in its worker process (here Verilator and Icarus, side by side,
    on a tampered model file) raises its own error type here; the failed steps' records stay
    as they were, nothing starts after them (the report), no scratch folder is left."""
    from firstspike.quantize.modelfile import ModelFileError

    cfg, _ = run
    root = tmp_path / "run"
    shutil.copytree(cfg.out, root)
    cfg = dataclasses.replace(cfg, out=str(root), jobs=2)
    before = json.loads((root / "flow.json").read_text())["steps"]
    fsm = root / "quantize" / "model.fsm"
    fsm.write_bytes(fsm.read_bytes()[:-7])  # truncated behind the cache's back
    with pytest.raises(ModelFileError, match="model.fsm"):
        run_flow(dataclasses.replace(cfg, icarus_images=2, verilator_images=2))
    after = json.loads((root / "flow.json").read_text())["steps"]
    assert not list(root.glob(".*.partial"))
    assert after["icarus"]["key"] == before["icarus"]["key"] and after["verilator"]["key"] == before["verilator"]["key"]
    assert after["report"]["key"] == before["report"]["key"]  # nothing ran after the failure
    with pytest.raises(FlowError, match="jobs=0"):
        run_flow(dataclasses.replace(cfg, jobs=0))


def test_without_worker_processes_the_steps_run_here(run: tuple[FlowConfig, dict], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Where worker processes cannot start (no shared memory for their queue, say), two jobs
    fall back to one step at a time in this process, with a warning."""
    cfg, _ = run
    root = tmp_path / "run"
    shutil.copytree(cfg.out, root)

    def no_shm(self, jobs):
        raise OSError("[Errno 38] Function not implemented: /dev/shm")

    monkeypatch.setattr(F._Workers, "__init__", no_shm)
    st = run_flow(dataclasses.replace(cfg, out=str(root), jobs=2), rerun=("quantize",))
    assert st["steps"]["quantize"]["status"] == "ran" and st["steps"]["report"]["status"] == "ran"
    assert "cannot start 2 worker processes" in caplog.text


def test_unknown_step_and_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="unknown step 'trian'"):
        run_flow(small_config(tmp_path), skip=("trian",))
    with pytest.raises(FlowError, match="run the step 'train'"):
        run_flow(small_config(tmp_path), only=("quantize",))
    assert not list(tmp_path.glob(".*.partial"))
    with pytest.raises(ReportError, match="not a flow run folder"):
        write_report(tmp_path / "nothing")
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_an_undeployable_network_fails_before_it_trains(tmp_path: Path) -> None:
    """A config the model file cannot carry (the bias channel) is refused before the training
    step, with nothing written; skipping quantize (training only) lets it through the check."""
    cfg_path = tmp_path / "biased.toml"
    cfg_path.write_text('base = "csnn_ice40"\nname = "biased"\nbias = true\n')
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="bias = true"):
        run_flow(small_config(out, config=str(cfg_path)))
    assert not out.exists()
    assert main(["flow", "--config", str(cfg_path), "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["flow.log"]  # the log of why, no step's folder


def test_layer_windows_pass_the_deployability_check_a_window_without_ramp_does_not(tmp_path: Path) -> None:
    """The core runs layer windows with a ramp (hw/layer.py), so a flow with hardware steps
    accepts them; a window without a ramp (a training experiment) is refused before anything trains."""
    cfg_path = tmp_path / "windows.toml"
    cfg_path.write_text('base = "csnn_ice40"\nname = "windows"\nlayer_windows = "ramp"\n')
    _check_deployable(small_config(tmp_path / "run", config=str(cfg_path)), list(HARDWARE_STEPS))
    cfg_path.write_text('base = "csnn_ice40"\nname = "windows"\nlayer_windows = "psp"\n')
    out = tmp_path / "run2"
    with pytest.raises(ConfigError, match="psp"):
        run_flow(small_config(out, config=str(cfg_path)))
    assert not out.exists()


def test_report_content(run: tuple[FlowConfig, dict]) -> None:
    cfg, state = run
    md = (Path(cfg.out) / "report" / "report.md").read_text()
    g = state["steps"]["golden"]["metrics"]
    assert f"{100 * g['accuracy']:.2f}%" in md
    for rung in ("float, real weights", "float, binary weights", "golden model", "RTL, Verilator", "RTL, Icarus",
                 "virtual board", "no board attached"):  # fmt: skip
        assert rung in md, rung
    figs = sorted(p.name for p in (Path(cfg.out) / "report" / "figures").glob("*.png"))
    assert figs == ["accuracy_vs_t.png", "confusion.png", "cycles.png", "latency.png", "raster.png", "synaptic_events.png"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make setup` installs it (apt package chromium)")
    return exe


def test_report_renders_in_headless_chromium(run: tuple[FlowConfig, dict], tmp_path: Path) -> None:
    """Screenshot of the HTML report: the page is drawn and its embedded plots are decoded
    (strongly coloured pixels: the same page with its <img> tags removed has few of them)."""
    import re

    from PIL import Image

    cfg, _ = run
    page = (Path(cfg.out) / "report" / "report.html").resolve()
    bare = tmp_path / "bare.html"  # the report without its plots: the baseline of coloured pixels
    bare.write_text(re.sub(r"<img\b[^>]*>", "", page.read_text()))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars", "--window-size=1200,4000"]  # fmt: skip
    shots = {}
    for name, html in (("report", page), ("bare", bare)):
        shot = tmp_path / f"{name}.png"
        subprocess.run([_chromium(), *flags, f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
        shots[name] = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    img = shots["report"]
    assert img.shape[:2] == (4000, 1200)
    dark = (img.sum(axis=2) < 200).mean()  # text and table lines

    def coloured(a: np.ndarray) -> float:  # plot colours (bars, matrix, raster)
        return float(((a.max(axis=2) - a.min(axis=2)) > 80).mean())

    assert dark > 0.002, dark
    assert coloured(img) > coloured(shots["bare"]) + 0.004, (coloured(img), coloured(shots["bare"]))
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "Accuracy at every rung" in dom and dom.count("<img") == 6


def test_cli_flow_and_report(run: tuple[FlowConfig, dict], tmp_path: Path, capsys: pytest.CaptureFixture,
                             caplog: pytest.LogCaptureFixture) -> None:
    cfg, _ = run
    caplog.set_level(logging.INFO)  # (as the command line's own logging set-up)
    args = ["flow", "--out", cfg.out, "--epochs", "1", "--real-epochs", "1", "--train-subset", "600", "--test-subset", "200",
            "--verilator-images", "2", "--icarus-images", "1", "--gate-images", "0", "--boards", "", "--virtual-images", "8",
            "--no-progress", "--rerun", "train_real"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train       cached" in out and "train_real  ran" in out and "report.html" in out
    flow_log = (Path(cfg.out) / "flow.log").read_text()
    assert "train_real running" in flow_log and "epoch 1/1" in flow_log  # the worker's log lines reach flow.log
    assert main(["report", cfg.out, "-o", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").is_file()


def test_paths_recorded_in_the_scratch_folder_follow_the_rename(tmp_path: Path) -> None:
    """A step (build) records its bitstream's path while it runs in its scratch folder: after
    the rename, its figures and its JSON files point to the final folder."""
    work, dest = tmp_path / ".build.partial", tmp_path / "build"
    (dest / "icebreaker").mkdir(parents=True)
    (dest / "icebreaker" / "build.json").write_text(json.dumps({"bitstream": str(work / "icebreaker" / "x.bin")}))
    m = F._moved({"boards": {"icebreaker": {"bitstream": str(work / "icebreaker" / "x.bin"), "n": np.int64(3)}}}, work, dest)
    assert m["boards"]["icebreaker"] == {"bitstream": str(dest / "icebreaker" / "x.bin"), "n": 3}
    assert json.loads((dest / "icebreaker" / "build.json").read_text())["bitstream"] == str(dest / "icebreaker" / "x.bin")


def test_gate_level_covers_the_boards_families() -> None:
    """The flow's gate-level step simulates the FPGA family of every board it builds."""
    from firstspike.flow import FlowConfig, FlowError, gate_families

    assert gate_families(FlowConfig(boards=("icebreaker",))) == ["ice40"]
    assert gate_families(FlowConfig(boards=("ulx3s",))) == ["ecp5"]
    assert gate_families(FlowConfig(boards=("ulx3s", "icebreaker", "orangecrab"))) == ["ice40", "ecp5"]
    assert gate_families(FlowConfig(boards=())) == ["ice40"]
    assert gate_families(FlowConfig(gate_family="all")) == ["ice40", "ecp5"]
    assert gate_families(FlowConfig(boards=("ulx3s",), gate_family="ice40")) == ["ice40"]
    with pytest.raises(FlowError, match="unknown --gate-family"):
        gate_families(FlowConfig(gate_family="xc7"))


def test_board_speed_uses_the_board_cores_cycles() -> None:
    """The report's images/s come from the board core's own cycles (early exit, measured over
    the link on the virtual or real board) when a board ran, else from the RTL run's."""
    from types import SimpleNamespace

    from firstspike.report import board_rows

    tables = SimpleNamespace(T=32, input_shape=(1, 28, 28))
    build = {"icebreaker": {"device": "iCE40UP5K", "lanes": 2, "resources": {}, "fmax_mhz": 27.0, "clock_mhz": 24.0}}
    steps = {"build": {"metrics": {"boards": build}}, "verilator": {"metrics": {"cycles_mean": 26000.0, "lanes": 2}}}
    row = board_rows({"steps": steps}, tables)[0]
    assert row["images_per_s_at_clock"] == round(24e6 / (26000 + 32 + 784), 1) and "RTL" in row["cycles"]
    steps["virtual"] = {"metrics": {"cycles_mean": 13000.0}}
    row = board_rows({"steps": steps}, tables)[0]
    assert row["images_per_s_at_clock"] == round(24e6 / (13000 + 32 + 784), 1) and "virtual board's core" in row["cycles"]
    steps["board"] = {"metrics": {"cycles_mean": 12000.0}}
    steps["board"]["metrics"]["early_exit"] = True
    row = board_rows({"steps": steps}, tables)[0]  # a real board's own figure first
    assert row["images_per_s_at_clock"] == round(24e6 / (12000 + 32 + 784), 1) and row["cycles"].endswith("(the board's core, early exit)")

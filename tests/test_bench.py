"""The benchmark scripts' shared helpers (bench/common.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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


def test_merge_runs_keeps_each_runs_own_machine(tmp_path, monkeypatch) -> None:
    """A table's rows may come from different machines: a new row records this one; a kept row
    without a machine gets the file's only when it came with the file's last write (same commit
    and day), and the report says "machine not recorded" for the others instead of labelling
    them with the last writer's CPU."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    (tmp_path / "demo.json").write_text(json.dumps({
        "date": "2026-02-02T10:00:00+00:00", "commit": "new5678", "hardware": {"cpu": "CPU-B", "cores": 2},
        "runs": [{"board": "a", "date": "2026-01-01T00:00:00+00:00", "commit": "old1234"},
                 {"board": "b", "date": "2026-02-02T09:59:58+00:00", "commit": "new5678"},
                 {"board": "c", "date": "2026-01-01T00:00:00+00:00", "commit": "old1234", "hardware": {"cpu": "CPU-A", "cores": 4}}]}))  # fmt: skip
    merged = common.merge_runs("demo", [{"board": "d"}], key=lambda r: r["board"])
    rows = {r["board"]: r for r in merged}
    assert "hardware" not in rows["a"]
    assert rows["b"]["hardware"]["cpu"] == "CPU-B" and rows["c"]["hardware"]["cpu"] == "CPU-A"
    assert rows["d"]["hardware"] == common.hardware()
    import report

    assert report._measured(rows["a"]) == "2026-01-01, old1234, machine not recorded"
    assert report._measured(rows["c"]) == "2026-01-01, old1234, CPU-A, 4 cores"


def test_merge_runs_drops_runs_of_an_earlier_file_at_the_same_path(tmp_path, monkeypatch) -> None:
    """A checkpoint replaced at its path (a retrained bench/results/ice40_binary.pt): the new
    runs of that path drop its stored runs with another model hash, also those under other keys
    (they measured the old model); runs of other paths, and runs stored without a hash, stay."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    old = [{"model": "m.pt", "family": "ice40", "model_sha256_prefix": "aa"},
           {"model": "m.pt", "family": "ecp5", "model_sha256_prefix": "aa"},
           {"model": "m.pt", "family": "ecp5", "lanes": 64},
           {"model": "n.pt", "family": "ecp5", "model_sha256_prefix": "cc"}]  # fmt: skip
    (tmp_path / "gl.json").write_text(json.dumps({"runs": old}))
    new = [{"model": "m.pt", "family": "ice40", "model_sha256_prefix": "bb"}]
    merged = common.merge_runs("gl", new, key=lambda r: (r["model"], r["family"], r.get("lanes")), model_field="model")
    assert [(r["model"], r["family"], r.get("model_sha256_prefix")) for r in merged] == [
        ("m.pt", "ecp5", None), ("n.pt", "ecp5", "cc"), ("m.pt", "ice40", "bb")]  # fmt: skip
    same = common.merge_runs("gl", [{**old[0], "x": 1}], key=lambda r: (r["model"], r["family"], r.get("lanes")), model_field="model")
    assert len(same) == 4  # the same model re-measured: only its own row replaced


def test_probe_readouts_see_what_the_spike_times_carry_and_no_more() -> None:
    """bench/accuracy_probe.py's readouts on synthetic spike times (T = 16, three classes): a
    class coded by which features fire early is read by every readout; a class coded only by
    times after T/2 is invisible to the potentials at T/2 (relu(T/2 - t) = 0) but read at T-1;
    labels independent of the times stay near chance on held-out samples."""
    import numpy as np
    import torch

    from accuracy_probe import probe_readouts

    T, rng = 16, np.random.default_rng(0)

    def data(n: int, early: tuple[int, int], late: tuple[int, int], informative: bool = True):
        y = rng.integers(0, 3, n)
        t = rng.integers(*late, size=(n, 12))
        own = np.arange(12)[None, :] // 4 == (y if informative else rng.integers(0, 3, n))[:, None]
        t = np.where(own, rng.integers(*early, size=(n, 12)), t)
        return torch.from_numpy(t.astype(np.int16)), torch.from_numpy(y.astype(np.int64))

    def accs(early, late, informative=True) -> dict[str, float]:
        (ftr, ytr), (fte, yte) = data(600, early, late, informative), data(300, early, late, informative)
        return {r["readout"]: r["test_acc"] for r in probe_readouts(ftr, ytr, fte, yte, T, epochs=40, lr=1e-2)}

    easy = accs((1, 5), (12, T + 1))  # own features fire by step 4, the others from 12 on or never
    assert all(a >= 0.95 for a in easy.values()), easy
    hidden = accs((9, 11), (13, T + 1))  # own features at 9-10, others at 13-16: all after T/2 = 8
    assert hidden["linear, V(T/2)"] < 0.5 and hidden["linear, V(T-1)"] >= 0.95, hidden
    noise = accs((1, 5), (12, T + 1), informative=False)
    assert all(a < 0.5 for a in noise.values()), noise


def test_demo_time_result_renders_as_a_table_and_a_time_line(tmp_path, monkeypatch) -> None:
    """bench/demo_time.py's result: docs/benchmarks.md gets the total against the goal, each
    step's start and duration in the flow's order, and the time-line plot is drawn; the
    reference workload runs and takes a positive time."""
    import demo_time
    import report

    steps = {"train_real": {"seconds": 269.0, "started_s": 0.1, "status": "ran"},
             "train": {"seconds": 471.0, "started_s": 0.1, "status": "ran"},
             "report": {"seconds": 3.5, "started_s": 770.2, "status": "ran"}}  # fmt: skip
    data = {"benchmark": "demo_time", "date": "2026-12-02", "commit": "abc1234", "hardware": {"cpu": "X", "cores": 2},
            "commit_timed": "abc1234", "make_flags": None, "setup_s": 95.0, "demo_s": 776.0, "total_s": 871.0,
            "goal_s": 600, "reference_s": [1.5, 1.6], "total_in_reference_units": 580.7, "steps": steps,
            "binary_accuracy": 0.952, "float_accuracy": 0.9396, "epochs": 6}  # fmt: skip
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOCS", tmp_path / "benchmarks.md")
    (tmp_path / "demo_time.json").write_text(json.dumps(data))
    text = report.render_docs().read_text()
    assert "**14.5 min** in all (goal 10)" in text and "the flow 776 s; 581 reference units" in text
    assert "Binary accuracy 95.20% after 6 epochs, float rung 93.96%." in text
    rows = [ln for ln in text.splitlines() if ln.startswith(("| train", "| report"))]
    assert rows == ["| train_real | 0.1 | 269.0 |", "| train | 0.1 | 471.0 |", "| report | 770.2 | 3.5 |"]
    demo_time.plot(steps, 95.0, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 5000
    assert 0 < demo_time.reference_seconds(repeats=1) < 120


def test_experiment_configs_load_and_plan_a_core() -> None:
    """bench/configs/*.toml (the research networks of docs/accuracy.md) load on their built-in
    bases and, untrained, become tables that the core generator plans (hidden fc layers included)."""
    import torch

    from firstspike.hw.plan import plan_core
    from firstspike.quantize.export import check_deployable, tables_from_model
    from firstspike.train.model import CSNN, load_config

    paths = sorted((Path(__file__).resolve().parents[1] / "bench" / "configs").glob("*.toml"))
    assert paths
    for p in paths:
        cfg, _ = load_config(p)
        check_deployable(cfg)
        torch.manual_seed(0)
        plan = plan_core(tables_from_model(CSNN(cfg)), lanes=64)
        assert len(plan.layers) == sum(ly.kind != "pool" for ly in cfg.layers), p.name


def test_report_marks_results_of_a_former_file_at_the_same_path(tmp_path, monkeypatch) -> None:
    """A checkpoint retrained at its path: results that ran other tables (their recorded hash is
    not the one bench/exactness.py records for the file now) say so in docs/benchmarks.md;
    results of the current file, and results without a hash, carry no mark."""
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "exactness.json").write_text(json.dumps({"runs": [{"checkpoint": "m.pt", "model_sha256_prefix": "bbbbbbbbbbbbbbbb"}]}))
    assert report._former("m.pt", "aaaaaaaaaaaaaaaa") == " (**former model** aaaaaaaa; the file now holds bbbbbbbb)"
    assert report._former("m.pt", "bbbbbbbbbbbbbbbb") == ""
    assert report._former("m.pt", None) == "" and report._former("n.pt", "aaaaaaaaaaaaaaaa") == ""


def test_a_board_build_at_another_clock_keeps_the_default_builds_row(tmp_path, monkeypatch) -> None:
    """A failed trial at 45 MHz must not erase the ULX3S build at its default 40 MHz; a rebuild at
    40 MHz replaces that row."""
    import boards as boards_bench

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    base = {"board": "ulx3s", "checkpoint": "m.pt", "positions": 2, "spikes": True, "read_reg": False}
    (tmp_path / "boards.json").write_text(json.dumps({"runs": [{**base, "clock_mhz": 40.0, "fmax_mhz": 48.1}]}))
    merged = common.merge_runs("boards", [{**base, "clock_mhz": 45.0, "error": "Fmax 43.5 misses 45"}], boards_bench.row_key)
    assert sorted(r["clock_mhz"] for r in merged) == [40.0, 45.0]
    (tmp_path / "boards.json").write_text(json.dumps({"runs": merged}))
    again = common.merge_runs("boards", [{**base, "clock_mhz": 40.0, "fmax_mhz": 47.0}], boards_bench.row_key)
    assert sorted((r["clock_mhz"], r.get("fmax_mhz")) for r in again) == [(40.0, 47.0), (45.0, None)]


def test_output_resolution_decisions_agree_where_the_earliest_step_is_untied() -> None:
    """bench/output_resolution.py on the committed ramp Fashion-MNIST network (200 test images):
    the step t' = ceil((thr - A) / r), clamped, is monotone in the real crossing time, so where one
    output fires alone at the earliest step it is also the earliest crossing; and the spike decision
    is the model's own (its classify)."""
    import torch

    from output_resolution import decisions

    from firstspike.data import load_split
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(ROOT / "bench/results/fashion-mnist_binary_csnn_fashion_ramp.pt")).eval()
    x = torch.from_numpy(load_split("fashion-mnist", "test").head(200).images.copy())
    spike, crossing, _, tied = decisions(model, x)
    assert torch.equal(spike, model.classify(x)[0])
    assert bool((spike[~tied] == crossing[~tied]).all())


@pytest.mark.parametrize("mode", ["real", "binary"])
def test_time_resolution_at_its_own_T_is_the_model_and_finer_clocks_keep_the_sums(mode: str) -> None:
    """bench/time_resolution.py on the committed Fashion-MNIST fc256 ramp networks (48 test images):
    ``at_T`` at the model's own T is the model, every layer's spike times; at 4 T the first layer's
    values (4T - t) / 4 stay within a step of T - t (the same sums, a finer input code and clock);
    ``levels`` counts the firing neurons and their quantiles of T - t."""
    import torch

    from time_resolution import at_T, levels

    from firstspike.data import load_split
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    ck = ROOT / f"bench/results/fashion-mnist_{mode}_csnn_fashion_fc256_ramp.pt"
    model = model_from_checkpoint(load_checkpoint(ck)).eval()
    x = torch.from_numpy(load_split("fashion-mnist", "test").head(48).images.copy())
    T = model.T
    with torch.no_grad():
        ref = model.forward_all(x)
        same = at_T(model, T).forward_all(x)
        fine = at_T(model, 4 * T).forward_all(x)
    assert all(torch.equal(a, b) for a, b in zip(ref, same))
    v, v4 = T - ref[1].double(), (4 * T - fine[1].double()) / 4
    assert float((v - v4).abs().mean()) < 1.0 and not torch.equal(v, v4)
    lv = levels(ref, T)
    assert len(lv) == len(ref) and lv[1]["firing"] == float((ref[1] < T).double().mean())
    assert all(1 <= q <= T for row in lv for q in row["quantiles"]) and all(row["quantiles"] == sorted(row["quantiles"]) for row in lv)


def _ablation_record(name: str, seed: int, test: float, recipe: dict | None, config: str = "csnn", **kw) -> dict:
    r = {"name": name, "config": config, "mode": "binary", "changes": {}, "seed": seed, "epochs": 2,
         "train_images": 60000, "test_acc": test, "train_acc": test + 0.01, **kw}  # fmt: skip
    return r if recipe is None else {**r, "recipe": recipe}


def test_park_and_resume_an_unfinished_ablation_run(tmp_path: Path) -> None:
    """--park copies an unfinished run (checkpoint, history, command) to the committed folder and
    lists it in that folder's README table; a fresh checkout's --resume copies it back (never over
    a checkpoint it has); a finished run drops its parked copy and its row; a run without a
    checkpoint is refused by name."""
    import accuracy_ablations as ab

    runs, parked = tmp_path / "runs", tmp_path / "in_progress"
    parked.mkdir()
    (parked / "README.md").write_text("# runs\n\n| folder | command | state |\n|---|---|---|\n\nFinished: x.\n")
    run = runs / "r1"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"ck1")
    (run / "history.json").write_text(json.dumps([{"test_acc": 0.9}, {"test_acc": 0.9123}]))
    (run / "command.txt").write_text("python bench/accuracy_ablations.py --resume --name r1 --epochs 40\n")
    ab.park("r1", runs, parked)
    assert (parked / "r1" / "checkpoint.pt").read_bytes() == b"ck1"
    readme = (parked / "README.md").read_text()
    assert "| r1 | `python bench/accuracy_ablations.py --resume --name r1 --epochs 40` | 2 epochs done, test 91.23%" in readme
    assert readme.endswith("\n\nFinished: x.\n") and not list(parked.glob(".*tmp"))
    fresh = tmp_path / "fresh_runs"
    assert ab.unpark("r1", fresh, parked) and (fresh / "r1" / "checkpoint.pt").read_bytes() == b"ck1"
    (fresh / "r1" / "checkpoint.pt").write_bytes(b"ck2")  # training went on: the parked copy must not overwrite it
    assert not ab.unpark("r1", fresh, parked) and (fresh / "r1" / "checkpoint.pt").read_bytes() == b"ck2"
    assert not ab.unpark("other", fresh, parked)
    assert ab.unpark_finished("r1", parked) and not (parked / "r1").exists()
    assert "| r1 |" not in (parked / "README.md").read_text() and not ab.unpark_finished("r1", parked)
    (runs / "r2").mkdir()
    with pytest.raises(SystemExit, match="r2 has no checkpoint.pt"):
        ab.park("r2", runs, parked)


def test_seed_means_group_runs_by_resolved_recipe_not_by_their_names() -> None:
    """bench/accuracy_ablations.py --means: records with equal resolved recipes form one group
    whatever config label they carry, a seed counts once (its latest record), records without a
    recipe and groups of one seed are left out; the spread is the sample standard deviation."""
    import accuracy_ablations as ab

    a = {"net": {"mode": "binary", "T": 64}, "train": {"dataset": "mnist", "epochs": 2, "lr": 0.005, "refit_epochs": 0}}
    b = {**a, "train": {**a["train"], "lr": 0.002}}
    recs = [_ablation_record("a0", 0, 0.9850, a), _ablation_record("a1_old", 1, 0.5, a),
            _ablation_record("a1", 1, 0.9860, a, config="other.toml"), _ablation_record("a2", 2, 0.9840, a),
            _ablation_record("b0", 0, 0.97, b), _ablation_record("legacy", 3, 0.1, None)]  # fmt: skip
    groups = ab.seed_means(recs)
    assert len(groups) == 1  # b has one seed, legacy no recipe
    g = groups[0]
    assert g["names"] == ["a0", "a1", "a2"] and g["seeds"] == [0, 1, 2] and g["labels"] == ["csnn", "other.toml"]
    assert abs(g["test_mean"] - 0.985) < 1e-12 and abs(g["test_sd"] - 0.001) < 1e-12
    assert ab.recipe_id(a) == ab.recipe_id(json.loads(json.dumps(a, sort_keys=True))) != ab.recipe_id(b)
    table = ab.means_table(groups)
    assert "csnn = other.toml" in table and "**98.50% +- 0.10**" in table
    assert len(ab.seed_means(recs, min_seeds=1)) == 2


def test_a_recipe_fills_settings_added_after_its_run_and_drops_the_seed() -> None:
    """Older code lacks newer settings (each added switched off): the recipe takes today's
    defaults for them, also inside layers; the seed, device and progress are not recipe."""
    import accuracy_ablations as ab

    from firstspike.train.trainer import TrainConfig

    resolved = {"net": {"name": "x", "T": 16, "mode": "binary", "input_shape": [1, 8, 8],
                        "layers": [{"kind": "fc", "channels": 10}]},
                "train": {"lr": 0.01, "seed": 7, "device": "cpu", "progress": True}}  # fmt: skip
    r = ab.recipe_from(resolved)
    assert r["train"]["lr"] == 0.01 and r["train"]["distill"] == TrainConfig().distill
    assert not {"seed", "device", "progress"} & set(r["train"]) and "name" not in r["net"]
    assert r["net"]["layers"] == [{"kind": "fc", "channels": 10, "kernel": 1, "stride": 1, "padding": 0, "weight_bits": 0}]


def test_a_commits_resolution_of_a_record_is_the_runs_own() -> None:
    """--backfill resolves an old record's settings with the code of the commit that first held it
    (a copy of that tree, this checkout's editable install kept out): on the current commit it gives
    what a run of the same settings records, refit epochs counted apart; a bad config gives an
    error for that record only."""
    import subprocess
    from dataclasses import asdict

    import accuracy_ablations as ab

    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        import pytest

        pytest.skip("not a git checkout: --backfill needs the history")
    sets = ["lr=0.002", "T=16", "clamp_weights=false"]
    cfg, tc, changes = ab.resolve("csnn_ice40", None, 3, 500, 4, sets)
    want = ab.recipe_from({"net": cfg.to_dict(), "train": asdict(tc)})
    rec = {"name": "r", "config": "csnn_ice40", "mode": cfg.mode, "epochs": 3 + tc.refit_epochs, "seed": 4,
           "train_images": 500, "changes": changes}  # fmt: skip
    bad = {**rec, "name": "bad", "config": "no_such_config"}
    got = ab.recipes_at("HEAD", [rec, bad])
    assert ab.recipe_from(got["r"]) == want
    assert tc.refit_epochs > 0 and got["r"]["train"]["epochs"] == 3
    assert "no_such_config" in got["bad"]["error"]
    assert ab.recipe_from(ab.recipes_at(None, [rec])["r"]) == want


def test_the_seeds_plot_draws_full_length_recipes_only(tmp_path) -> None:
    """The plot of --means leaves out screens (short runs, subsets, one or two seeds) and draws
    nothing when no recipe qualifies."""
    import accuracy_ablations as ab

    g = {"labels": ["csnn"], "dataset": "mnist", "mode": "binary", "epochs": 14, "train_images": 60000,
         "seeds": [0, 1, 2], "test": [0.985, 0.986, 0.984], "test_mean": 0.985}  # fmt: skip
    short = [{**g, "epochs": 4}, {**g, "train_images": 10000}, {**g, "seeds": [0, 1], "test": [0.9, 0.91]}]
    assert ab.plot_means(short, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    out = ab.plot_means(short + [g], tmp_path / "seeds.png")
    assert out is not None and out.stat().st_size > 1000


def test_the_selection_effect_compares_the_kept_epoch_with_the_last() -> None:
    """--selection: per run with a held-out curve, the test figure at the kept epoch and at the last;
    short runs and runs that held nothing out are left out."""
    import accuracy_ablations as ab

    curve = [0.97, 0.98, 0.985, 0.984]
    recs = [_ablation_record("early", 0, 0.985, None, epochs=4, test_curve=curve, kept_epoch=3, val_curve=[0.9] * 4),
            _ablation_record("last", 1, 0.984, None, epochs=4, test_curve=curve, kept_epoch=4, val_curve=[0.9] * 4),
            _ablation_record("none", 2, 0.984, None, epochs=4, test_curve=curve, kept_epoch=4, val_curve=[None] * 4),
            _ablation_record("short", 3, 0.98, None, epochs=2, test_curve=curve[:2], kept_epoch=2, val_curve=[0.9] * 2)]  # fmt: skip
    rows, s = ab.selection_effect(recs, min_epochs=3)
    assert [r["name"] for r in rows] == ["early", "last"]
    assert abs(rows[0]["delta"] + 0.001) < 1e-12 and rows[1]["delta"] == 0
    assert s["runs"] == 2 and s["kept_last"] == 1 and s["last_worse"] == 1 and s["last_better"] == 0
    assert abs(s["mean_delta"] + 0.0005) < 1e-12
    assert "| early | 4 | 3 | 98.50% | 98.40% | -0.10 |" in ab.selection_table(rows, s)


def test_fixed_point_table_has_a_row_per_checkpoint_and_reads_the_old_file(tmp_path, monkeypatch) -> None:
    """bench/fixed_point.py's result: a file of the single-checkpoint format and one of per-run
    records render the same row; each checkpoint gets its own row, a width it was not run at '-'."""
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOCS", tmp_path / "benchmarks.md")
    old = {"benchmark": "fixed_point", "date": "2026-12-02T23:02:56+00:00", "checkpoint": "bench/results/a.pt",
           "dataset": "mnist", "float_accuracy": 0.9882, "runs": [{"weight_bits": 4, "golden_accuracy": 0.9844},
                                                                 {"weight_bits": 8, "golden_accuracy": 0.9876}]}  # fmt: skip
    (tmp_path / "fixed_point.json").write_text(json.dumps(old))
    row_a = "| `a.pt` | mnist | 10000 | 98.82% | 98.44% | 98.76% | 2026-12-02 |"
    assert row_a in report.render_docs().read_text()
    runs = [{"checkpoint": "bench/results/a.pt", "dataset": "mnist", "float_accuracy": 0.9882, "weight_bits": b, "golden_accuracy": g,
             "date": "2026-12-02T23:02:56+00:00"} for b, g in ((4, 0.9844), (8, 0.9876))]  # fmt: skip
    runs.append({"checkpoint": "bench/results/b.pt", "dataset": "fashion-mnist", "images": 500, "float_accuracy": 0.9137,
                 "weight_bits": 8, "golden_accuracy": 0.912, "date": "2026-12-05T21:00:00+00:00"})  # fmt: skip
    (tmp_path / "fixed_point.json").write_text(json.dumps({"benchmark": "fixed_point", "runs": runs}))
    text = report.render_docs().read_text()
    assert row_a in text and "| `b.pt` | fashion-mnist | 500 | 91.37% | - | 91.20% | 2026-12-05 |" in text


def test_rtl_regression_sections_cover_every_result_and_name_the_weight_width(tmp_path, monkeypatch) -> None:
    """docs/benchmarks.md gets a section for each bench/rtl_regression.py --name, not only the known
    ones; a --weight-bits run names its width and is not called a former model by the exactness hash
    of the checkpoint's default tables, while a binary run with another hash still is."""
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOCS", tmp_path / "benchmarks.md")
    base = json.loads((ROOT / "bench" / "results" / "rtl_regression.json").read_text())
    ck = "bench/results/x_real.pt"
    ex = json.loads((ROOT / "bench" / "results" / "exactness.json").read_text())
    ex["runs"] = [{**ex["runs"][0], "checkpoint": ck, "model_sha256_prefix": "1111222233334444"}]
    (tmp_path / "exactness.json").write_text(json.dumps(ex))
    (tmp_path / "rtl_regression_zz_real4.json").write_text(json.dumps({**base, "model": ck, "model_sha256_prefix": "aaaabbbbccccdddd",
                                                                        "weight_bits": 4, "total_mismatches": 7}))  # fmt: skip
    (tmp_path / "rtl_regression_fc256.json").write_text(json.dumps({**base, "model": ck, "model_sha256_prefix": "aaaabbbbccccdddd"}))
    text = report.render_docs().read_text()
    four = text.split("--name rtl_regression_zz_real4)")[1]
    assert f"## RTL regression: {ck} at 4-bit weights on the generated core" in text
    assert "quantised to 4-bit weights (--weight-bits 4)" in four.split("##")[0] and "former model" not in four.split("##")[0]
    assert f"| {base['images']} | **7** |" in four
    binary = text.split("--name rtl_regression_fc256)")[1].split("##")[0]
    assert "**former model** aaaabbbb" in binary


def test_accuracy_table_names_the_start_and_the_teacher(tmp_path, monkeypatch) -> None:
    """docs/benchmarks.md's recipe column: a run started from a checkpoint names that file instead of
    the calibration, and a taught run its teacher; a run with neither names neither."""
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOCS", tmp_path / "benchmarks.md")
    acc = json.loads((ROOT / "bench" / "results" / "accuracy.json").read_text())
    run = acc["runs"][0]
    tr = {**run.get("train", {}), "calib": "fan_in", "init_from": "bench/results/r.pt", "distill": "runs/t/checkpoint.pt"}
    acc["runs"] = [{**run, "config": "started", "train": tr}, {**run, "config": "plain", "train": {**tr, "init_from": "", "distill": ""}}]
    (tmp_path / "accuracy.json").write_text(json.dumps(acc))
    lines = report.render_docs().read_text().splitlines()
    rows = {ln.split(" | ")[2]: ln for ln in lines if ln.startswith("| ") and (" | started | " in ln or " | plain | " in ln)}
    assert ", start from `r.pt`, taught by `checkpoint.pt`" in rows["started"] and "start fan_in" not in rows["started"]
    assert "start fan_in" in rows["plain"] and "start from" not in rows["plain"] and "taught" not in rows["plain"]


def test_window_step_timing_checks_float32_against_float64() -> None:
    """bench/train_speed.py's window step: both precisions run the same batches; binary spike
    times are identical (exact integer sums), gradients agree to float32 rounding, and the docs
    table has a row per mode."""
    import queue

    import train_speed
    from report import _window_step_lines

    q: queue.Queue = queue.Queue()
    train_speed._measure_window_step("csnn_fashion_ramp", "fashion-mnist", 2, 1, q)
    ws = q.get()
    for mode in ("binary", "real"):
        r = ws["modes"][mode]
        assert r["spike_times"] > 0 and len(r["ms_per_step"]["float64"]) == len(r["ms_per_step"]["float32"]) == 1
        assert r["first_batch_grad_relative_difference"] < 1e-4
        r.update(float64_ms=2.0, float32_ms=1.0, speedup=2.0)
    assert ws["modes"]["binary"]["spike_times_differing"] == 0
    lines = _window_step_lines({**ws, "date": "d", "commit": "c"})
    assert sum(line.startswith(("| binary |", "| real |")) for line in lines) == 2


def test_accuracy_rows_name_the_k_bit_layers_of_a_binary_network() -> None:
    """A binary network with a 4-bit first and output layer is not reported as plain "binary"
    (its row would read as the all-binary goal's); the widths come from the network's config."""
    from firstspike.train.model import load_config

    cfg, _ = load_config("csnn_fashion_fc256_ramp_m4")
    assert cfg.weight_widths() == [4, 1, 1, 4]
    assert common.weights_label("binary", cfg.weight_widths()) == "binary; layers 1, 4 at 4 bits"
    plain, _ = load_config("csnn_fashion_fc256_ramp")
    assert plain.weight_widths() == [1, 1, 1, 1] and common.weights_label("binary", plain.weight_widths()) == "binary"
    plain.mode = "real"
    assert plain.weight_widths() == [] and common.weights_label("real", []) == "real"
    assert common.weights_label("binary", [4, 1, 1, 2]) == "binary; layer 4 at 2 bits; layer 1 at 4 bits"


def test_gate_level_and_board_rows_name_the_dsp_blocks_of_a_k_bit_core(tmp_path, monkeypatch) -> None:
    """A gate-level run or board build whose netlist uses DSP blocks (k-bit layers: MULT18X18D)
    says how many; binary rows, which use none, stay as they were."""
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOCS", tmp_path / "benchmarks.md")
    gl = json.loads((ROOT / "bench" / "results" / "gate_level.json").read_text())
    binary = next(r for r in gl["runs"] if not r.get("dsp_cells"))
    gl["runs"] = [binary, {**binary, "model": "bench/results/k.pt", "bram_cells": 238, "dsp_cells": 74}]
    (tmp_path / "gate_level.json").write_text(json.dumps(gl))
    bd = json.loads((ROOT / "bench" / "results" / "boards.json").read_text())
    run = next(r for r in bd["runs"] if "error" not in r and not r["resources"].get("dsp", {}).get("used"))
    res = {**run["resources"], "dsp": {"used": 42, "available": 156}}
    bd["runs"] = [run, {**run, "board": "ulx3s", "model": "kbit", "resources": res}]
    (tmp_path / "boards.json").write_text(json.dumps(bd))
    text = report.render_docs().read_text()
    k_row = next(ln for ln in text.splitlines() if "`bench/results/k.pt`" in ln)
    assert "| 238 + 74 DSP |" in k_row
    b_row = next(ln for ln in text.splitlines() if ln.startswith("| ulx3s") and "| kbit" in ln)
    assert f"{res['bram']['used']}/{res['bram']['available']} (+ 42/156 DSP) |" in b_row
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "| model |" not in ln and "| board |" not in ln]
    assert [ln for ln in rows if "DSP" in ln] == [k_row, b_row]

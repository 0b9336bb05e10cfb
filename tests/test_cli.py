"""The command line (`python -m firstspike ...`) and checkpoint files: help, clean exit
code 2 with a message naming the culprit (never a traceback) for every user error, atomic
checkpoint writes, version check, and one tiny real train -> eval -> resume run."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import firstspike.train.trainer as trainer
from firstspike.cli import main
from firstspike.errors import CheckpointError
from firstspike.train.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint

TINY = ["--config", "csnn_tiny", "--train-subset", "256", "--test-subset", "200", "--no-progress", "--device", "cpu"]


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m firstspike ARGS`` in ``cwd`` and capture its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "firstspike", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_user_error(r: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit code 2, every name in stderr, no traceback."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    for n in names:
        assert n in r.stderr, f"{n!r} not named in stderr:\n{r.stderr}"


def payload(**extra: Any) -> dict[str, Any]:
    """A minimal dict that passes load_checkpoint's format check."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": 3, "w": torch.arange(5.0), **extra}


# --- help -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cmd,expect",
    [
        ([], ["train", "eval", "--verbose"]),
        (["train"], ["--config", "--data-dir", "--no-resume", "--epochs"]),
        (["eval"], ["--limit", "--split", "--json"]),
    ],
    ids=["top", "train", "eval"],
)
def test_help(tmp_path: Path, cmd: list[str], expect: list[str]) -> None:
    """`--help` exits 0 and lists the options of each level."""
    r = run_cli(*cmd, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: firstspike"), r.stdout
    for opt in expect:
        assert opt in r.stdout


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """No subcommand: argparse usage error (exit 2), not a crash."""
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2
    assert "usage: firstspike" in capsys.readouterr().err


# --- eval errors ----------------------------------------------------------------------------
def test_eval_missing_checkpoint(tmp_path: Path) -> None:
    """eval of a checkpoint that does not exist: exit 2 naming the file."""
    missing = tmp_path / "nope" / "checkpoint.pt"
    assert_user_error(run_cli("eval", str(missing), cwd=tmp_path), str(missing), "not found")


def test_eval_corrupt_checkpoint(tmp_path: Path) -> None:
    """eval of random bytes in a .pt file: exit 2 naming the file, no traceback."""
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(os.urandom(4096))
    assert_user_error(run_cli("eval", str(bad), cwd=tmp_path), str(bad), "not a readable checkpoint")


@pytest.mark.parametrize("content", ["random", "empty", "zip-cut"])
def test_load_corrupt_checkpoint(tmp_path: Path, content: str) -> None:
    """Random bytes, an empty file and a checkpoint cut in half all raise CheckpointError naming the file."""
    bad = tmp_path / "checkpoint.pt"
    if content == "random":
        bad.write_bytes(os.urandom(4096))
    elif content == "empty":
        bad.write_bytes(b"")
    else:
        torch.save(payload(big=torch.zeros(10000)), bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(bad)
    assert str(bad) in str(ei.value)


def test_corrupt_checkpoint_message_is_clear(tmp_path: Path) -> None:
    """The message for a corrupt file is one line and does not pass on torch's advice to
    retry with weights_only=False (wrong for a damaged file, and unsafe)."""
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x80\x02" + bytes(range(96, 200)))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(bad)
    msg = str(ei.value)
    assert str(bad) in msg
    assert "\n" not in msg, msg
    assert "weights_only" not in msg, msg


def test_load_foreign_torch_file(tmp_path: Path) -> None:
    """A valid torch file that is not a firstspike checkpoint is rejected by name."""
    p = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    with pytest.raises(CheckpointError, match="not a firstspike checkpoint") as ei:
        load_checkpoint(p)
    assert str(p) in str(ei.value)


def test_newer_checkpoint_version_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint from a newer firstspike: CheckpointError telling to upgrade; eval exits 2."""
    p = tmp_path / "future.pt"
    save_checkpoint(p, payload(version=CHECKPOINT_VERSION + 1))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(p)
    msg = str(ei.value)
    assert "upgrade" in msg and str(p) in msg
    assert str(CHECKPOINT_VERSION + 1) in msg
    with caplog.at_level(logging.ERROR, logger="firstspike"):
        assert main(["eval", str(p), "--no-progress"]) == 2
    assert any("upgrade" in r.getMessage() for r in caplog.records)


def test_current_version_loads(tmp_path: Path) -> None:
    """Control for the test above: the current version round-trips."""
    p = tmp_path / "now.pt"
    save_checkpoint(p, payload())
    ck = load_checkpoint(p)
    assert ck["version"] == CHECKPOINT_VERSION and ck["epoch"] == 3
    assert torch.equal(ck["w"], torch.arange(5.0))


# --- train errors ---------------------------------------------------------------------------
def test_train_missing_config(tmp_path: Path) -> None:
    """train --config with a name that is neither a file nor a built-in: exit 2 naming it."""
    r = run_cli("train", "--config", "does-not-exist", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(r, "does-not-exist", "csnn_tiny")
    assert not (tmp_path / "out").exists()


def test_train_missing_data_dir(tmp_path: Path) -> None:
    """train --data-dir /nonexistent: exit 2 naming the folder, nothing written."""
    out = tmp_path / "out"
    r = run_cli("train", *TINY, "--epochs", "1", "--data-dir", "/nonexistent", "--out", str(out), cwd=tmp_path)
    assert_user_error(r, "/nonexistent")
    assert not (out / "checkpoint.pt").exists()


def test_train_teacher_that_does_not_fit(tmp_path: Path) -> None:
    """train --distill with a teacher of other classes or a missing file: exit 2 naming it, nothing written."""
    from firstspike.train.model import CSNN, load_config
    from firstspike.train.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    cfg, _ = load_config("csnn_tiny")
    cfg.layers[-1].channels = 4
    teacher = tmp_path / "four.pt"
    save_checkpoint(teacher, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "net": cfg.to_dict(),
                              "train": {"dataset": "mnist"}, "state_dict": CSNN(cfg).state_dict()})  # fmt: skip
    for path, needle in ((teacher, "4 classes"), (tmp_path / "none.pt", "none.pt")):
        out = tmp_path / "out"
        r = run_cli("train", *TINY, "--epochs", "1", "--distill", str(path), "--out", str(out), cwd=tmp_path)
        assert_user_error(r, needle)
        assert not (out / "checkpoint.pt").exists()


def test_train_init_from(tmp_path: Path) -> None:
    """train --init-from: a binary run starts from a real-valued checkpoint of the same layers (its
    record names it); one of other layers or a missing file exits 2 naming it, nothing written."""
    real = tmp_path / "real"
    r = run_cli("train", *TINY, "--epochs", "1", "--mode", "real", "--out", str(real), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bin"
    r = run_cli("train", *TINY, "--epochs", "1", "--init-from", str(real / "checkpoint.pt"), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import torch

    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["train"]["init_from"] == str(real / "checkpoint.pt") and ck["net"]["mode"] == "binary"
    other = tmp_path / "other.toml"
    other.write_text(BAD_KIND_TOML.replace("maxpool", "pool").replace("channels = 4", "channels = 3"))
    wrong = tmp_path / "wrong"
    assert run_cli("train", "--config", str(other), *TINY[2:], "--epochs", "1", "--mode", "real", "--out", str(wrong),
                   cwd=tmp_path).returncode == 0  # fmt: skip
    for path, needle in ((wrong / "checkpoint.pt", "init_from"), (tmp_path / "none.pt", "none.pt")):
        out = tmp_path / "out"
        r = run_cli("train", *TINY, "--epochs", "1", "--init-from", str(path), "--out", str(out), cwd=tmp_path)
        assert_user_error(r, needle)
        assert not (out / "checkpoint.pt").exists()


BAD_KIND_TOML = """
name = "bad"
T = 16
[[layers]]
kind = "conv"
channels = 4
kernel = 3
[[layers]]
kind = "maxpool"
kernel = 2
[[layers]]
kind = "fc"
channels = 10
"""


@pytest.mark.parametrize(
    "text,needle",
    [
        (BAD_KIND_TOML, "maxpool"),
        (BAD_KIND_TOML.replace('kind = "maxpool"', 'kind = "pool"\nsize = 2'), "size"),
        ("name = 'x'\nT = 16\n[[layers]\nkind = 'fc'", "invalid TOML"),
        (BAD_KIND_TOML.replace("maxpool", "pool") + "[train]\nepochz = 3\n", "epochz"),
        ("base = 'no-such-base'\nname = 'x'\n", "no-such-base"),
        ("base = 'BAD_TOML_PATH'\nname = 'x'\n", "cycle"),
        ("base = 'csnn_tiny'\nname = 'x'\nsilent_rule = 'vote'\n", "silent_rule='vote'"),
    ],
    ids=["bad-kind", "bad-key", "bad-toml", "bad-train-key", "missing-base", "base-cycle", "bad-silent-rule"],
)
def test_train_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, needle: str) -> None:
    """A TOML config with a bad layer kind (or key, or syntax): train exits 2 with a message naming it."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text.replace("BAD_TOML_PATH", str(cfg)))  # a config that is its own base
    with caplog.at_level(logging.ERROR, logger="firstspike"):
        rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    assert rc == 2
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(needle in m for m in msgs), msgs
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


# --- atomic checkpoint writes ---------------------------------------------------------------
def _failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """Stand-in for torch.save that writes half a file and then fails (disk full)."""
    Path(f).write_bytes(b"PK\x03\x04 partial checkpoint")
    raise OSError(28, "No space left on device")


def test_save_checkpoint_atomic_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save failing mid-way leaves neither the target nor a temp file behind."""
    target = tmp_path / "run" / "checkpoint.pt"
    monkeypatch.setattr(trainer.torch, "save", _failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(target, payload())
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_save_checkpoint_atomic_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save failing mid-way leaves an existing checkpoint intact and no temp file."""
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, payload(epoch=1))
    before = target.read_bytes()
    monkeypatch.setattr(trainer.torch, "save", _failing_save)
    with pytest.raises(OSError):
        save_checkpoint(target, payload(epoch=2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert target.read_bytes() == before
    assert load_checkpoint(target)["epoch"] == 1


def test_save_checkpoint_replaces(tmp_path: Path) -> None:
    """Control: a successful save replaces the old file and leaves no temp file."""
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, payload(epoch=1))
    save_checkpoint(target, payload(epoch=2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert load_checkpoint(target)["epoch"] == 2


# --- a tiny real run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """train 1 epoch -> eval -> train again to 2 epochs on the same --out (run once per module)."""
    root = tmp_path_factory.mktemp("tiny")
    out = root / "out"
    res: dict[str, Any] = {"out": out}
    res["train1"] = run_cli("train", *TINY, "--epochs", "1", "--out", str(out), cwd=root, timeout=300)
    if (out / "checkpoint.pt").is_file():
        shutil.copy(out / "checkpoint.pt", root / "epoch1.pt")
        res["history1"] = json.loads((out / "history.json").read_text())
    ev_args = ["--limit", "200", "--no-progress", "--json", str(root / "eval.json")]
    res["eval"] = run_cli("eval", str(out / "checkpoint.pt"), *ev_args, cwd=root)
    res["eval_json"] = root / "eval.json"
    res["train2"] = run_cli("train", *TINY, "--epochs", "2", "--out", str(out), cwd=root, timeout=300)
    res["epoch1"] = root / "epoch1.pt"
    return res


def test_tiny_train_eval_resume(tiny_run: dict[str, Any]) -> None:
    """A tiny run writes checkpoint + history, eval reports the same accuracy, a rerun resumes."""
    out: Path = tiny_run["out"]
    t1 = tiny_run["train1"]
    assert t1.returncode == 0, t1.stderr
    assert "Traceback" not in t1.stderr
    assert re.search(r"^test accuracy: \d+\.\d\d%$", t1.stdout, re.M), t1.stdout
    h1 = tiny_run["history1"]
    assert [r["epoch"] for r in h1] == [1]
    ck1 = load_checkpoint(tiny_run["epoch1"])
    assert ck1["epoch"] == 1 and ck1["net"]["name"] == "csnn_tiny"
    assert ck1["train"]["train_subset"] == 256 and ck1["train"]["test_subset"] == 200

    ev = tiny_run["eval"]
    assert ev.returncode == 0, ev.stderr
    m = re.search(r"^mnist test accuracy: (\d+\.\d\d)% \(200 images, binary, T=32\)$", ev.stdout, re.M)
    assert m, ev.stdout
    res = json.loads(tiny_run["eval_json"].read_text())
    assert res["images"] == 200 and res["dataset"] == "mnist" and res["split"] == "test"
    # same model, same 200 test images, integer forward pass: exactly the accuracy training logged
    assert res["accuracy"] == ck1["test_acc"] == h1[0]["test_acc"]
    assert float(m.group(1)) == pytest.approx(100 * res["accuracy"], abs=0.005)

    t2 = tiny_run["train2"]
    assert t2.returncode == 0, t2.stderr
    assert "resumed" in t2.stderr, t2.stderr
    assert "calibrated" not in t2.stderr  # a resumed run does not re-initialise
    h2 = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in h2] == [1, 2]
    assert h2[0] == h1[0]  # the first epoch's record is kept as it was
    ck2 = load_checkpoint(out / "checkpoint.pt")
    assert ck2["epoch"] == 2 and ck2["history"] == h2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json"]


def test_resume_with_more_epochs_keeps_learning(tiny_run: dict[str, Any]) -> None:
    """Extending a finished run (--epochs 1 -> 2) must train in the added epoch: the
    weights of the resumed epoch differ from those it started from (a learning rate of 0,
    e.g. a cosine schedule still annealing over the old epoch count, would leave them equal)."""
    assert tiny_run["train2"].returncode == 0, tiny_run["train2"].stderr
    sd1 = load_checkpoint(tiny_run["epoch1"])["state_dict"]
    sd2 = load_checkpoint(tiny_run["out"] / "checkpoint.pt")["state_dict"]
    changed = [k for k in sd1 if sd1[k].is_floating_point() and not torch.equal(sd1[k], sd2[k])]
    assert changed, "epoch 2 of the resumed run changed no parameter (learning rate was 0?)"


def test_config_base_inherits_and_overrides(tmp_path: Path) -> None:
    """``base = "NAME"``: the base's settings with the file's on top; [train] merged key by key."""
    from firstspike.train.model import load_config

    base, btrain = load_config("csnn")
    fash, ftrain = load_config("csnn_fashion")
    assert fash.to_dict() == {**base.to_dict(), "name": "csnn_fashion", "input_gamma": 0.5}
    # csnn_fashion drops csnn's deadline, adds an output refit and sets two of csnn's real-mode keys
    assert btrain["t_goal"] == 0.5 and btrain["real"] == {"augment_shift": 1, "epochs": 16, "latency": "rho"}
    # both keep csnn's former binary recipe (10 epochs, -1/rho), which trained their committed models
    assert ftrain == {**btrain, "epochs": 10, "latency": "rho", "t_goal": 1.0, "refit_epochs": 1, "refit_out_weight_bits": 2, "refit_t_goal": 0.98,
                      "real": {"augment_shift": 0, "epochs": 10, "latency": "rho"}}  # fmt: skip
    own = tmp_path / "own.toml"
    own.write_text('base = "csnn"\nname = "own"\nT = 32\n[train]\nlr = 0.01\n[train.real]\nlr = 0.02\n[train.binary]\ngamma = 2\n')
    cfg, train = load_config(own)
    # [train] and its mode sub-tables key by key: the base's real-mode epochs stay
    assert (cfg.name, cfg.T, cfg.layers) == ("own", 32, base.layers)
    assert train == {**btrain, "lr": 0.01, "real": {**btrain["real"], "lr": 0.02}, "binary": {"gamma": 2}}
    real, binary = trainer.TrainConfig.from_dict(train, "real"), trainer.TrainConfig.from_dict(train, "binary")
    assert (real.lr, real.epochs, real.augment_shift, real.gamma) == (0.02, 16, 1, btrain["gamma"])
    assert (binary.lr, binary.epochs, binary.augment_shift, binary.gamma) == (0.01, btrain["epochs"], 0, 2)
    # a base's layers are replaced as a whole: csnn_strided is csnn without pools, the same
    # features into the classifier, csnn's [train]
    strided, strain = load_config("csnn_strided")
    assert [ly.kind for ly in strided.layers] == ["conv", "conv", "fc"] and strain == {**btrain, "epochs": 10, "latency": "rho"}
    assert strided.shapes()[-2] == base.shapes()[-2] == (64, 7, 7)
    assert {k: v for k, v in strided.to_dict().items() if k not in ("name", "layers")} == \
        {k: v for k, v in base.to_dict().items() if k not in ("name", "layers")}

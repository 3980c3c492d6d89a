"""--resume: a run continued from its last checkpoint ends where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, CtrlCAtEpoch, assert_one_line_error, metrics, run_dirs, tiny_config

from rnnctl import loop
from rnnctl.runs import RunFolder


@pytest.fixture
def reference(names_files, isolated):
    """An uninterrupted 4-epoch run (dropout on, so the torch RNG state matters too)."""
    loop.train(tiny_config(names_files, "train.epochs=4", "model.dropout=0.3"), command="ref", loggers=[])
    (run,) = run_dirs(isolated)
    return run


def test_interrupted_then_resumed_equals_uninterrupted(names_files, isolated, reference, cli):
    cfg = tiny_config(names_files, "train.epochs=4", "model.dropout=0.3", "name=cut")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, command="cut", loggers=[CtrlCAtEpoch(2)])
    (cut,) = [d for d in run_dirs(isolated) if d.name.endswith("-cut")]
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    result = cli("train", "--resume", str(cut))
    assert result.exit_code == 0, result.output
    assert metrics(cut) == metrics(reference)
    assert RunFolder(cut).steps() == RunFolder(reference).steps()  # per-step losses and gradient norms too
    info = json.loads((cut / "run.json").read_text())
    ref = json.loads((reference / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 4
    assert info["test"] == ref["test"]
    assert info["history"][0]["from_epoch"] == 2 and info["history"][0]["status_before"] == "interrupted"


@pytest.mark.slow
def test_completed_run_extends_with_epochs(names_files, isolated, reference, cli):
    loop.train(tiny_config(names_files, "train.epochs=2", "model.dropout=0.3", "name=short"), command="s", loggers=[])
    (short,) = [d for d in run_dirs(isolated) if d.name.endswith("-short")]
    assert_one_line_error(cli("train", "--resume", str(short)), "has trained all its 2 epochs", "--epochs N")
    line = assert_one_line_error(cli("train", "--resume", str(short), "--epochs", "1"), "--epochs 1", "give N > 2")
    assert "2 of 1" not in line and "1 of 2" not in line
    result = cli("train", "--resume", str(short), "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert metrics(short) == metrics(reference)


def test_resume_without_checkpoints_says_what_is_missing_and_how_to_start_over(cli, copy_run):
    import shutil

    shutil.rmtree(copy_run / "checkpoints")  # metrics for 3 epochs stay
    before = (copy_run / "metrics.jsonl").read_text()
    line = assert_one_line_error(cli("train", "--resume", copy_run.name), "last.pt is missing", "3 epochs")
    assert f"rnnctl train {copy_run / 'config.yaml'}" in line
    assert (copy_run / "metrics.jsonl").read_text() == before  # nothing started over
    assert cli("train", copy_run / "config.yaml", "--set", "train.epochs=1", "-q").exit_code == 0  # as it says


def test_resume_argument_errors(cli, copy_run, names_files):
    assert_one_line_error(cli("train", TINY, "--resume", copy_run.name), "--resume")
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--set", "train.lr=1"), "--resume")
    assert_one_line_error(cli("train"), "CONFIG")
    assert_one_line_error(cli("train", "--resume", "no-such-run"), "unknown run")
    info = json.loads((copy_run / "run.json").read_text())
    info["status"] = "running"  # and this process is alive: it is really running
    import os

    info["pid"], info["host"] = os.getpid(), os.uname().nodename
    (copy_run / "run.json").write_text(json.dumps(info))
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--epochs", "9"), "still running")


def test_truncate_drops_rows_after_the_checkpoint(tmp_path):
    rows = [{"epoch": 1, "step": 10}, {"epoch": 2, "step": 15, "partial": True}, {"epoch": 2, "step": 20}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = RunFolder(tmp_path).truncate(10)
    assert kept == rows[:1] and RunFolder(tmp_path).rows() == rows[:1]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,step", "1,10"]

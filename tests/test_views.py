"""Commands on saved runs say which run and checkpoint they used (on stderr: stdout stays data), `runs` shows
what each run changed from its config file, and `compare` what differs between the runs' configs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, TINY, assert_one_line_error, run_dirs

from rnnctl import plots


def best_epoch(run: Path) -> int:
    return json.loads((run / "run.json").read_text())["best"]["epoch"]


@pytest.fixture(scope="module")
def lstm_run(trained_run, tmp_path_factory) -> Path:
    """The session's run again with `--set model.cell=lstm --set train.seed=2`, once per module: copy it."""
    from typer.testing import CliRunner

    from rnnctl.cli import app

    base = tmp_path_factory.mktemp("lstm-run")
    args = ["train", str(TINY), *trained_run.files.set_args(), "--set", "model.cell=lstm", "--set", "train.seed=2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNCTL_RUNS", str(base))
        mp.setattr(sys, "argv", ["rnnctl", *args])  # what run.json records as the command
        result = CliRunner().invoke(app, [*args, "-q"])
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(base)
    return run


@pytest.fixture
def lstm(lstm_run, isolated) -> Path:
    isolated.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(lstm_run, isolated / lstm_run.name))


@pytest.fixture
def train(cli, monkeypatch):
    """`rnnctl train ARGS` through the CLI, with the command line that run.json records."""

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["rnnctl", "train", *map(str, args)])
        result = cli("train", *args)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def test_eval_and_predict_say_which_run_and_checkpoint(cli, copy_run):
    best = best_epoch(copy_run)
    result = cli("eval", "latest")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using run {copy_run.name}, checkpoint best.pt (epoch {best})\n"
    assert "using run" not in result.stdout
    result = cli("predict", copy_run.name, "Petrovski", "--checkpoint", "last")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using run {copy_run.name}, checkpoint last.pt (epoch 3)\n"
    assert result.stdout.splitlines()[1].split()[0] == "Petrovski"  # the table alone on stdout
    # a command that fails says only why
    failed = cli("predict", copy_run.name, "Smith", "--checkpoint", "middle")
    assert_one_line_error(failed, "--checkpoint")
    assert "using" not in failed.stderr


def test_resume_says_which_run_and_checkpoint(cli, copy_run):
    result = cli("train", "--resume", "latest", "--epochs", "4", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using run {copy_run.name}, checkpoint last.pt (epoch 3)\n"


def test_compare_says_which_runs(cli, copy_run, isolated):
    other = Path(shutil.copytree(copy_run, isolated / "20200101-000000-twin"))
    result = cli("compare", "latest", other.name)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using runs {copy_run.name}, {other.name}\n"
    assert "the configs are the same" in result.stdout


@pytest.mark.slow
def test_sample_and_forecast_say_which_run_and_keep_stdout_data(cli, tmp_path, isolated):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 60)
    charlm = cli("train", CONFIGS / "smoke" / "charlm_tiny.yaml", "--set", f"data.path={text}", "-q")
    assert charlm.exit_code == 0, charlm.output
    (lm,) = run_dirs(isolated)
    result = cli("sample", "--prompt", "the ", "--length", "20", "--rng-seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using run {lm.name}, checkpoint best.pt (epoch {best_epoch(lm)})\n"
    assert result.stdout.startswith("the ") and len(result.stdout) == len("the ") + 20 + 1  # the text alone
    failed = cli("predict", lm.name, "Smith")
    assert_one_line_error(failed, "does not classify")
    assert "using" not in failed.stderr  # it used nothing

    series = cli("train", CONFIGS / "smoke" / "series_tiny.yaml", "-q")
    assert series.exit_code == 0, series.output
    (ts,) = [r for r in run_dirs(isolated) if r != lm]
    result = cli("predict", ts.name, "--horizon", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using run {ts.name}, checkpoint best.pt (epoch {best_epoch(ts)})\n"
    assert "using" not in result.stdout and "forecast-3.csv" in result.stdout


# -- what a run changed, what runs differ in -------------------------------------------------------


def test_runs_shows_what_each_run_changed(cli, train, copy_run, lstm, trained_run):
    train("--resume", copy_run.name, "--epochs", "4", "-q")
    listed = cli("runs").stdout
    line = next(line.rstrip() for line in listed.splitlines() if line.startswith(lstm.name))
    assert line.endswith(
        f"data.path={trained_run.files.train} data.test_path={trained_run.files.test} model.cell=lstm train.seed=2"
    ), line
    line = next(line.rstrip() for line in listed.splitlines() if line.startswith(copy_run.name))
    assert line.endswith(" train.epochs=4"), line  # the resume's --epochs, valued as config.yaml has it
    assert "changes" in listed.splitlines()[0]


def test_compare_shows_what_differs_and_labels_the_curves_with_it(cli, copy_run, lstm, monkeypatch):
    drawn = []
    compare = plots.compare
    monkeypatch.setattr(
        plots, "compare", lambda curves, *a: drawn.append([c[0] for c in curves]) or compare(curves, *a)
    )
    result = cli("compare", copy_run.name, lstm.name)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    differs = out[out.index("what differs:") + 2 :]
    assert differs[0].split() == [copy_run.name, "model.cell=gru", "train.seed=0"]
    assert differs[1].split() == [lstm.name, "model.cell=lstm", "train.seed=2"]
    (folder,) = (copy_run.parent / "compare").iterdir()
    saved = json.loads((folder / "compare.json").read_text())
    assert saved["differs"] == {"model.cell": ["gru", "lstm"], "train.seed": ["0", "2"]}
    assert saved["labels"] == drawn[0] == ["cell=gru, seed=0", "cell=lstm, seed=2"]


def test_result_tables_fit_80_columns(cli, copy_run, lstm, monkeypatch):
    from rich.console import Console

    from rnnctl import cli as cli_module

    terminal = Console(width=80, force_terminal=True, color_system=None, highlight=False)
    monkeypatch.setattr(cli_module, "out", terminal)
    lines = cli("runs").stdout.splitlines()
    assert not any("…" in line or len(line) > 80 for line in lines), lines
    header = lines[0].split()
    assert header[:2] == ["id", "status"] and header[-3:] == ["val", "test", "changes"], header  # task, epochs go
    start, column = lines.index(next(line for line in lines if line.startswith(lstm.name))), lines[0].index("changes")
    assert "acc 0." in lines[start]  # the best validation accuracy, whole
    changes = "".join(line[column:] for line in lines[start:]).replace(" ", "")  # wrapped, not cut
    assert changes.endswith("names_test.csvmodel.cell=lstmtrain.seed=2"), changes
    compared = cli("compare", copy_run.name, lstm.name).stdout
    tables = [line for line in compared.splitlines() if not line.startswith("plot and table: ")]  # a path: soft-wrapped
    assert "…" not in compared and all(len(line) <= 80 for line in tables), compared
    assert "best val_acc" in compared and "model.cell=lstm" in compared

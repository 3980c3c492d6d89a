"""The run folders on disk: a runs root that cannot hold them, `runs` (broken records, filters, sorting),
`latest` and sweep members resolved, and `compare`."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY, assert_one_line_error

from rnnctl.runs import RunFolder, all_runs


def test_runs_folder_that_is_a_file_is_a_one_line_error(cli, names_files, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("RNNCTL_RUNS", str(blocker))
    assert_one_line_error(cli("train", TINY, *names_files.set_args()), str(blocker), "cannot create a run folder")


def test_runs_lists_a_broken_run_json_as_unreadable(cli, copy_run, isolated):
    broken = isolated / "20200101-000000-broken"
    broken.mkdir()
    (broken / "run.json").write_text("[1, 2, 3]")
    result = cli("runs")
    assert result.exit_code == 0, result.output
    assert "unreadable" in result.stdout and copy_run.name in result.stdout


def test_latest_orders_runs_started_in_the_same_second_by_their_start(isolated):
    import datetime as dt

    now = dt.datetime(2024, 1, 2, 3, 4, 5)
    first = RunFolder.create("zebra", isolated, now=now).path  # sorts last by name, but started first
    second = RunFolder.create("aardvark", isolated, now=now).path
    for i, d in enumerate((first, second)):
        (d / "run.json").write_text(json.dumps({"id": d.name, "status": "completed", "created_ns": 1000 + i}))
    assert [r.path for r in all_runs(isolated)] == [first, second]


def test_runs_filters_and_sorts(cli, copy_run, isolated):
    other = isolated / "20200101-000000-lm"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({
        "id": other.name, "task": "charlm", "status": "failed", "epochs": 3, "epochs_done": 1, "duration": 999.0,
        "best": {"epoch": 1, "value": 1.5, "metric": "val_loss", "mode": "min"},
    }))  # fmt: skip
    names_only = cli("runs", "--task", "names").stdout
    assert copy_run.name in names_only and other.name not in names_only
    failed = cli("runs", "--status", "failed").stdout
    assert other.name in failed and copy_run.name not in failed
    by_duration = cli("runs", "--sort", "duration").stdout
    assert by_duration.index(other.name) < by_duration.index(copy_run.name)  # 999 s first
    by_created = cli("runs").stdout
    assert by_created.index(other.name) < by_created.index(copy_run.name)  # 2020 first
    assert_one_line_error(cli("runs", "--sort", "size"), "--sort")


def test_compare_two_runs_writes_a_plot_and_a_table(cli, copy_run, isolated):
    import shutil

    other = Path(shutil.copytree(copy_run, isolated / "20200101-000000-twin"))
    result = cli("compare", copy_run.name, other.name)
    assert result.exit_code == 0, result.output
    (out,) = (isolated / "compare").iterdir()
    assert (out / "compare.png").stat().st_size > 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["metric"] == "val_acc" and [r["id"] for r in summary["runs"]] == [copy_run.name, other.name]
    best = json.loads((copy_run / "run.json").read_text())["best"]
    assert summary["runs"][0]["best"] == best["value"] and summary["runs"][0]["best_epoch"] == best["epoch"]
    assert copy_run.name in result.stdout and "compare.png" in result.stdout
    assert_one_line_error(cli("compare", copy_run.name), "at least two runs")
    assert_one_line_error(cli("compare", copy_run.name, other.name, "--metric", "val_bleu"), "val_bleu")


def test_compare_on_another_metric_than_the_runs_picks_by_that_metrics_direction(cli, copy_run, isolated):
    """Runs picked by accuracy (max) compared on their loss: the best loss is the lowest, not the highest."""
    import shutil

    other = Path(shutil.copytree(copy_run, isolated / "20200101-000000-twin"))
    result = cli("compare", copy_run.name, other.name, "--metric", "val_loss")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (copy_run / "metrics.jsonl").read_text().splitlines()]
    lowest = min(rows, key=lambda r: r["val_loss"])
    (out,) = (isolated / "compare").iterdir()
    shown = json.loads((out / "compare.json").read_text())["runs"][0]
    assert (shown["best"], shown["best_epoch"]) == (lowest["val_loss"], lowest["epoch"])
    line = next(line for line in result.stdout.splitlines() if line.startswith(copy_run.name))
    assert f"{lowest['val_loss']:.4f}" in line.split()[3], line  # the `best val_loss` column


def test_compare_runs_of_two_tasks_lists_only_the_keys_each_run_has(cli, copy_run, isolated, monkeypatch):
    """A sincos run beside a names run: each says its own settings, not `data.bucket=-` for every key of the other."""
    monkeypatch.setenv("COLUMNS", "80")
    assert cli("train", "smoke/sincos_tiny", "--quiet").exit_code == 0
    wave = next(r for r in isolated.iterdir() if r.name.endswith("sincos_tiny"))
    result = cli("compare", copy_run.name, wave.name, "--metric", "val_loss")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = {
        line.split()[0]: line
        for line in lines[lines.index("what differs:") + 1 :]
        if line.split()[0] in (copy_run.name, wave.name)
    }
    assert "task=sincos" in rows[wave.name] and "data.points=200" in rows[wave.name], rows
    assert "task=names" in rows[copy_run.name] and "data.bucket=" in rows[copy_run.name], rows
    assert "=-" not in rows[wave.name] and "=-" not in rows[copy_run.name], rows


def test_latest_is_the_newest_completed_run_and_resume_takes_the_newest(copy_run, isolated, cli):
    import shutil

    newer = Path(shutil.copytree(copy_run, isolated / "29990101-000000-names_tiny"))
    info = json.loads((newer / "run.json").read_text())
    info.update(status="interrupted")
    (newer / "run.json").write_text(json.dumps(info))
    assert RunFolder.resolve("latest") == RunFolder(copy_run)  # predict latest: the completed one
    assert RunFolder.resolve("latest", latest="started") == RunFolder(newer)  # resume latest: the newest
    assert copy_run.name in cli("eval").stdout


def test_sweep_members_are_listed_and_resolved_everywhere(copy_run, isolated, cli):
    import shutil

    member = isolated / "sweeps" / "20240101-000000-names_tiny" / "runs" / "20240101-000001-000-cell=gru"
    shutil.copytree(copy_run, member)
    listed = cli("runs")
    assert member.name in listed.stdout, listed.stdout
    assert RunFolder.resolve("20240101-000001").path == member
    assert RunFolder(member).info()["sweep"] == "20240101-000000-names_tiny"
    assert cli("predict", member.name, "Nakamura").exit_code == 0


def test_sort_best_never_ranks_a_loss_against_an_accuracy(copy_run, isolated):
    import shutil

    from rnnctl.runs import list_runs

    loss_run = Path(shutil.copytree(copy_run, isolated / "20000101-000000-lm"))
    info = json.loads((loss_run / "run.json").read_text())
    info["best"] = {"epoch": 1, "value": 0.01, "metric": "val_loss", "mode": "min"}
    (loss_run / "run.json").write_text(json.dumps(info))
    ranked = [i["best"]["metric"] for i in list_runs(sort="best")]
    assert ranked == sorted(ranked)  # grouped by metric: the tiny loss does not outrank the accuracy

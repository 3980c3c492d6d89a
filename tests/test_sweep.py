"""rnnctl sweep: every grid combination as its own run, a failing member reported, --resume finishes it."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, assert_one_line_error, members


def _sweep_config(where, files, epochs: int = 1):
    import yaml

    config = where / "sweep.yaml"
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {**(raw.get("data") or {}), "path": str(files.train), "test_path": str(files.test)}
    raw["train"]["epochs"] = epochs
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.mark.slow
def test_sweep_2x2_with_a_failing_member_then_resume(cli, names_files, isolated, tmp_path):
    import shutil

    config = _sweep_config(isolated.parent, names_files, epochs=2)  # the tiny config with the generated data
    missing = tmp_path / "later" / "names.csv"  # a valid config whose data is not there yet: fails when it trains
    paths = f"data.path={names_files.train},{missing}"
    result = cli("sweep", config, "--grid", paths, "--grid", "train.seed=1,2", "--jobs", "2")
    assert result.exit_code == 1, result.output  # two members failed
    (folder,) = (isolated / "sweeps").iterdir()
    rows = members(folder)
    statuses = {(r["data.path"] == str(missing), r["train.seed"]): r["status"] for r in rows}
    assert statuses == {(False, "1"): "completed", (False, "2"): "completed", (True, "1"): "failed",
                        (True, "2"): "failed"}  # fmt: skip
    assert "names.csv" in result.stdout and result.stdout.count("failed") >= 2  # each failure said as it came
    runs = sorted(p.name for p in (folder / "runs").iterdir())
    assert len(runs) == 2 and {r["run"] for r in rows if r["run"]} == set(runs)  # one folder each
    summary = json.loads((folder / "summary.json").read_text())
    (group,) = summary["groups"]  # grouped by the swept keys other than the seed
    assert group["group"] == f"data.path={names_files.train}" and group["n"] == 2 and group["std"] >= 0
    infos = [json.loads((folder / "runs" / r / "run.json").read_text()) for r in runs]
    assert summary["group_metric"] == "val_acc" and summary["group_direction"] == "maximize"  # never test
    assert abs(group["mean"] - sum(i["best"]["value"] for i in infos) / 2) < 1e-12
    assert abs(group["test_mean"] - sum(i["test"]["acc"] for i in infos) / 2) < 1e-12  # shown, not ranked on
    assert (folder / "summary.png").stat().st_size > 0
    assert "2 completed, 2 failed" in result.stdout and f"rnnctl sweep --resume {folder.name}" in result.stdout
    assert (folder / "best.yaml").is_file()

    # the data arrives: --resume trains the failed members again, and only them
    missing.parent.mkdir()
    shutil.copy(names_files.train, missing)
    result = cli("sweep", "--resume", folder.name, "--metric", "val_loss")
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in members(folder)] == ["completed"] * 4
    assert len(list((folder / "runs").iterdir())) == 4
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["group_metric"] == "val_loss" and summary["group_direction"] == "minimize"
    again = cli("sweep", "--resume", folder.name)
    assert again.exit_code == 0 and "nothing to train" in again.stdout
    assert len(list((folder / "runs").iterdir())) == 4


def test_every_combination_is_validated_before_anything_trains(cli, names_files, isolated):
    config = _sweep_config(isolated.parent, names_files)
    result = cli("sweep", config, "--grid", "model.cell=rnn,gruu", "--grid", "train.seed=1,2")
    assert_one_line_error(result, "--grid model.cell=gruu train.seed=1", "gruu")
    assert_one_line_error(cli("sweep", config, "--grid", "model.layers=1,0"), "model.layers=0")
    assert_one_line_error(cli("sweep", config, "--grid", "train.seed=1", "--metric", "test_acc"), "val_")
    assert_one_line_error(cli("sweep", config, "--grid", "train.seed=1", "--set", "model.cell=gruu"), "gruu")
    assert not (isolated / "sweeps").exists()


def test_sweep_argument_errors(cli, isolated):
    assert_one_line_error(cli("sweep", TINY), "--grid")
    assert_one_line_error(cli("sweep", TINY, "--grid", "model.cell"), "key=value1,value2")
    assert_one_line_error(cli("sweep", TINY, "--grid", "modle.cell=gru,lstm"), "modle")
    assert_one_line_error(cli("sweep", "--resume", "nope"), "unknown sweep")
    assert_one_line_error(cli("sweep", "--resume", "nope", "--set", "train.epochs=2"), "--resume", "--set")
    assert not (isolated / "sweeps").exists()


@pytest.mark.slow
def test_sweep_set_goes_into_every_member(cli, names_files, isolated):
    config = _sweep_config(isolated.parent, names_files)
    result = cli("sweep", config, "--grid", "train.seed=1,2", "--set", "model.hidden_size=12", "--study", "wide")
    assert result.exit_code == 0, result.output
    folder = isolated / "sweeps" / "wide"
    assert "--set model.hidden_size=12" in (folder / "config.yaml").read_text()
    for r in members(folder):
        info = json.loads((folder / "runs" / r["run"] / "run.json").read_text())
        assert info["overrides"] == [f"train.seed={r['train.seed']}"]  # the member's own values, as data
        cfg = (folder / "runs" / r["run"] / "config.yaml").read_text()
        assert "hidden_size: 12" in cfg
    listed = cli("runs").stdout
    assert "train.seed=1" in listed and "train.seed=2" in listed


@pytest.mark.slow
def test_grid_values_with_slashes_make_safe_names_and_keep_the_full_value(cli, tmp_path, isolated):
    from conftest import make_names_files

    from rnnctl.groups.space import member_name
    from rnnctl.runs import safe_name

    a, b = make_names_files(tmp_path / "a"), make_names_files(tmp_path / "b" / "[x] y")
    config = _sweep_config(tmp_path, a)
    paths = [str(a.train), str(b.train)]  # /tmp/.../a/names_train.csv: the common case that crashed
    result = cli("sweep", config, "--grid", f"data.path={','.join(paths)}", "--jobs", "2")
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    rows = members(folder)
    assert [r["data.path"] for r in rows] == paths  # the full values
    assert [r["status"] for r in rows] == ["completed", "completed"]
    runs = [r["run"] for r in rows]  # <time>-000-path=...-a-names_train.csv
    names = [safe_name(member_name(i, {"data.path": p})) for i, p in enumerate(paths)]
    assert [r.split("-", 2)[2] for r in runs] == names, runs
    assert runs[0].endswith("-a-names_train.csv") and runs[1].endswith("-x-y-names_train.csv"), runs
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(g["group"] for g in summary["groups"]) == sorted(f"data.path={p}" for p in paths)
    assert "[x]" in result.stdout  # "[x]" is shown as it is, not taken for rich markup


def test_member_names_are_short_and_plain():
    from rnnctl.groups.space import member_name

    assert member_name(3, {"model.cell": "lstm", "train.seed": "1"}) == "003-cell=lstm-seed=1"
    assert member_name(0, {"data.path": "a/x.csv"}) == "000-path=a-x.csv"
    odd = {"data.path": "../../etc/passwd", "name": "ünï cödé [x] *?", "k": "", "z": "-" * 50}
    name = member_name(12, odd)
    assert name.startswith("012-") and all(c.isascii() and (c.isalnum() or c in "-_.=") for c in name), name
    long = member_name(7, {"data.path": "/data/" + "d" * 10_000 + "/set1/train.csv", "x" * 500: "y" * 500})
    assert long.startswith("007-path=") and "set1-train.csv" in long and len(long) <= 100


def test_a_grid_value_that_looks_like_markup_is_reported_as_it_is(cli, tmp_path, names_files, isolated):
    config = _sweep_config(tmp_path, names_files)
    result = cli("sweep", config, "--grid", "model.cell=gru,[/]x")  # rich read "[/]" as a closing tag, and crashed
    assert_one_line_error(result, "--grid model.cell=[/]x", "'[/]x'")  # refused before training, shown as it is


def test_a_grid_too_big_for_one_sweep(cli, isolated):
    seeds = ",".join(str(i) for i in range(1001))
    assert_one_line_error(cli("sweep", TINY, "--grid", f"train.seed={seeds}"), "--grid", "1,001 combinations")
    huge = ",".join(str(i) for i in range(100))
    result = cli("sweep", TINY, *[a for k in ("seed", "epochs", "batch_size") for a in ("--grid", f"train.{k}={huge}")])
    assert_one_line_error(result, "1,000,000 combinations", "at most 1,000")
    assert not (isolated / "sweeps").exists()


@pytest.mark.slow
def test_devices_give_each_member_a_device_slot(cli, names_files, isolated):
    config = _sweep_config(isolated.parent, names_files)
    result = cli("sweep", config, "--grid", "train.seed=1,2,3", "--devices", "cpu,cpu")
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    rows = members(folder)
    assert [r["status"] for r in rows] == ["completed"] * 3
    for r in rows:
        info = json.loads((folder / "runs" / r["run"] / "run.json").read_text())
        assert "train.device=cpu" in info["overrides"] and info["device"] == "cpu"


def test_bad_devices_are_one_line_before_any_sweep_folder(cli, names_files, isolated):
    config = _sweep_config(isolated.parent, names_files)
    assert_one_line_error(cli("sweep", config, "--grid", "train.seed=1,2", "--devices", "gpu0"), "--devices", "gpu0")
    assert_one_line_error(cli("sweep", config, "--grid", "train.seed=1,2", "--devices", "cuda:7"), "cuda:7")
    assert not (isolated / "sweeps").exists()


@pytest.mark.slow
def test_a_sweep_being_run_is_not_run_twice(cli, names_files, isolated):
    import subprocess
    import sys

    config = _sweep_config(isolated.parent, names_files)
    result = cli("sweep", config, "--grid", "train.seed=1")
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    hold = "import sys, time; from pathlib import Path; from rnnctl.groups.folder import GroupFolder\n"
    hold += "GroupFolder(Path(sys.argv[1])).lock(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_one_line_error(cli("sweep", "--resume", str(folder)), "another process writes this sweep")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_processes_share_one_sweep_through_a_journal_file(names_files, isolated, tmp_path):
    import os
    import subprocess
    import sys

    import optuna

    config = _sweep_config(tmp_path, names_files)
    journal = tmp_path / "shared" / "sweep.log"
    args = ["sweep", config, "--grid", "train.seed=1,2,3,4", "--storage", journal, "--study", "grid"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rnnctl.cli", *map(str, args)],
            env={**os.environ, "RNNCTL_RUNS": str(tmp_path / f"machine-{i}"), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = [t for t in optuna.load_study(study_name="grid", storage=storage).trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["train.seed"] for t in trials) == ["1", "2", "3", "4"]  # each member once, over both
    ran = [len(list((tmp_path / f"machine-{i}" / "sweeps" / "grid" / "runs").iterdir())) for i in range(2)]
    assert sum(ran) == 4 and min(ran) >= 1, ran
    assert all("trained by other machines" in out and "Traceback" not in out for out in outputs), outputs


@pytest.mark.slow
def test_a_regression_sweep_ranks_by_its_error_in_the_data_s_units(cli, isolated):
    from conftest import CONFIGS

    config = CONFIGS / "smoke" / "sincos_tiny.yaml"
    result = cli("sweep", config, "--grid", "train.seed=1", "--grid", "data.points=200")
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    (run,) = (folder / "runs").iterdir()
    best_mse = min(json.loads(line)["val_mse"] for line in (run / "metrics.jsonl").read_text().splitlines())
    assert summary["group_metric"] == "val_mse" and summary["group_direction"] == "minimize"  # not the scaled loss
    assert abs(summary["groups"][0]["mean"] - best_mse) < 1e-12
    assert summary["groups"][0]["std"] is None and " - " in result.stdout  # one run: no spread to show


def test_two_trials_of_one_member_train_it_once(names_files, isolated):
    """Two workers can hold trials of one member at once (a point queued twice by two machines' starts):
    the lower trial number trains it, the other steps aside. Were both to step aside, it would never train."""
    import optuna

    from rnnctl.groups import engine as groups
    from rnnctl.groups.trials import Objective
    from rnnctl.groups.workers import space

    group = groups.create("sweep", _sweep_config(isolated.parent, names_files), ["train.seed=1,2"])
    s = groups.open_study(group)
    s.enqueue_trial({"train.seed": "1"}, user_attrs={"member": 0})  # member 0 twice: 0 (queued at creation), 2
    first, _, second = s.ask(), s.ask(), s.ask()
    objective = Objective(group, space(group), 2, None, None, lambda: None)
    assert objective._needed(first, 0) and not objective._needed(second, 0)
    s.tell(first, 0.5)
    assert not objective._needed(second, 0)  # done by the first
    assert isinstance(second, optuna.Trial)


def test_a_member_that_ended_before_its_trial_was_told_is_not_trained_again(names_files, isolated):
    """A stop signal between a member's last run.json write (completed) and its trial's end leaves the trial
    interrupted: the resumed sweep reads the finished run back instead of training it again."""
    from rnnctl import loop
    from rnnctl.config import load_config
    from rnnctl.groups import engine as groups
    from rnnctl.groups.trials import status
    from rnnctl.locks import HOST

    group = groups.create("sweep", _sweep_config(isolated.parent, names_files, epochs=2), ["train.seed=1"])
    s = groups.open_study(group)
    trial = s.ask()  # member 0's queued trial, as a worker that is then stopped took it
    for key, value in {"member": 0, "values": {"train.seed": "1"}, "host": HOST, "pid": 2**22 + 1}.items():
        trial.set_user_attr(key, value)  # a pid no process has: its worker is gone
    cfg = load_config(group.config, ["train.seed=1", "name=000-seed=1"])
    done = loop.train(cfg, "rnnctl train", [], root=group.runs, overrides=["train.seed=1"])
    trial.set_user_attr("run", done["id"])
    (run,) = group.members()
    before = run.rows()
    assert done["status"] == "completed" and status(trial.study.trials[0]) == "running"

    summary = groups.run(groups.resolve(group.name, "sweep"))
    assert summary["counts"] == {"completed": 1}, summary["counts"]
    assert run.rows() == before and len(before) == 2  # read back, not trained again
    best = max(r["val_acc"] for r in before)
    assert summary["members"][0]["value"] == best and summary["members"][0]["run"] == run.id

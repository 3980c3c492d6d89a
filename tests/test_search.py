"""rnnctl search: an Optuna study whose trials are run folders; pruning, workers that share one storage,
a killed worker whose trial is run again, a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TINY, assert_one_line_error, free_port, members, wait_for

SPACE = ["--space", "optim.lr=choice(0.00001,0.05)", "--space", "model.hidden_size=int(8,16)"]


def _env(root: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "RNNCTL_RUNS": str(root), "OMP_NUM_THREADS": "1", "COLUMNS": "1000", **more}


def _rnnctl(*args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnctl.cli", *map(str, args)], env=env, capture_output=True, text=True, **kw
    )


def _study(folder: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{folder / 'study.db'}")


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials if not t.user_attrs.get("skipped")]


@pytest.mark.slow
def test_six_trials_two_jobs_prune_and_leave_runs_that_every_command_takes(cli, names_files, isolated):
    args = [TINY, *names_files.set_args(), "--set", "train.epochs=3", *SPACE, "--trials", "6", "--jobs", "2"]
    args += ["--prune-after", "1", "--prune-warmup", "0"]  # prune from the first completed trial on
    result = _rnnctl("search", *args, env=_env(isolated))
    assert result.returncode == 0, result.stdout + result.stderr
    folder = isolated / "studies" / "names_tiny"
    study = _study(folder, "names_tiny")
    states = _states(study)
    assert states.count("COMPLETE") + states.count("PRUNED") == 6, states  # the study's total, over both workers
    assert "PRUNED" in states, states  # lr 1e-5 stays at chance: the median pruner stops it
    assert len({t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}) == 2  # two workers ran trials
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    info = json.loads((folder / "runs" / pruned.user_attrs["run"] / "run.json").read_text())
    assert info["status"] == "pruned" and info["epochs_done"] < 3 and "test" not in info  # stopped, kept, not tested
    for t in study.trials:  # every trial is a run folder of the config with the trial's values
        if "run" in t.user_attrs:
            cfg = yaml.safe_load((folder / "runs" / t.user_attrs["run"] / "config.yaml").read_text())
            assert cfg["optim"]["lr"] == float(t.params["optim.lr"])
            assert cfg["model"]["hidden_size"] == t.params["model.hidden_size"]
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["optim"]["lr"] == 0.05 and "search" not in best and "derived" not in best
    assert best["train"]["epochs"] == 3 and best["data"]["path"] == str(names_files.train)
    for plot in ("history", "parallel"):
        assert (folder / f"{plot}.png").stat().st_size > 1000
    completed = states.count("COMPLETE")
    assert (folder / "importance.png").exists() == (completed >= 4)  # only from several completed trials
    assert "best: trial" in result.stdout and "pruned" in result.stdout
    assert result.stdout.count("start ") == 6 and "ETA" in result.stdout  # a line per trial start and end
    assert [r["status"] for r in members(folder)].count("pruned") == states.count("PRUNED")

    # the trials are runs like any other: listed, evaluated by id, and the best config trains as is
    listed = cli("runs")
    assert listed.exit_code == 0 and listed.stdout.count("trial-") == 6, listed.stdout
    assert "sweep/study" in listed.stdout and listed.stdout.count("names_tiny") >= 6  # listed with their study
    assert "optim.lr=" in listed.stdout and "pruned" in listed.stdout  # their values, their status
    completed = next(t for t in study.trials if t.state.name == "COMPLETE")
    assert cli("eval", completed.user_attrs["run"]).exit_code == 0
    shown = cli("config", "show", folder / "best.yaml")
    assert shown.exit_code == 0, shown.output
    again = cli("search", "--show", "names_tiny")
    assert again.exit_code == 0 and again.stdout.count("pruned") >= 1 and "best: trial" in again.stdout
    # the same command again: the study has its 6 trials, says so and how to ask for more, trains nothing
    result = _rnnctl("search", *args, env=_env(isolated))
    assert result.returncode == 0 and len(_states(_study(folder, "names_tiny"))) == len(states)
    assert "already has its 6 trials" in result.stdout and "--trials 12" in result.stdout


@pytest.mark.slow
def test_two_processes_join_one_study_through_a_journal_file(names_files, isolated, tmp_path):
    journal = tmp_path / "shared" / "journal.log"
    args = [TINY, *names_files.set_args(), "--set", "train.epochs=2", *SPACE, "--trials", "4", "--pruner", "none"]
    args += ["--storage", journal, "--study", "together"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rnnctl.cli", "search", *map(str, args)],
            env=_env(tmp_path / f"machine-{i}"),  # two machines: their own run folders, one storage
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="together", storage=storage)
    assert _states(study).count("COMPLETE") == 4, _states(study)  # stopped together at the study's total
    pids = {t.user_attrs["pid"] for t in study.trials if t.state.name == "COMPLETE"}
    assert len(pids) == 2, pids  # both took part
    ran = [len(list((tmp_path / f"machine-{i}" / "studies" / "together" / "runs").iterdir())) for i in range(2)]
    assert sum(ran) == 4 and min(ran) >= 1


def _killed_search(names_files, root: Path) -> tuple[list, Path]:
    """A one-trial search SIGKILLed once its run has a checkpoint: no wrap-up, the trial stays `running`."""
    args = [TINY, *names_files.set_args(), "--set", "train.epochs=30", "--space", "optim.lr=choice(0.01)"]
    args += ["--trials", "1", "--pruner", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "rnnctl.cli", "search", *map(str, args)], env=_env(root))
    folder = root / "studies" / "names_tiny"
    wait_for(lambda: list((folder / "runs").glob("*/checkpoints/last.pt")), what="a checkpoint")
    proc.kill()
    proc.wait()
    return args, folder


@pytest.mark.slow
def test_a_killed_search_s_trial_continues_its_own_run(cli, names_files, isolated):
    env = _env(isolated)
    args, folder = _killed_search(names_files, isolated)
    assert _states(_study(folder, "names_tiny")) == ["RUNNING"]
    # another --set on the same command would be another study: the epochs stay 30 in the study's config
    assert_one_line_error(cli("search", *args, "--set", "train.epochs=2"), "another config_text")
    result = _rnnctl("search", "--resume", "names_tiny", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    study = _study(folder, "names_tiny")
    first, again = study.trials[:2]  # its process is gone from this machine: interrupted, continued
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] and again.state.name == "COMPLETE"
    (run,) = (folder / "runs").iterdir()  # the same run folder, from its last checkpoint
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["history"][0]["from_epoch"] >= 1


@pytest.mark.slow
def test_a_dead_worker_of_another_machine_is_found_by_its_heartbeat(names_files, isolated, monkeypatch):
    from rnnctl.groups.storage import open_storage

    monkeypatch.setenv("RNNCTL_SEARCH_HEARTBEAT", "1")
    env = _env(isolated)
    _, folder = _killed_search(names_files, isolated)  # with 1-second heartbeats (set above)
    study = _study(folder, "names_tiny")
    (trial,) = study.trials
    study._storage.set_trial_user_attr(trial._trial_id, "host", "another-machine")  # not provably gone from here
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    wait_for(lambda: storage._get_stale_trial_ids(study._study_id), timeout=30, what="three missed heartbeats")
    result = _rnnctl("search", "--resume", "names_tiny", env=env)  # its next trial finds the stale one
    assert result.returncode == 0, result.stdout + result.stderr
    first, retry = _study(folder, "names_tiny").trials[:2]
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE" and retry.system_attrs["failed_trial"] == 0
    assert len(list((folder / "runs").iterdir())) == 1  # the retry continued the run it found here


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_the_search_and_resume_continues_its_trials(names_files, isolated, jobs):
    env = _env(isolated)
    args = [TINY, *names_files.set_args(), "--set", "train.epochs=40", "--space", "optim.lr=choice(0.01)"]
    args += ["--trials", str(jobs), "--jobs", str(jobs), "--pruner", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "rnnctl.cli", "search", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    folder = isolated / "studies" / "names_tiny"
    wait_for(lambda: len(list((folder / "runs").glob("*/metrics.jsonl"))) >= jobs, what="every trial training")
    proc.send_signal(signal.SIGTERM)  # to the search alone: it passes it on to its workers
    assert proc.wait(timeout=150) == 143
    assert "continue with: rnnctl search --resume names_tiny" in proc.stdout.read()
    trials = _study(folder, "names_tiny").trials
    assert [t.state.name for t in trials] == ["FAIL"] * jobs and all(t.user_attrs["interrupted"] for t in trials)
    runs = list((folder / "runs").iterdir())
    assert len(runs) == jobs and all(json.loads((r / "run.json").read_text())["status"] == "interrupted" for r in runs)
    assert [r["status"] for r in members(folder)] == ["interrupted"] * jobs
    result = _rnnctl("search", "--resume", "names_tiny", "--jobs", str(jobs), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(r.name for r in (folder / "runs").iterdir()) == sorted(r.name for r in runs)  # continued
    assert [r["status"] for r in members(folder)] == ["completed"] * jobs


def test_a_search_section_in_the_config_is_the_space(cli, names_files, isolated, tmp_path):
    config = tmp_path / "searched.yaml"
    raw = yaml.safe_load(TINY.read_text())
    raw["search"] = {"model.cell": "choice(rnn,gru)"}
    raw["train"]["epochs"] = 1
    config.write_text(yaml.safe_dump(raw))
    assert cli("train", config, *names_files.set_args()).exit_code == 0  # a run ignores the section
    result = cli("search", config, *names_files.set_args(), "--trials", "2", "--pruner", "none")
    assert result.exit_code == 0, result.output
    study = _study(isolated / "studies" / "searched", "searched")
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    assert {t.params["model.cell"] for t in study.trials} <= {"rnn", "gru"}
    spec = json.loads((isolated / "studies" / "searched" / "study.json").read_text())
    assert spec["space"] == {"model.cell": "choice(rnn,gru)"} and "search:" in spec["config_text"]


@pytest.mark.parametrize(
    "space, needles",
    [
        ("model.cell=choice(rnn,gruu)", ["model.cell", "gruu"]),
        ("nosuch.key=choice(1,2)", ["nosuch"]),
        ("optim.lr=loguniform(0,1)", ["lo > 0"]),
        ("optim.lr=uniform(1,0.5)", ["lo < hi"]),
        ("model.hidden_size=int(8,x)", ["integers"]),
        ("model.layers=int(1,3,square)", ["lo,hi[,log]"]),
        ("optim.lr=normal(0,1)", ["choice(a,b,...)"]),
        ("model.hidden_size=int(0,16)", ["model.hidden_size", "0"]),
    ],
)
def test_a_space_the_config_rejects_is_one_line_before_any_trial(cli, names_files, isolated, space, needles):
    assert_one_line_error(cli("search", TINY, *names_files.set_args(), "--space", space), *needles)
    assert not (isolated / "studies").exists() or not list((isolated / "studies").glob("*/runs"))


def test_search_argument_errors(cli, names_files, isolated):
    base = [TINY, *names_files.set_args()]
    assert_one_line_error(cli("search", *base), "--space")
    assert_one_line_error(cli("search", *base, "--space", "model.cell=choice(gru)", "--metric", "test_acc"), "val_")
    assert_one_line_error(cli("search", *base, "--space", "model.cell=choice(gru)", "--pruner", "x"), "--pruner")
    assert_one_line_error(cli("search", *base, "--space", "model.cell=choice(gru)", "--timeout", "soon"), "--timeout")
    assert_one_line_error(cli("search", "--show", "nosuch"), "nosuch")
    assert_one_line_error(cli("search"), "--show")
    bad = cli("search", *base, "--space", "model.cell=choice(gru)", "--storage", "postgresql://u:secret@127.0.0.1:1/x")
    line = assert_one_line_error(bad, "--storage", "cannot open")
    assert "secret" not in line  # the password is not printed
    # a study of that name with another space: one line, nothing trained
    assert cli("search", *base, "--space", "model.cell=choice(gru)", "--trials", "1", "--set", "train.epochs=1")
    other = cli("search", *base, "--space", "model.cell=choice(rnn)", "--set", "train.epochs=1")
    assert_one_line_error(other, "another", "--study")


def test_a_metric_the_task_does_not_log_is_one_line(cli, names_files, isolated):
    result = cli("search", TINY, *names_files.set_args(), "--space", "model.cell=choice(gru)", "--metric", "val_bpc")
    assert_one_line_error(result, "val_bpc", "val_acc")


def test_spaces_durations_and_directions():
    from rnnctl.errors import ConfigError
    from rnnctl.config import parse_duration
    from rnnctl.groups.space import direction, parse_param

    p = parse_param("model.hidden_size", "int(16,512,log)", "--space")
    assert (p.kind, p.low, p.high, p.log, p.edges()) == ("int", 16, 512, True, ["16", "512"])
    assert parse_param("k", "choice(a, b)", "x").choices == ("a", "b")
    assert parse_param("k", "loguniform(1e-4,1e-2)", "x").spec == "loguniform(0.0001,0.01)"
    assert parse_duration("30m") == 1800 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    assert direction("val_acc", "acc", "max") == "maximize" and direction("val_loss", "acc", "max") == "minimize"
    assert direction("val_bpc", "loss", "min") == "minimize"
    with pytest.raises(ConfigError):
        parse_param("k", "choice(a,a)", "x")
    with pytest.raises(ConfigError):
        parse_duration("0s")


@pytest.mark.slow
def test_the_journal_storage_finds_a_trial_whose_heartbeat_stopped(tmp_path, monkeypatch):
    from rnnctl.groups.storage import open_storage

    monkeypatch.setenv("RNNCTL_SEARCH_HEARTBEAT", "1")
    storage = open_storage(str(tmp_path / "j.log"))
    study = optuna.create_study(storage=storage, study_name="s")
    alive, dead = study.ask(), study.ask()
    storage.record_heartbeat(dead._trial_id)
    beat = time.time()
    storage.record_heartbeat(alive._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []

    def only_the_dead_one_is_stale() -> bool:
        storage.record_heartbeat(alive._trial_id)
        return storage._get_stale_trial_ids(study._study_id) == [dead._trial_id]

    wait_for(only_the_dead_one_is_stale, timeout=30, what="three missed heartbeats")
    assert time.time() - beat > 3  # not before three intervals


# -- a real PostgreSQL server -----------------------------------------------------------------------


@pytest.fixture
def postgres():
    """A PostgreSQL cluster of its own in a temp dir (initdb, pg_ctl); skipped where they are missing. As
    root (CI's containers), the server runs as the `postgres` user, which initdb requires."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            initdb, pg_ctl = str(base / "initdb"), str(base / "pg_ctl")
            break
    if not (initdb and Path(initdb).exists() and pg_ctl and Path(pg_ctl).exists()):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    psycopg = pytest.importorskip("psycopg")  # SQLAlchemy's driver for postgresql:// (extra rnnctl[postgres])
    home = Path(tempfile.mkdtemp(prefix="rnnctl-pg-"))  # not under pytest's 0700 folders: the server's user reads it
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: initdb refuses root")
        prefix = [runuser, "-u", "postgres", "--"]
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    made = subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "rnnctl"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(home / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="rnnctl", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE studies")
        yield f"postgresql://rnnctl@127.0.0.1:{port}/studies"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_a_study_on_a_real_postgresql_server(names_files, isolated, postgres, tmp_path):
    args = [TINY, *names_files.set_args(), "--set", "train.epochs=1", "--space", "model.cell=choice(rnn,gru)"]
    args += ["--trials", "2", "--pruner", "none", "--storage", postgres, "--study", "pg"]
    result = _rnnctl("search", *args, env=_env(isolated))
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert _states(study).count("COMPLETE") == 2
    shown = _rnnctl("search", "--show", "pg", env=_env(isolated))
    assert shown.returncode == 0 and "2 completed" in shown.stdout and "postgresql://" in shown.stdout

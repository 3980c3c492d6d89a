"""`rnnctl train --slurm` on the test Slurm cluster (tests/slurm.py), through the real CLI: a run trained as a
job ends with the metrics of a run trained here; one whose job gets Slurm's warning signal mid-training requeues
itself and still ends with them; `rnnctl cancel` leaves it interrupted and resumable; a submission Slurm refuses
is one line with Slurm's reason and leaves no run folder. Skipped where Slurm is not installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY, assert_one_line_error, metrics, run_dirs, wait_for
from slurm import ENDED, slurm_cluster_fixture

pytest.importorskip("submitit")

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
slurm_cluster = slurm_cluster_fixture()

SLOW = ["--set", "train.epochs=6", "--set", "train.batch_size=2"]  # a few seconds an epoch: time to signal it


@pytest.fixture
def on_cluster(slurm_cluster, monkeypatch, isolated, tmp_path):
    """This process talks to the test cluster; its jobs see this test's runs and data folders, one thread."""
    slurm_cluster.use(monkeypatch)
    monkeypatch.setenv("RNNCTL_RUNS", str(isolated))
    monkeypatch.setenv("RNNCTL_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as this process trains (conftest): the same sums, the same numbers
    monkeypatch.setenv("COLUMNS", "1000")
    return slurm_cluster


def submit(cli, monkeypatch, *args: str) -> tuple[Path, str]:
    argv = ["train", str(TINY), *args, "--slurm"]
    monkeypatch.setattr(sys, "argv", ["rnnctl", *argv])
    result = cli(*argv)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    words = lines[0].split()
    assert words[0] == "submitted" and words[2:5] == ["as", "Slurm", "job"], lines
    run = Path(lines[1].removeprefix("run folder: "))
    assert run.name == words[1] and lines[2].startswith("log: ") and lines[2].endswith("_0_log.out"), lines
    return run, words[5]


def info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def local_metrics(cli, tmp_path: Path, *args: str) -> list[dict]:
    before = set(run_dirs(tmp_path / "runs"))
    result = cli("train", TINY, *args, "--quiet", "--name", "local")
    assert result.exit_code == 0, result.output
    (run,) = set(run_dirs(tmp_path / "runs")) - before
    return metrics(run)


def test_a_run_trains_as_a_job_with_the_metrics_of_a_local_run(on_cluster, cli, names_files, monkeypatch, tmp_path):
    run, job_id = submit(cli, monkeypatch, *names_files.set_args())
    assert info(run)["status"] in ("submitted", "running", "completed")  # the folder exists from submission
    job = on_cluster.wait_ended(job_id, timeout=180)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "0"), (job, on_cluster.log_tail())
    assert info(run)["status"] == "completed", (run / "slurm").iterdir()
    assert metrics(run) == local_metrics(cli, tmp_path, *names_files.set_args())


def test_a_signalled_job_requeues_and_ends_with_the_metrics_of_a_local_run(
    on_cluster, cli, names_files, monkeypatch, tmp_path
):
    run, job_id = submit(cli, monkeypatch, *names_files.set_args(), *SLOW)
    wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 2, 180, "two epochs in the job")
    on_cluster.run("scancel", "--signal=USR2", job_id)  # what Slurm sends signal_delay_s before the time limit
    wait_for(lambda: info(run)["status"] == "interrupted", 60, "the first job to record the interruption")
    on_cluster.release(job_id)  # requeued; Slurm would start it 2 minutes later
    job = on_cluster.wait_ended(job_id, timeout=180)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), job
    record = info(run)
    (resume,) = record["history"]  # one requeue, which resumed from an epoch's checkpoint
    assert record["status"] == "completed" and resume["status_before"] == "interrupted", record
    assert 2 <= resume["from_epoch"] < 6, resume
    assert metrics(run) == local_metrics(cli, tmp_path, *names_files.set_args(), *SLOW)


def test_a_job_at_its_time_limit_requeues_itself_until_the_run_completes(on_cluster, cli, names_files, monkeypatch):
    """The real path: 1-minute jobs that ask for the signal 20 s before their end. slurmctld checks time limits
    every 30 s, so each job is signalled 10 to 40 s into its run; each requeued job is released at once."""
    more = ["--set", "train.epochs=150", "--set", "train.batch_size=2", "--set", "slurm.time=1"]
    limits = ["--set", "slurm.signal_delay_s=20", "--set", "slurm.max_requeues=10"]
    run, job_id = submit(cli, monkeypatch, *names_files.set_args(), *more, *limits)
    ended = lambda job: job["JobState"] in ENDED  # noqa: E731
    while not ended(job := on_cluster.wait_job(job_id, lambda j: ended(j) or j["Reason"] == "BeginTime", 180)):
        on_cluster.release(job_id)
    assert job["JobState"] == "COMPLETED" and int(job["Restarts"]) >= 1, job
    record = info(run)
    assert record["status"] == "completed" and len(record["history"]) == int(job["Restarts"]), record
    assert all(h["status_before"] == "interrupted" for h in record["history"]), record["history"]
    print(f"requeues: {job['Restarts']}, from epochs {[h['from_epoch'] for h in record['history']]}")


def test_past_max_requeues_the_run_stays_interrupted(on_cluster, cli, names_files, monkeypatch):
    run, job_id = submit(cli, monkeypatch, *names_files.set_args(), *SLOW, "--set", "slurm.max_requeues=0")
    wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 1, 180, "an epoch in the job")
    on_cluster.run("scancel", "--signal=USR2", job_id)
    job = on_cluster.wait_ended(job_id, timeout=60)
    assert (job["JobState"], job["Restarts"]) == ("FAILED", "0"), job  # not requeued: submitit's "no requeue" error
    assert info(run)["status"] == "interrupted"
    assert (
        "Job not requeued because: checkpoint function returned None"
        in (run / "slurm" / f"{job_id}_0_log.err").read_text()
    )
    again = cli("train", "--resume", run.name, "--slurm")  # by hand: a new job continues it
    assert again.exit_code == 0, again.output
    new_job = again.stdout.split()[5]
    assert new_job != job_id and on_cluster.wait_ended(new_job, timeout=180)["JobState"] == "COMPLETED"
    record = info(run)
    assert record["status"] == "completed" and [h["status_before"] for h in record["history"]] == ["interrupted"]


def test_cancel_leaves_the_run_interrupted_and_resumable(on_cluster, cli, names_files, monkeypatch):
    run, job_id = submit(cli, monkeypatch, *names_files.set_args(), *SLOW)
    wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 1, 180, "an epoch in the job")
    listed = cli("runs")
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.stdout.splitlines() if run.name in line]
    assert job_id in row.split() and "RUNNING" in row.split(), listed.stdout
    result = cli("cancel", run.name)
    assert result.exit_code == 0, result.output
    assert f"cancelled Slurm job {job_id}: {run.name} is interrupted" in result.stdout, result.stdout
    assert on_cluster.wait_ended(job_id, timeout=60)["JobState"] == "CANCELLED"
    assert info(run)["status"] == "interrupted"
    assert_one_line_error(cli("cancel", run.name), f"its Slurm job {job_id} is no longer in the queue")
    resumed = cli("train", "--resume", run.name, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert info(run)["status"] == "completed"


def test_a_pending_job_cancelled_leaves_an_interrupted_run(on_cluster, cli, names_files, monkeypatch):
    run, job_id = submit(cli, monkeypatch, *names_files.set_args(), "--set", "slurm.extra={begin: now+1hour}")
    assert on_cluster.job(job_id)["JobState"] == "PENDING"
    result = cli("cancel", run.name)
    assert result.exit_code == 0, result.output
    assert info(run)["status"] == "interrupted"


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("slurm.partition=nosuch", "invalid partition specified: nosuch"),
        ("slurm.time=5", "Requested time limit is invalid"),  # above partition short's 1 minute
    ],
)
def test_a_refused_submission_is_one_line_and_leaves_nothing(
    on_cluster, cli, names_files, monkeypatch, isolated, setting, reason
):
    more = ["--set", setting] + (["--set", "slurm.partition=short"] if "time" in setting else [])
    monkeypatch.setattr(sys, "argv", ["rnnctl", "train", str(TINY), "--slurm"])
    result = cli("train", TINY, *names_files.set_args(), *more, "--slurm")
    assert_one_line_error(result, "Slurm refused the job", reason)
    assert run_dirs(isolated) == []


def test_a_run_over_several_nodes_is_refused(on_cluster, cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "slurm.nodes=2", "--slurm")
    assert_one_line_error(result, "slurm.nodes=2", "torchrun")
    assert run_dirs(isolated) == []


def test_a_job_that_cannot_build_its_run_records_it_failed(on_cluster, cli, names_files, monkeypatch, tmp_path):
    run, job_id = submit(cli, monkeypatch, "--set", f"data.path={tmp_path / 'missing.csv'}")
    assert on_cluster.wait_ended(job_id, timeout=120)["JobState"] == "FAILED"
    record = info(run)
    assert record["status"] == "failed" and "missing.csv" in record["error"], record


# -- sweeps and searches: their workers as one job array -----------------------------------------------------


def submit_group(cli, *args: str) -> tuple[Path, str]:
    result = cli(*args, "--slurm")
    assert result.exit_code == 0, result.output
    first, folder, logs = result.stdout.splitlines()
    assert first.split()[4:9] == ["workers", "as", "Slurm", "job", "array"], first
    return Path(folder.split(": ", 1)[1]), first.split()[-1]


def in_queue(cluster, array: str) -> bool:
    return any(j.split("_")[0] == array for j in cluster.run("squeue", "-h", "-o", "%i").stdout.split())


def member_states(group: Path) -> list[str]:
    return sorted(info(run)["status"] for run in run_dirs(group / "runs"))


def test_a_sweep_trains_its_members_in_a_job_array(on_cluster, cli, names_files):
    group, array = submit_group(cli, "sweep", TINY, *names_files.set_args(), "--grid", "model.cell=rnn,gru",
                                "--study", "cells", "--jobs", "2")  # fmt: skip
    wait_for(lambda: not in_queue(on_cluster, array), 240, "the array's two workers to end")
    assert member_states(group) == ["completed", "completed"], (group / "slurm").iterdir()
    shown = cli("sweep", "--resume", "cells")  # nothing left: the local driver just summarizes
    assert shown.exit_code == 0, shown.output


def test_cancel_stops_a_searchs_workers_and_the_study_resumes(on_cluster, cli, names_files):
    group, array = submit_group(cli, "search", TINY, *names_files.set_args(), *SLOW, "--space",
                                "optim.lr=loguniform(1e-3,1e-2)", "--trials", "2", "--study", "lr", "--jobs", "2",
                                "--pruner", "none")  # fmt: skip
    wait_for(lambda: any((run / "metrics.jsonl").is_file() for run in run_dirs(group / "runs")), 180, "a member")
    result = cli("cancel", "lr")
    assert result.exit_code == 0, result.output
    assert f"cancelled Slurm job {array}: study lr is stopped" in result.stdout, result.stdout
    assert "rnnctl search --resume lr" in result.stdout
    assert not in_queue(on_cluster, array)
    assert "interrupted" in member_states(group), member_states(group)
    resumed = cli("search", "--resume", "lr")
    assert resumed.exit_code == 0, resumed.output
    assert member_states(group) == ["completed", "completed"]


def test_a_signalled_sweep_worker_requeues_and_its_member_goes_on(on_cluster, cli, names_files):
    group, array = submit_group(cli, "sweep", TINY, *names_files.set_args(), *SLOW, "--grid", "model.cell=rnn,gru",
                                "--study", "two", "--jobs", "2")  # fmt: skip
    task = f"{array}_0"
    started = lambda: [r for r in run_dirs(group / "runs") if (r / "metrics.jsonl").is_file() and len(metrics(r)) >= 2]  # noqa: E731
    wait_for(lambda: len(started()) == 2, 180, "two epochs of both members")
    on_cluster.run("scancel", "--signal=USR2", task)
    on_cluster.release(task)
    wait_for(lambda: not in_queue(on_cluster, array), 180, "the workers to end")
    records = sorted((info(run) for run in run_dirs(group / "runs")), key=lambda r: len(r.get("history", [])))
    assert len(records) == 2 and all(r["status"] == "completed" for r in records), records
    assert [[h["status_before"] for h in r.get("history", [])] for r in records] == [[], ["interrupted"]]
    assert (on_cluster.job(task)["Restarts"], on_cluster.job(f"{array}_1")["Restarts"]) == ("1", "0")

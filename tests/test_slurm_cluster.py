"""The test Slurm cluster (tests/slurm.py) runs batch jobs, and submitit runs functions on it: a result comes
back, and a checkpointable job that gets Slurm's signal saves its state, requeues itself and finishes from
that state in its second run. Skipped where Slurm is not installed (Debian: apt-get install slurm-wlm munge)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for
from slurm import slurm_cluster_fixture

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
slurm_cluster = slurm_cluster_fixture()
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # jobs cannot import this module: send its code


# -- plain Slurm ---------------------------------------------------------------------------------------


def test_a_batch_job_runs_and_writes_its_output(slurm_cluster, tmp_path):
    out = tmp_path / "hi.out"
    job_id = slurm_cluster.sbatch("--output", str(out), "--wrap", "echo hi")
    job = slurm_cluster.wait_ended(job_id, timeout=60)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    assert out.read_text() == "hi\n"


def test_a_failing_batch_job_ends_failed_with_its_exit_code(slurm_cluster, tmp_path):
    job_id = slurm_cluster.sbatch("--output", str(tmp_path / "out"), "--wrap", "exit 3")
    job = slurm_cluster.wait_ended(job_id, timeout=60)
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "3:0"), job


def test_a_bad_partition_is_refused_with_slurms_reason(slurm_cluster):
    done = slurm_cluster.run("sbatch", "-p", "nosuch", "--wrap", "true", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert "invalid partition specified: nosuch" in done.stderr, done.stderr
    assert "Batch job submission failed: Invalid partition name specified" in done.stderr, done.stderr


def test_a_time_limit_above_the_partitions_is_refused(slurm_cluster):
    done = slurm_cluster.run("sbatch", "-p", "short", "--time=5", "--wrap", "true", check=False)
    assert done.returncode == 1 and done.stdout == "", done  # no job id: nothing was queued
    assert "Requested time limit is invalid (missing or exceeds some limit)" in done.stderr, done.stderr


# -- submitit ------------------------------------------------------------------------------------------


def where_am_i(a: int, b: int) -> tuple[int, str, str]:
    return a + b, os.environ["SLURM_JOB_ID"], os.environ["SLURM_JOB_PARTITION"]


def wait_done(job, timeout: float) -> None:
    """Until submitit finds the job's result file (without accounting, `sacct` cannot tell it the state)."""
    deadline = time.monotonic() + timeout
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id}: no result after {timeout:.0f} s\n{job.stderr()}"
        time.sleep(0.2)


def test_submitit_runs_a_function_on_the_cluster_and_returns_its_result(slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.use(monkeypatch)
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=5)
    job = executor.submit(where_am_i, 2, 3)
    wait_done(job, timeout=120)
    assert job.result() == (5, job.job_id, "debug")
    assert slurm_cluster.wait_ended(job.job_id)["JobState"] == "COMPLETED"


class StepCounter(submitit.helpers.Checkpointable):
    """Counts to `steps`, one step per `pause` seconds, in a JSON file that each run starts from: the steps so
    far, and per run the restart count Slurm gave it, where it started and where it was checkpointed."""

    def __init__(self, state: Path, steps: int, pause: float):
        self.state, self.steps, self.pause = state, steps, pause

    def load(self) -> dict:
        return json.loads(self.state.read_text()) if self.state.exists() else {"steps": 0, "runs": []}

    def save(self, state: dict) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state)  # whole or not at all, whenever the signal comes

    def __call__(self) -> dict:
        state = self.load()
        state["runs"].append({"restart": os.environ.get("SLURM_RESTART_COUNT"), "from": state["steps"]})
        self.save(state)
        while state["steps"] < self.steps:
            time.sleep(self.pause)
            state["steps"] += 1
            self.save(state)
        return state

    def checkpoint(self, *args, **kwargs):  # called by submitit's handler of the signal, in the job
        state = self.load()
        state["runs"][-1]["checkpoint"] = state["steps"]
        self.save(state)
        return super().checkpoint(*args, **kwargs)


def test_a_signalled_checkpointable_job_requeues_and_finishes_from_its_state(slurm_cluster, monkeypatch, tmp_path):
    """Slurm's preemption signal by hand (`scancel --signal=USR2`): submitit checkpoints the callable, runs
    `scontrol requeue`, and the second run goes on from the saved count."""
    slurm_cluster.use(monkeypatch)
    state = tmp_path / "state.json"
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=5)
    job = executor.submit(StepCounter(state, steps=30, pause=0.2))
    wait_for(lambda: state.exists() and json.loads(state.read_text())["steps"] >= 3, 60, "3 steps of the first run")
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)
    slurm_cluster.release(job.job_id)
    wait_done(job, timeout=120)
    result = job.result()
    first, second = result["runs"]
    assert result["steps"] == 30
    assert first["restart"] is None and first["from"] == 0 and 3 <= first["checkpoint"] < 30
    assert second == {"restart": "1", "from": first["checkpoint"]}  # no step lost, none counted twice
    job_info = slurm_cluster.wait_ended(job.job_id)
    assert (job_info["JobState"], job_info["Restarts"]) == ("COMPLETED", "1")


class CountsUntilRequeued(StepCounter):
    """A StepCounter whose first run counts until Slurm's signal stops it; a requeued run counts `more` steps and
    returns."""

    def __init__(self, state: Path, more: int, pause: float):
        super().__init__(state, steps=sys.maxsize, pause=pause)
        self.more = more

    def __call__(self) -> dict:
        if os.environ.get("SLURM_RESTART_COUNT"):
            self.steps = self.load()["steps"] + self.more
        return super().__call__()


def test_a_checkpointable_job_at_its_time_limit_requeues_itself(slurm_cluster, monkeypatch, tmp_path):
    """The real path: a 1-minute job asks for USR2 20 s before its end (`--signal=USR2@20`). slurmctld looks at
    time limits every 30 s and signals at the first look that finds fewer than 20 + 30 s left: 10 to 40 s into a
    run. submitit checkpoints and requeues; the second run, released at once, is done in about 2 s, well before
    its own signal."""
    slurm_cluster.use(monkeypatch)
    state = tmp_path / "state.json"
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=1, slurm_signal_delay_s=20)
    job = executor.submit(CountsUntilRequeued(state, more=5, pause=0.1))
    slurm_cluster.release(job.job_id, timeout=120)  # once the signal came and the job is pending again
    wait_done(job, timeout=60)
    result = job.result()
    first, second = result["runs"]
    assert first["restart"] is None and first["checkpoint"] > 0
    assert second == {"restart": "1", "from": first["checkpoint"]}
    assert result["steps"] == first["checkpoint"] + 5
    assert "this job is timed-out" in job.stderr()  # submitit's reading of the signal: not a preemption
    job_info = slurm_cluster.wait_ended(job.job_id)
    assert (job_info["JobState"], job_info["Restarts"]) == ("COMPLETED", "1")

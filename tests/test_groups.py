"""Sweeps and searches stopped by Ctrl-C or SIGTERM at several moments and resumed: every member ends
completed exactly once, in one run folder, with the numbers of an uninterrupted training of its values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, make_names_files, members, metrics, wait_for

SEEDS = ("1", "2", "3")
EPOCHS = 8  # long enough that a signal lands inside a member's training


def _rnnctl(root: Path, *args, **kw) -> subprocess.Popen:
    env = {**os.environ, "RNNCTL_RUNS": str(root), "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    cmd = [sys.executable, "-m", "rnnctl.cli", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _config(files) -> list[str]:
    return [TINY, *files.set_args(), "--set", f"train.epochs={EPOCHS}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple[int, str], list[dict]]:
    """(jobs, seed) -> the metrics of an uninterrupted sweep's member (with its jobs: threads change numbers)."""
    where = tmp_path_factory.mktemp("reference")
    files = make_names_files(where / "data")
    out = {}
    for jobs in (1, 2):
        root = where / f"jobs{jobs}"
        proc = _rnnctl(root, "sweep", *_config(files), "--grid", f"train.seed={','.join(SEEDS)}", "--jobs", jobs)
        assert proc.wait(timeout=600) == 0, proc.stdout.read()
        (group,) = (root / "sweeps").iterdir()
        out.update({(jobs, r["train.seed"]): metrics(group / "runs" / r["run"]) for r in members(group)})
    return out, files


def _runs(group: Path) -> list[Path]:
    found = (group / "runs").iterdir() if (group / "runs").is_dir() else []
    return [p for p in found if (p / "run.json").is_file()]


def _status(run: Path) -> str:
    try:
        return json.loads((run / "run.json").read_text())["status"]
    except (OSError, ValueError):
        return "?"


MOMENTS = {  # when to stop the group: a condition on its folder
    "during a member's training": lambda g: any((r / "checkpoints" / "last.pt").is_file() for r in _runs(g)),
    "between members": lambda g: any(_status(r) == "completed" for r in _runs(g)),
    "during the wrap-up": lambda g: sum(_status(r) == "completed" for r in _runs(g)) == len(SEEDS),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, moment, jobs, sig",
    [
        ("sweep", "during a member's training", 1, signal.SIGINT),
        ("sweep", "between members", 1, signal.SIGTERM),
        ("sweep", "during the wrap-up", 1, signal.SIGINT),
        ("sweep", "during a member's training", 2, signal.SIGINT),
        ("search", "during a member's training", 1, signal.SIGTERM),
        ("search", "between members", 1, signal.SIGINT),
        ("search", "during the wrap-up", 1, signal.SIGTERM),
        ("search", "between members", 2, signal.SIGTERM),
    ],
)
def test_a_group_stopped_at_any_moment_resumes_to_the_uninterrupted_result(
    reference, isolated, kind, moment, jobs, sig
):
    numbers, files = reference
    if kind == "sweep":
        args = ["sweep", *_config(files), "--grid", f"train.seed={','.join(SEEDS)}", "--study", "g"]
        group = isolated / "sweeps" / "g"
    else:
        args = ["search", *_config(files), "--space", f"train.seed=choice({','.join(SEEDS)})", "--trials", "3"]
        args += ["--pruner", "none", "--study", "g"]
        group = isolated / "studies" / "g"
    proc = _rnnctl(isolated, *args, "--jobs", jobs)
    wait_for(lambda: group.is_dir() and MOMENTS[moment](group) or proc.poll() is not None, what=moment)
    proc.send_signal(sig)
    code = proc.wait(timeout=600)
    said = proc.stdout.read()
    if code != 0:  # it had not ended by itself (the wrap-up can be over before the signal lands)
        assert code == (130 if sig == signal.SIGINT else 143), said
        resume = f"continue with: rnnctl {kind} --resume g"
        assert resume in said and "Traceback" not in said and "train --resume" not in said, said
        interrupted = [r["status"] for r in members(group)]
        assert "interrupted" in interrupted or moment != "during a member's training", interrupted
    resumed = _rnnctl(isolated, kind, "--resume", "g", "--jobs", jobs)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    rows = members(group)
    assert [r["status"] for r in rows] == ["completed"] * len(SEEDS), rows
    runs = _runs(group)
    assert sorted(r["run"] for r in rows) == sorted(r.name for r in runs)  # one run folder per member, no more
    for r in rows:  # each member's numbers are those of its values trained without a stop
        assert metrics(group / "runs" / r["run"]) == numbers[(jobs, r["train.seed"])], (r, moment)


@pytest.mark.slow
def test_a_shared_sweep_interrupted_on_one_machine_is_finished_by_its_resume_there(reference, tmp_path):
    """Two machines (their own run folders) share one sweep through a journal file. Ctrl-C on the first
    while it trains a member: the second goes on with what is queued; `--resume` on the first continues
    its interrupted member in its own run folder. Every member ends completed once, on one machine."""
    numbers, files = reference
    journal = tmp_path / "shared" / "sweep.log"
    args = ["sweep", *_config(files), "--grid", f"train.seed={','.join(SEEDS)}", "--study", "g", "--storage", journal]
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    a = _rnnctl(a_root, *args)
    group_a = a_root / "sweeps" / "g"
    wait_for(lambda: group_a.is_dir() and MOMENTS["during a member's training"](group_a), what="a member training")
    b = _rnnctl(b_root, *args)
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=600) == 130, a.stdout.read()
    assert b.wait(timeout=600) == 0, b.stdout.read()
    resumed = _rnnctl(a_root, "sweep", "--resume", "g")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    done = [t for t in optuna.load_study(study_name="g", storage=storage).trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["train.seed"] for t in done) == sorted(SEEDS)  # each member completed once
    runs = {t.user_attrs["run"]: t.params["train.seed"] for t in done}
    for root in (a_root, b_root):
        for run in _runs(root / "sweeps" / "g"):
            if run.name in runs:
                assert metrics(run) == numbers[(1, runs[run.name])]
    there = [r.name for root in (a_root, b_root) for r in _runs(root / "sweeps" / "g") if _status(r) == "completed"]
    assert sorted(there) == sorted(runs)  # no member trained twice, on either machine

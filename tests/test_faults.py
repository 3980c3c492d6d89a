"""Runs that survive faults: SIGTERM, two writers, stale locks, full and read-only disks, torn and forged
files, symbolic links planted in a run folder. Each family: one line and exit 1 (143 for SIGTERM), nothing
half-written passed off as good, and the run resumable once the cause is gone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_one_line_error, metrics, run_dirs, run_info, tiny_config, wait_for

from rnnctl import locks, loop, plots, runs
from rnnctl.errors import StorageError
from rnnctl.locks import FolderLock
from rnnctl.runs import LOCK, RunFolder


def spawn(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rnnctl.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env},
    )  # fmt: skip


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_with_exit_143_and_resume_continues(names_files, isolated, cli):
    proc = spawn(["train", str(TINY), *names_files.set_args(), "--set", "train.epochs=400"])
    try:
        run = wait_for(lambda: next((d for d in run_dirs(isolated) if RunFolder(d).rows()), None), 60, proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err and "interrupted (SIGTERM) in" in out and "SIGTERM" not in err  # said once
    record = run_info(run)
    assert record["status"] == "interrupted" and record["epochs_done"] >= 1
    assert (run / "eval" / "test-best.json").is_file()  # the best checkpoint was tested in the grace period
    assert not (run / LOCK).exists()  # released
    done = record["epochs_done"]
    result = cli("train", "--resume", run.name, "--epochs", str(done + 1))
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in RunFolder(run).rows() if not r.get("partial")] == list(range(1, done + 2))


def test_a_run_killed_before_its_wrap_up_resumes_into_it(copy_run, cli):
    """Killed after the last epoch, before testing best.pt and drawing plots: resume does just that."""
    record = run_info(copy_run)
    before = metrics(copy_run)
    for key in ("test", "finished", "duration"):
        record.pop(key)
    record.update(status="running", pid=2**22 + 12345)  # a process that is gone
    (copy_run / "run.json").write_text(json.dumps(record))
    for folder in ("eval", "plots"):
        for f in (copy_run / folder).iterdir():
            f.unlink()
    assert "died" in cli("runs").stdout
    result = cli("train", "--resume", copy_run.name)
    assert result.exit_code == 0, result.output
    after = run_info(copy_run)
    assert after["status"] == "completed" and after["test"]["acc"] > 0
    assert (copy_run / "eval" / "test-best.json").is_file() and (copy_run / "plots" / "loss.png").is_file()
    assert metrics(copy_run) == before  # nothing trained again
    assert_one_line_error(cli("train", "--resume", copy_run.name), "has trained", "--epochs")  # now it is done


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_over_in_its_folder(names_files, isolated, cli):
    reference = loop.train(tiny_config(names_files, "name=ref"), command="ref", loggers=[])
    cut = loop.train(tiny_config(names_files, "name=cut"), command="cut", loggers=[])
    run = Path(cut["dir"])
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 3, "val_acc": 0.5}) + "\n")
    record = run_info(run)
    record.update(status="running", pid=2**22 + 12345, epochs_done=0)
    (run / "run.json").write_text(json.dumps(record))
    result = cli("train", "--resume", run.name)
    assert result.exit_code == 0, result.output
    assert metrics(run) == metrics(Path(reference["dir"]))  # the same numbers as a run never cut
    assert run_info(run)["history"][-1]["from_epoch"] == 0


# -- two writers ---------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from rnnctl.runs import RunFolder
lock = RunFolder(Path(sys.argv[1])).lock()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_writer_gets_one_line(copy_run, cli):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(copy_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (copy_run / "metrics.jsonl").read_bytes()
        needles = ("another process writes this run", f"pid {holder.pid}", "wait for it")
        assert_one_line_error(cli("train", "--resume", copy_run.name, "--epochs", "5"), *needles)
        assert_one_line_error(cli("eval", copy_run.name), *needles)
        assert (copy_run / "metrics.jsonl").read_bytes() == before  # nothing written by the refused ones
        assert cli("predict", copy_run.name, "Nakamura").exit_code == 0  # readers are not writers
    finally:
        holder.kill()
        holder.wait()
    result = cli("train", "--resume", copy_run.name, "--epochs", "4")  # the holder is dead: quietly taken
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_two_resumes_started_together_one_trains(copy_run):
    # long enough (about 10 s) that the two overlap however slowly the second one starts on a loaded machine
    procs = [spawn(["train", "--resume", copy_run.name, "--epochs", "30", "--quiet"]) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = next(err for p, (out, err) in zip(procs, outs) if p.returncode == 1)
    assert loser.strip().startswith("error: ") and "another process writes this run" in loser
    epochs = [r["epoch"] for r in RunFolder(copy_run).rows()]
    assert epochs == list(range(1, 31))  # no interleaved rows


def test_a_stale_lock_of_another_host_needs_force(copy_run, cli):
    stale = {"host": "node-that-died", "pid": 4242, "token": "x", "heartbeat": time.time() - 3600}
    (copy_run / LOCK).write_text(json.dumps(stale))
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--epochs", "4"), "node-that-died", "--force")
    result = cli("train", "--resume", copy_run.name, "--epochs", "4", "--force")
    assert result.exit_code == 0, result.output
    assert "took the run over from pid 4242 on node-that-died" in result.stderr
    assert not (copy_run / LOCK).exists()


def test_a_live_lock_of_another_host_is_never_taken(copy_run, cli):
    live = {"host": "busy-node", "pid": 4242, "token": "x", "heartbeat": time.time()}
    (copy_run / LOCK).write_text(json.dumps(live))
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--force"), "busy-node", "wait for it")


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    folder = tmp_path / "run"
    folder.mkdir()
    with FolderLock(folder / LOCK) as lock:
        first = lock.holder()["heartbeat"]
        time.sleep(0.3)
        assert lock.holder()["heartbeat"] > first and lock.holder()["host"] == socket.gethostname()
    assert list(folder.iterdir()) == []  # released, and no heartbeat's file left beside it


# -- storage -------------------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.slow
def test_a_full_disk_while_drawing_plots_is_one_line_and_resumable(names_files, isolated, cli, monkeypatch):
    mkstemp = runs.tempfile.mkstemp

    def full_for_plots(*args, dir=None, **kwargs):  # the disk fills up just as the plots are drawn
        return enospc() if Path(dir).name == "plots" else mkstemp(*args, dir=dir, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(runs.tempfile, "mkstemp", full_for_plots)
        result = cli("train", TINY, *names_files.set_args())
    assert_one_line_error(result, "plots", "cannot write", "No space left on device", "--resume")
    (run,) = run_dirs(isolated)
    assert run_info(run)["status"] == "failed"
    result = cli("train", "--resume", run.name)  # space freed
    assert result.exit_code == 0, result.output
    assert run_info(run)["status"] == "completed" and (run / "plots" / "loss.png").is_file()


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "600k"):
        pytest.skip("no tmpfs mount here (needs root); the injected-OSError tests cover the same paths")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_really_full_disk_mid_run(small_disk, names_files, cli, monkeypatch):
    """A 600 KB tmpfs fills up during training: one line naming the file, and the run resumes elsewhere."""
    monkeypatch.setenv("RNNCTL_RUNS", str(small_disk))
    result = cli("train", TINY, *names_files.set_args(), "--set", "model.hidden_size=64", "--set", "train.epochs=30")
    assert_one_line_error(result, str(small_disk), "No space left on device")
    (run,) = run_dirs(small_disk)
    rows = RunFolder(run).rows()  # what was written reads back
    ckpt = RunFolder(run).load_checkpoint("last") if RunFolder(run).has_checkpoint("last") else None
    assert ckpt is None or ckpt["epoch"] <= max((r["epoch"] for r in rows), default=0) + 1
    assert not list(run.rglob("*.tmp"))  # no temporary file left behind


def test_a_read_only_run_folder(small_disk, copy_run, cli, monkeypatch):
    import shutil

    target = Path(shutil.copytree(copy_run, small_disk / copy_run.name))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        assert_one_line_error(cli("train", "--resume", str(target), "--epochs", "4"), str(target), "Read-only")
        assert_one_line_error(cli("eval", str(target)), "Read-only")
        assert cli("predict", str(target), "Nakamura").exit_code == 0
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


def test_permission_error_is_one_line(copy_run, cli, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runs.os, "open", denied)
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--epochs", "4"), LOCK, "Permission denied")


def test_files_keep_the_umask(tmp_path, monkeypatch):
    for mask in (0o022, 0o077):
        old = os.umask(mask)
        try:
            monkeypatch.setattr(runs, "UMASK", runs._umask())  # what the module reads once at import
            path = tmp_path / f"f-{mask:o}.json"
            runs.write_json(path, {"a": 1})
            plain = tmp_path / f"plain-{mask:o}"
            plain.write_text("x")  # what an ordinary open() gives
            assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask
        finally:
            os.umask(old)


def test_no_write_follows_a_symlink_out_of_the_run(copy_run, cli, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (copy_run / "metrics.jsonl").rename(tmp_path / "saved.jsonl")
    (copy_run / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    result = cli("train", "--resume", copy_run.name, "--epochs", "4")
    assert_one_line_error(result, "metrics.jsonl", "symbolic link")
    assert not (outside / "metrics.jsonl").exists()
    (copy_run / "metrics.jsonl").unlink()
    (tmp_path / "saved.jsonl").rename(copy_run / "metrics.jsonl")
    for f in (copy_run / "plots").iterdir():
        f.unlink()
    (copy_run / "plots").rmdir()
    (copy_run / "plots").symlink_to(outside, target_is_directory=True)
    result = cli("train", "--resume", copy_run.name, "--epochs", "4")
    assert_one_line_error(result, "plots", "symbolic link")
    assert list(outside.iterdir()) == []


# -- torn and damaged files ----------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_skipped_said_and_repaired(copy_run, cli):
    rows = metrics(copy_run)
    with (copy_run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "step": 2')  # a crash mid-append
    with (copy_run / "steps.csv").open("a") as f:
        f.write("999,0.5")
    listed = cli("runs")
    assert listed.exit_code == 0 and copy_run.name in listed.stdout
    result = cli("compare", copy_run.name, copy_run.name)
    assert result.exit_code == 0 and "line 4 is incomplete" in result.stderr
    result = cli("train", "--resume", copy_run.name, "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert metrics(copy_run)[:3] == rows and len(metrics(copy_run)) == 4
    assert all(line.endswith("}") for line in (copy_run / "metrics.jsonl").read_text().splitlines())
    assert "warning" not in cli("runs").stderr  # repaired


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda c: c.pop("model"), "no 'model'"),
        (lambda c: c.update(epoch="three"), "'epoch' is a str"),
        (lambda c: c.update(model={"embedding.weight": torch.zeros(2, 2)}), "does not fit its own config"),
        (lambda c: c.update(meta=[1, 2]), "'meta' is a list"),
        (lambda c: c.update(step=-5), "expected counts >= 0"),
    ],
    ids=["missing-key", "wrong-type", "wrong-shapes", "meta-not-dict", "negative-step"],
)
def test_a_forged_checkpoint_is_one_line_everywhere(copy_run, cli, damage, needle):
    for name in ("best", "last"):
        path = copy_run / "checkpoints" / f"{name}.pt"
        ckpt = torch.load(path, weights_only=True)
        damage(ckpt)
        torch.save(ckpt, path)
    for args in (
        ["eval", copy_run.name],
        ["predict", copy_run.name, "Nakamura"],
        ["sample", copy_run.name],
        ["train", "--resume", copy_run.name, "--epochs", "5"],
    ):
        assert_one_line_error(cli(*args), f"{copy_run.name}/checkpoints/", needle)


def test_damaged_run_files_are_one_line_and_runs_lists_the_rest(copy_run, trained_run, cli, isolated):
    import shutil

    other = Path(shutil.copytree(trained_run.dir, isolated / "20000101-000000-healthy"))
    (copy_run / "run.json").write_text('"a string"')
    (copy_run / "metrics.jsonl").write_bytes(b'[1, 2]\n{"epoch": 1, "step": 2}\n')
    listed = cli("runs")
    assert listed.exit_code == 0 and "unreadable" in listed.stdout and other.name in listed.stdout
    assert_one_line_error(cli("compare", copy_run.name, other.name), "metrics.jsonl", "line 1", "JSON object")
    (copy_run / "metrics.jsonl").write_bytes(b'{"epoch": 1, "step": \xff}\n')
    assert_one_line_error(cli("compare", copy_run.name, other.name), "metrics.jsonl", "not UTF-8")
    assert_one_line_error(cli("train", "--resume", copy_run.name, "--epochs", "5"), "run.json", "JSON object")


def test_plots_skip_a_truncated_steps_file(copy_run, monkeypatch):
    text = (copy_run / "steps.csv").read_text()
    (copy_run / "steps.csv").write_text(text[: len(text) // 2])  # cut in the middle of a line
    with pytest.warns(runs.RunFileWarning, match="damaged line"):
        written = plots.write_all(RunFolder(copy_run))
    assert copy_run / "plots" / "grad_norm.png" in written


def test_storage_error_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.os, "replace", enospc)
    with pytest.raises(StorageError, match=r"x\.json: cannot write: No space left on device"):
        runs.write_json(tmp_path / "x.json", {})

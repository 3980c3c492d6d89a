"""train.checkpoint_every: last.pt inside an epoch. A run killed (kill -9) or stopped by a signal mid-epoch and
resumed with `rnnctl train --resume` ends exactly as an uncut run: metrics rows, steps.csv, best and test."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONFIGS, TINY, QuietLogger, assert_one_line_error, nan_loss_at, run_dirs, stop, tiny_config
from conftest import wait_for

from rnnctl import loop
from rnnctl.callbacks import StepCheckpoints
from rnnctl.config import load_config
from rnnctl.distributed import World
from rnnctl.errors import ConfigError, RunError
from rnnctl.loop import TIMING_KEYS
from rnnctl.runs import RunFolder, load_checkpoint

CHARLM = CONFIGS / "smoke" / "charlm_tiny.yaml"


@pytest.fixture(autouse=True)
def python_sigint():
    """The in-process cases send SIGINT to this process: give it Python's own handler, as the `rnnctl` command
    has (a test runner's worker process need not have it: seen as a SIGINT that stopped nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def text(tmp_path: Path) -> Path:
    """6,000 generated characters: about 42 batches an epoch in charlm_tiny."""
    rnd = random.Random(0)
    path = tmp_path / "text.txt"
    path.write_text("".join(rnd.choice("abcdefgh ij.\n") for _ in range(6000)))
    return path


def charlm_config(text: Path, *more: str):
    return load_config(CHARLM, [f"data.path={text}", "train.epochs=2", *more])


def numbers(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in RunFolder(run).rows()]


def assert_same_run(run: Path, reference: Path) -> None:
    """What an uncut run leaves: the same metrics rows (but timings), per-step rows, best and test metrics."""
    assert numbers(run) == numbers(reference)
    assert RunFolder(run).steps() == RunFolder(reference).steps()
    info, ref = (json.loads((d / "run.json").read_text()) for d in (run, reference))
    assert info["status"] == "completed" and info["epochs_done"] == ref["epochs_done"]
    assert info["best"] == ref["best"] and info.get("test") == ref.get("test")


def trained(isolated: Path, cfg, loggers=(), name: str = "") -> Path:
    """Train `cfg` in this process (a KeyboardInterrupt stops it as Ctrl-C does); its run folder."""
    before = set(run_dirs(isolated))
    try:
        loop.train(cfg, command=name or "test", loggers=list(loggers))
    except KeyboardInterrupt:
        pass
    (run,) = set(run_dirs(isolated)) - before
    return run


class SignalAtStep(QuietLogger):
    """Sends this process `signum` while step `n` of this session ends (`at_epoch_end`: at the last step of
    the first epoch), as a Ctrl-C or SLURM's SIGTERM landing inside the step."""

    def __init__(self, n: int = 0, signum: int = signal.SIGINT, at_epoch_end: bool = False):
        self.n, self.signum, self.at_epoch_end, self.seen, self.sent = n, signum, at_epoch_end, 0, None

    def progress(self, done, total, compute):
        self.seen += 1
        if self.sent is None and (self.seen == self.n or self.at_epoch_end and done == total):
            self.sent = self.seen
            os.kill(os.getpid(), self.signum)


# -- a signal inside an epoch, in this process -----------------------------------------------------


EMA_LSTM = ["train.ema=0.9", "model.cell=lstm", "model.layers=2", "model.dropout=0.2"]
EVAL_EVERY = ["train.eval_every=3", "model.dropout=0.3"]
BF16 = ["train.precision=bf16", "train.grad_clip=1.0", "train.schedule.name=cosine"]
CASES = {  # the task, its overrides, and when the signal comes
    "charlm": ("charlm", [], SignalAtStep(50)),  # inside epoch 2
    "charlm-epoch-end": ("charlm", [], SignalAtStep(at_epoch_end=True)),  # after the epoch's last step
    "names-eval-every-sigterm": ("names", EVAL_EVERY, SignalAtStep(10, signal.SIGTERM)),
    "charlm-ema-lstm-dropout": ("charlm", EMA_LSTM, SignalAtStep(47)),
    "names-bf16-clip": ("names", BF16, SignalAtStep(4)),
}  # fmt: skip


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[] if c == "names-bf16-clip" else [pytest.mark.slow]) for c in CASES]
)
def test_a_signal_inside_an_epoch_saves_a_step_checkpoint_and_the_resume_is_exact(
    case, text, names_files, isolated, cli
):
    task, more, signaller = CASES[case]

    def config(*extra):
        if task == "charlm":
            return charlm_config(text, *more, *extra)
        return tiny_config(names_files, *more, *extra)

    reference = trained(isolated, config())  # checkpoint_every unset: the numbers do not depend on it
    cut = trained(isolated, config("train.checkpoint_every=3"), [signaller])
    assert signaller.sent, "the signal was never sent"
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "interrupted"
    ckpt = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert ckpt["step"] == signaller.sent  # saved at the end of the step the signal landed in: nothing lost
    assert "inside" in ckpt and ckpt["inside"]["ranks"][0]["steps"] > 0
    assert ckpt["epoch"] == info["epochs_done"] + 1  # the epoch it is inside
    rows_before = RunFolder(cut).rows()
    assert all(r["step"] <= ckpt["step"] for r in rows_before)

    result = cli("train", "--resume", str(cut))
    assert result.exit_code == 0, result.output
    assert_same_run(cut, reference)
    history = json.loads((cut / "run.json").read_text())["history"]
    assert history[-1]["from_step"] == ckpt["step"] and history[-1]["from_epoch"] == ckpt["epoch"] - 1


class SignalWhileValidating(QuietLogger):
    """Sends this process SIGINT as the first epoch's validation begins."""

    def phase(self, name, text):
        if name == "validate" and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_a_signal_during_a_validation_waits_for_its_row_and_checkpoint(names_files, isolated, cli):
    reference = trained(isolated, tiny_config(names_files))
    cut = trained(isolated, tiny_config(names_files, "train.checkpoint_every=3"), [SignalWhileValidating()])
    ckpt = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], "inside" in ckpt) == (1, 7, False)  # the epoch's end, recorded whole
    assert [r["epoch"] for r in RunFolder(cut).rows()] == [1]
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    assert cli("train", "--resume", str(cut)).exit_code == 0
    assert_same_run(cut, reference)


def test_without_checkpoint_every_a_signal_stops_at_once_and_last_pt_is_the_epochs(names_files, isolated):
    signaller = SignalAtStep(10)  # 7 steps an epoch: inside epoch 2
    run = trained(isolated, tiny_config(names_files, "train.epochs=5"), [signaller])
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert "inside" not in ckpt and ckpt["epoch"] == 1 and ckpt["step"] == 7
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_step_checkpoints_come_every_n_steps_of_the_run(names_files, isolated, monkeypatch):
    saved = []
    original = RunFolder.save_checkpoint

    def save_checkpoint(self, names, state):
        saved.append((tuple(names), state["epoch"], state["step"], "inside" in state))
        original(self, names, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_checkpoint)
    trained(isolated, tiny_config(names_files, "train.checkpoint_every=3", "train.epochs=2"))
    inside = [(epoch, step) for names, epoch, step, is_inside in saved if is_inside]
    assert inside == [(1, 3), (1, 6), (2, 9), (2, 12)]  # 7 steps an epoch; the epoch's end writes its own at 7, 14
    assert all(names == ("last",) for names, *_, is_inside in saved if is_inside)  # never best.pt
    assert [(epoch, step) for names, epoch, step, is_inside in saved if "last" in names and not is_inside] == [
        (1, 7),
        (2, 14),
    ]


@pytest.mark.slow
def test_a_duration_saves_every_so_many_seconds(text, isolated, monkeypatch):
    from rnnctl import training

    real = training.detach

    def slow(state):  # once per training step: 50 ms
        time.sleep(0.05)
        return real(state)

    monkeypatch.setattr(training, "detach", slow)
    saves = []
    original = StepCheckpoints.save

    def save(self, trainer, progress):
        saves.append(time.monotonic())
        return original(self, trainer, progress)

    monkeypatch.setattr(StepCheckpoints, "save", save)
    start = time.monotonic()
    run = trained(isolated, charlm_config(text, "train.checkpoint_every=1s", "train.epochs=1"))
    seconds = time.monotonic() - start
    assert 1 <= len(saves) <= seconds  # about 2 s of steps: one or two
    assert saves[0] - start >= 1.0
    assert all(b - a >= 1.0 for a, b in zip(saves, saves[1:]))
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("value", ["0", "-3", "abc", "0s", "2.5", "true", "10x", "'5'"])
def test_bad_values_are_one_line_errors_naming_the_key(cli, names_files, value):
    result = cli("train", TINY, *names_files.set_args(), "--set", f"train.checkpoint_every={value}")
    assert_one_line_error(result, "train.checkpoint_every", "number of steps", "duration")


def test_good_values_and_a_duration_under_torchrun():
    assert StepCheckpoints(5, World()).steps == 5
    assert StepCheckpoints("10m", World()).seconds == 600
    assert StepCheckpoints("1.5h", World()).seconds == 5400
    assert StepCheckpoints(5, World(rank=1, size=2)).steps == 5
    with pytest.raises(ConfigError, match=r"^train\.checkpoint_every: 10m is a duration.*number of steps"):
        StepCheckpoints("10m", World(rank=0, size=2))


def test_a_nan_loss_keeps_the_last_good_step_checkpoint(cli, names_files, isolated, monkeypatch):
    nan_loss_at(monkeypatch, 10)  # 7 steps an epoch: the 3rd step of epoch 2
    args = [*names_files.set_args(), "--set", "train.checkpoint_every=2"]
    line = assert_one_line_error(cli("train", TINY, *args), "epoch 2, step 10", "not finite")
    assert "epoch 2, step 8 in checkpoints/last.pt" in line  # 10 and 12 saw the NaN: not saved
    (run,) = run_dirs(isolated)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 8)


def test_a_step_checkpoint_resumes_on_as_many_processes_and_within_its_epochs(names_files, isolated, cli):
    import torch

    run = trained(isolated, tiny_config(names_files, "train.checkpoint_every=3", "train.epochs=4"), [SignalAtStep(9)])
    line = assert_one_line_error(cli("train", "--resume", str(run), "--epochs", "1"), "is inside epoch 2", "N >= 2")
    assert "--epochs 1" in line
    path = run / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["inside"]["ranks"] *= 2  # as if two processes had saved it
    torch.save(ckpt, path)
    assert_one_line_error(cli("train", "--resume", str(run)), "inside epoch 2 by 2 processes", "--nproc 2")


def test_a_resumed_pass_serves_the_rest_of_the_epoch_and_leaves_the_generator_as_an_uncut_one(names_files):
    import torch

    from rnnctl.tasks import get_task
    from rnnctl.training import EpochProgress

    task = get_task("names")
    data = task.prepare(tiny_config(names_files))
    split = data.splits["train"]
    generator = torch.Generator().manual_seed(3)
    uncut = EpochProgress(task.meter(data.meta))
    batches = uncut.batches(split, 32, generator)
    head = [next(batches).targets for _ in range(3)]
    at_step = generator.get_state()  # what a step checkpoint after 3 steps keeps, and a resume restores
    tail = [b.targets for b in batches]
    end = generator.get_state()

    resumed = torch.Generator()
    resumed.set_state(at_step)
    again = EpochProgress(task.meter(data.meta), order=uncut.order, steps=3)
    rest = [b.targets for b in again.batches(split, 32, resumed)]
    assert head and len(rest) == len(tail) and all(torch.equal(a, b) for a, b in zip(rest, tail))
    assert torch.equal(resumed.get_state(), end)


# -- kill -9 and SIGTERM to a real `rnnctl train` ----------------------------------------------------

SLOW = """
import os, sys, time
from pathlib import Path
from rnnctl import training

real, count = training.detach, [0]

def detach(state):  # once per training step: slow enough to be caught inside an epoch; counts the steps
    count[0] += 1
    Path(os.environ["STEPS_FILE"]).write_text(str(count[0]))
    time.sleep(float(os.environ["STEP_SECONDS"]))
    return real(state)

training.detach = detach
sys.argv = ["rnnctl", *sys.argv[1:]]
from rnnctl.cli import main
main()
"""


def start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    script = tmp_path / "slow.py"
    script.write_text(SLOW, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEPS_FILE": str(tmp_path / "steps"), "STEP_SECONDS": "0.03"}
    (tmp_path / "steps").unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def saved_step(run: Path | None) -> int:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["step"] if run else -1
    except RunError:
        return -1


def alive(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"rnnctl exited early with {proc.returncode}:\n{out}\n{err}")
    return True


@pytest.mark.slow
def test_kill_9_at_random_steps_then_resume_equals_an_uncut_run(text, tmp_path, isolated, cli):
    reference = trained(isolated, charlm_config(text))  # 2 epochs of about 42 steps
    args = [str(CHARLM), "--set", f"data.path={text}", "--set", "train.epochs=2", "--set", "train.checkpoint_every=3"]
    points = sorted(random.Random(7).sample(range(4, 80), 3))  # [23, 45, 54]
    run, inside = None, []
    for i, point in enumerate(points):
        proc = start(tmp_path, ["train", *(args if run is None else ["--resume", str(run)]), "--quiet"])
        try:
            if run is None:
                wait_for(lambda: alive(proc) and len(run_dirs(isolated)) == 2, 120, "the run folder")
                run = next(d for d in run_dirs(isolated) if d != reference)
            wait_for(lambda: alive(proc) and saved_step(run) >= point, 120, f"a step checkpoint at {point}")
        finally:
            proc.kill()  # SIGKILL: nothing recorded, nothing flushed
            proc.communicate()
        inside.append("inside" in load_checkpoint(run / "checkpoints" / "last.pt"))  # killed inside an epoch
        assert json.loads((run / "run.json").read_text())["status"] == "running"  # as kill -9 left it
    result = cli("train", "--resume", str(run))
    assert result.exit_code == 0, result.output
    assert_same_run(run, reference)
    assert len(json.loads((run / "run.json").read_text())["history"]) == 3, points
    assert any(inside), (points, inside)  # a heavily loaded machine may land one kill just past an epoch's end


@pytest.mark.slow
def test_sigterm_mid_epoch_writes_a_step_checkpoint_at_once_and_the_resume_is_exact(text, tmp_path, isolated, cli):
    reference = trained(isolated, charlm_config(text))
    args = ["--set", f"data.path={text}", "--set", "train.epochs=2", "--set", "train.checkpoint_every=1000"]
    proc = start(tmp_path, ["train", str(CHARLM), *args])  # 1000 steps: no step checkpoint but the signal's
    steps = tmp_path / "steps"
    wait_for(lambda: alive(proc) and steps.is_file() and int(steps.read_text() or 0) >= 20, 120, "step 20", proc)
    out, err = stop(proc, signal.SIGTERM, 120)  # what SLURM sends before its time limit
    assert proc.returncode == 143, (out, err)
    assert "interrupted (SIGTERM)" in out and "Traceback" not in err, (out, err)
    (run,) = [d for d in run_dirs(isolated) if d != reference]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert "inside" in ckpt and ckpt["step"] == int(steps.read_text())  # the step it landed in: nothing lost
    result = cli("train", "--resume", str(run))
    assert result.exit_code == 0, result.output
    assert_same_run(run, reference)


@pytest.mark.slow
def test_sigterm_to_nproc_2_stops_every_rank_at_a_step_checkpoint_and_the_resume_is_exact(
    names_files, tmp_path, isolated
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [str(TINY), *names_files.set_args(), "--set", "train.batch_size=30", "--set", "train.epochs=8"]
    args += ["--set", "model.dropout=0.3", "--set", "train.checkpoint_every=3", "--quiet", "--nproc", "2"]
    rnnctl = [sys.executable, "-m", "rnnctl", "train"]
    env["RNNCTL_RUNS"] = str(tmp_path / "reference")
    done = subprocess.run([*rnnctl, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    (reference,) = run_dirs(tmp_path / "reference")
    env["RNNCTL_RUNS"] = str(isolated)
    proc = subprocess.Popen([*rnnctl, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: alive(proc) and any(RunFolder(d).rows() for d in run_dirs(isolated)), 120, "epoch 1", proc)
    out, err = stop(proc, signal.SIGTERM, 120)
    assert proc.returncode == 143, (out, err)
    (run,) = run_dirs(isolated)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    if "inside" in ckpt:  # a scheduled step checkpoint, with both ranks' places
        assert len(ckpt["inside"]["ranks"]) == 2 and ckpt["step"] % 3 == 0, ckpt["step"]
    else:  # the signal came during a validation: the end of that epoch (8 steps each)
        assert ckpt["step"] % 8 == 0, ckpt["step"]
    assert RunFolder(run).info()["status"] == "interrupted"
    again = [*rnnctl, "--resume", run.name, "--quiet", "--nproc", "2"]
    resumed = subprocess.run(again, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert numbers(run) == numbers(reference) and RunFolder(run).steps() == RunFolder(reference).steps()

"""Ctrl-C during `rnnctl train` (a real process): exit 130, the run recorded as interrupted, files usable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import TINY, CtrlCAtEpoch, Terminal, run_dirs, screen, stop, tiny_config, wait_for

from rnnctl import loop
from rnnctl.runs import RunFolder, load_checkpoint


@pytest.mark.slow
def test_ctrl_c_stops_training_cleanly(names_files, isolated):
    cmd = [sys.executable, "-m", "rnnctl.cli", "train", str(TINY), *names_files.set_args(), "--set", "train.epochs=500"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # RNNCTL_RUNS from the autouse fixture
    # a terminal's Ctrl-C reaches a process whose SIGINT is the default; a child inherits an ignored SIGINT
    # (a pytest-xdist worker's, once some test left it so), and Python then keeps ignoring it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    run = wait_for(lambda: next((d for d in run_dirs(isolated) if RunFolder(d).rows()), None), 60, proc=proc)
    out, err = stop(proc, signal.SIGINT, 60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert "interrupted in" in out and "continue with: rnnctl train --resume" in out  # the summary, and how on
    assert "interrupted" not in err, err  # said once, by the summary

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert 1 <= info["epochs_done"] < 500
    assert info["finished"] and info["duration"] > 0
    rows = RunFolder(run).rows()
    assert rows and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))  # no torn rows
    # (where exactly Ctrl-C lands is a race; test_ctrl_c_during_bookkeeping pins the window down)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= len(rows)
    assert 1 <= load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] <= info["best"]["epoch"]
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "eval" / "test-best.json").is_file()  # the best checkpoint was still tested
    # stdout was a pipe: plain lines, one per epoch that reached the loggers
    assert len(rows) - 1 <= len([line for line in out.splitlines() if line.startswith("epoch ")]) <= len(rows)
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_leaves_one_table_one_summary_and_whole_paths(isolated):
    """Ctrl-C typed at an 80-column terminal: the terminal echoes `^C` after the progress bar, which must not
    wrap the live display's last line (its next redraw would start a line low and leave the header twice);
    the summary is said once; a path and the plot names are never broken by the terminal's wrap."""
    term = Terminal(["train", "smoke/names_tiny", "--set", "train.epochs=500", "--set", "train.batch_size=2"], 80)
    try:
        term.read_until(lambda shown: "batches" in shown.partition("epoch 2/500")[2], 120)  # a row, then the bar
        term.type(b"\x03")  # Ctrl-C, while the bar is the last line
        code, shown = term.finish(120)
    finally:
        term.close()
    lines = screen(shown, 80)
    assert code == 130, "\n".join(lines)
    assert "Traceback" not in shown
    assert len([line for line in lines if line.startswith("epoch  train loss")]) == 1, "\n".join(lines)
    assert len([line for line in lines if "interrupted" in line]) == 1, "\n".join(lines)  # the summary's own
    (run,) = run_dirs(isolated)
    for label in ("run folder:", f"run {run.name} ->"):  # a path on lines of its own (whole, when joined)
        at = next(i for i, line in enumerate(lines) if line.startswith(label))
        rest = lines[at][len(label) :].strip() or "".join(lines[at + 1 : at + 1 + -(-len(str(run)) // 80)])
        assert rest == str(run), "\n".join(lines)
    at = next(i for i, line in enumerate(lines) if line.startswith("plots:"))
    plots = " ".join(lines[at : next(i for i in range(at, len(lines)) if lines[i].startswith("continue with:"))])
    assert set(re.findall(r"[\w.]+", plots.removeprefix("plots:"))) == {p.name for p in RunFolder(run).plots()}


CUT_MATPLOTLIB = """
import os, signal, sys
from importlib.abc import MetaPathFinder

def profile(frame, event, arg):  # the signal once matplotlib.patches has defined Rectangle, mid-module
    if event == "call" and frame.f_code.co_name == "__init_subclass__":
        if getattr(frame.f_locals.get("cls"), "__name__", "") == "RegularPolygon":
            sys.setprofile(None)
            os.kill(os.getpid(), SIGNAL)

class Cut(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "matplotlib.patches":
            sys.meta_path.remove(self)
            sys.setprofile(profile)

SIGNAL = getattr(signal, sys.argv[1])
sys.meta_path.insert(0, Cut())
sys.argv = ["rnnctl", *sys.argv[2:]]
from rnnctl.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_that_cuts_matplotlibs_import_still_ends_in_plots(names_files, isolated, tmp_path, name, code):
    """A signal landing while the wrap-up imports matplotlib (about 2.3 s into a names smoke run) cut its
    import in two; the interrupted run's wrap-up then drew again and failed on the half module (KeyError:
    'Rectangle:kwdoc'). The signal now waits for the plots."""
    script = tmp_path / "cut.py"
    script.write_text(CUT_MATPLOTLIB, encoding="utf-8")
    args = ["train", str(TINY), *names_files.set_args(), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, script, name, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    (run,) = run_dirs(isolated)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert {p.name for p in RunFolder(run).plots()} >= {"loss.png", "accuracy.png", "confusion.png"}


# -- the same, in-process, with Ctrl-C placed at a chosen point ----------------------------------


def test_ctrl_c_between_epochs_in_process(names_files, isolated):
    watcher = CtrlCAtEpoch(2)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(names_files, "train.epochs=50"), command="test", loggers=[watcher])
    (run,) = run_dirs(isolated)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_done"] == 2
    assert watcher.summary["status"] == "interrupted"  # the loggers were told
    assert [r["epoch"] for r in RunFolder(run).rows()] == [1, 2]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert {p.name for p in (run / "plots").iterdir()} == {
        "loss.png",
        "accuracy.png",
        "confusion.png",
        "grad_norm.png",
        "step_loss.png",
    }


def test_ctrl_c_while_saving_last_checkpoint_keeps_best_consistent(names_files, isolated, monkeypatch):
    """Ctrl-C while last.pt is written, in an epoch that improved: self.best already names that epoch
    (the loop's _update_best runs before the checkpoints are saved), so the interrupted run.json
    records best epoch 2 with its val_acc while best.pt (tested as "the best checkpoint") is epoch 1."""
    original = RunFolder.save_checkpoint

    def save_checkpoint(self, names, state):
        if "last" in names and state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered while last.pt is written
        original(self, names, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(names_files, "train.epochs=50"), command="test", loggers=[])
    (run,) = run_dirs(isolated)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == info["best"]["epoch"]


def test_ctrl_c_during_bookkeeping_keeps_run_json_and_metrics_consistent(names_files, isolated, monkeypatch):
    """Ctrl-C while run.json is written (fsync is the slow part): epochs_done already counts the epoch, whose
    metrics row is never written."""
    original = RunFolder.write_info
    fired = []

    def write_info(self, info):
        if info["status"] == "running" and info["epochs_done"] == 2 and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered while run.json is written
        original(self, info)

    monkeypatch.setattr(RunFolder, "write_info", write_info)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(names_files, "train.epochs=50"), command="test", loggers=[])
    assert fired
    (run,) = run_dirs(isolated)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert info["epochs_done"] == len(RunFolder(run).rows()), (info["epochs_done"], RunFolder(run).rows())


def test_a_signal_in_nested_deferred_blocks_waits_for_the_outer_block():
    """A callback's storage write (inner) inside the loop's checkpoint-and-metrics block (outer): the signal
    must not cut the outer block between the checkpoint and the metrics row."""
    import os
    import signal

    from rnnctl.runtime import deferred_interrupt

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"]

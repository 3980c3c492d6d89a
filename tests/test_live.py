"""What a training run shows: the line of what will run, progress inside an epoch (a rich.progress bar on a
terminal, a plain line at most every PLAIN_PROGRESS_S elsewhere), what it does while validating and testing,
and tables that fit 80 columns without cutting a number."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import pytest
from conftest import TINY, in_terminal, run_dirs, screen
from rich.console import Console

from rnnctl import cli as cli_module
from rnnctl import live
from rnnctl.live import LiveTable, PlainLines

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def info(**more):
    return {
        "id": "20261123-101500-charlm_shakespeare", "dir": "runs/20261123-101500-charlm_shakespeare",
        "task": "charlm", "epochs": 20, "epochs_done": 0, "parameters": 3_297_345, "device": "cpu", "threads": 2,
        "monitor": "val_loss", "config": {"model": {"cell": "lstm", "bidirectional": False}},
        "derived": {"vocab_size": 65, "characters": {"train": 1_003_854, "val": 111_540}},
        "sizes": {"train": 1_003_853, "val": 111_539}, **more,
    }  # fmt: skip


def lm_row(epoch: int, **more):
    """A wide row: six metrics, a large samples/s, more than an hour elapsed."""
    return {
        "epoch": epoch, "step": epoch * 7843, "train_loss": 1.5123 + epoch / 100, "train_bpc": 2.1818,
        "train_ppl": 165.1234, "val_loss": 1.4392, "val_bpc": 2.0765, "val_ppl": 4.2153, "lr": 0.002,
        "grad_norm": 0.5123, "best_epoch": epoch, "samples_per_s": 1_234_567.0, "epoch_time": 85.0,
        "elapsed": 3_725.0 * epoch, **more,
    }  # fmt: skip


def console(width: int = 80) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, height=40, force_terminal=True, color_system=None), buf


def rendered(table: LiveTable, width: int = 80) -> str:
    con, buf = console(width)
    con.print(table)
    return plain(buf.getvalue())


# -- what will run ---------------------------------------------------------------------------------


def test_describe_says_task_data_model_epochs_device_threads():
    assert live.describe(info()) == (
        "charlm: 1,003,854 train / 111,540 val characters · LSTM, 3,297,345 parameters · 20 epochs · cpu, 2 threads"
    )
    # no per-split facts in `derived`: each split's length; a resumed run says how far it got; torchrun's ranks
    line = live.describe(info(derived={}, epochs_done=4, world_size=2, threads=1, ranks=[{"device": "cuda:0"}]))
    assert line.startswith("charlm: 1,003,853 train / 111,539 val · ")
    assert line.endswith(" · 20 epochs (4 done) · cuda:0, 2 processes x 1 thread")
    assert " · 1 epoch · " in live.describe(info(epochs=1))  # not `1 epochs`


def test_train_says_what_will_run_before_training(trained_run):
    record = json.loads((trained_run.dir / "run.json").read_text())
    lines = trained_run.stdout.splitlines()
    assert lines[0] == f"run {trained_run.dir.name} -> {trained_run.dir}"
    assert lines[1] == (
        f"names: 216 train / 24 val / 60 test examples · GRU, {record['parameters']:,} parameters · 3 epochs · "
        f"cpu, {record['threads']} thread{'' if record['threads'] == 1 else 's'}"
    )
    assert lines[2].startswith("epoch 1/3 ")


# -- plain lines -----------------------------------------------------------------------------------


def test_plain_progress_lines_come_at_most_every_n_seconds(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    lines = PlainLines(out)
    assert lines.every == live.PLAIN_PROGRESS_S == 30.0
    lines.start(info())
    reads = []

    def running():
        reads.append(now[0])
        return {"loss": 1.23456, "bpc": 1.78}

    for batch in range(1, 12):  # one batch every 10 s
        now[0] += 10
        lines.progress(batch, 7843, running)
    progress = [line for line in out.getvalue().splitlines() if ": batch " in line]
    assert [line.split(", ")[0] for line in progress] == [
        "epoch 1/20: batch 3/7,843 (0%)", "epoch 1/20: batch 6/7,843 (0%)", "epoch 1/20: batch 9/7,843 (0%)",
    ]  # fmt: skip
    assert len(reads) == 3  # the running loss is read only when a line is printed
    assert "0.1 batches/s" in progress[1] and "train loss 1.2346" in progress[1]
    assert "epoch ETA 21:46:10" in progress[1] and "run ETA " in progress[1]


def test_the_run_eta_is_never_shorter_than_the_epoch_eta(monkeypatch):
    """Two quick epochs, then a last one whose batches go slower: the run ends with that epoch, so its ETA is
    at least the epoch's (it said `ETA 0:14  run ETA 0:08`)."""
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(live.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    lines = PlainLines(out)
    lines.every = 0.0
    lines.start(info(epochs=3))
    for epoch in (1, 2):
        now[0] += 2
        lines.epoch(lm_row(epoch))
    lines.progress(1, 101)
    now[0] += 14
    lines.progress(51, 101)  # 50 batches in 14 s: 14 s of this epoch left
    last = out.getvalue().splitlines()[-1]
    epoch_eta, run_eta = re.search(r"epoch ETA (\d+:\d+), run ETA (\d+:\d+)", last).groups()
    assert epoch_eta == "0:14" and run_eta == "0:14", last  # the last epoch: nothing after it
    con, _ = console()
    table = LiveTable(con)
    table.start(info(epochs=3))
    table.clock.t0, table.current = now[0] - 4.0, 3  # two epochs in 4 s, the last one half done
    task = SimpleNamespace(completed=50, total=100, speed=3.6, time_remaining=14.0, description="epoch 3/3")
    figures = live._Figures(table).render(task).plain  # beside the bar
    assert "ETA 0:14" in figures and "run ETA 0:14" in figures, figures


def test_plain_output_shows_progress_and_the_final_test(cli, names_files, isolated, monkeypatch):
    monkeypatch.setattr(live, "PLAIN_PROGRESS_S", 0.0)  # a line at every batch: what 30 s give a long epoch
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    progress = [line for line in lines if ": batch " in line]
    assert [line.split(", ")[0].split(": ")[1] for line in progress] == [
        f"batch {b}/7 ({b / 7:.0%})" for b in range(1, 7)
    ] * 2  # the last batch of an epoch is its epoch line
    assert all("train loss " in line and "epoch ETA" in line and "run ETA" in line for line in progress)
    assert progress[0].startswith("epoch 1/2: ") and progress[-1].startswith("epoch 2/2: ")
    (run,) = run_dirs(isolated)
    best = json.loads((run / "run.json").read_text())["best"]["epoch"]
    test = lines.index(f"testing best.pt (epoch {best}) on the test split")
    assert lines[test - 1].startswith("epoch 2/2 ") and lines[test + 1] == "drawing the plots"
    assert lines[test + 2].startswith("completed in")
    assert not any("validating" in line for line in lines)  # each epoch's own line says it


# -- the live display ------------------------------------------------------------------------------


def test_live_table_fits_80_columns_without_cutting_a_number():
    con, buf = console()
    table = LiveTable(con)
    table.start(info())
    for epoch in range(1, 13):
        table.epoch(lm_row(epoch))
    shown = rendered(table)
    assert "…" not in shown and all(len(line) <= 80 for line in shown.splitlines()), shown
    header = shown.splitlines()[0]
    for name in ("epoch", "val loss", "train loss", "best"):  # the columns kept
        assert name in header, header
    for name in ("samples/s", "grad norm", "lr"):  # the first to go
        assert name not in header, header
    last = shown.splitlines()[-1].split()
    assert last[0] == "12/20" and "1.6323" in last and "1.4392" in last and last[-1] == "12"
    wide = rendered(table, width=200)  # room for every column
    assert "1,234,567" in wide and "grad norm" in wide and "2.00e-03" in wide
    table.finish({})
    assert "…" not in plain(buf.getvalue())


def test_live_progress_bar_then_what_the_run_does(monkeypatch):
    con, _ = console()
    table = LiveTable(con)
    table.start(info())
    table.epoch(lm_row(1))
    table.progress(1, 7843, lambda: {"loss": 1.83421})
    table.progress(1234, 7843, lambda: {"loss": 9.9})  # read at most every LIVE_RUNNING_S
    shown = rendered(table)
    bar = shown.splitlines()[-1]
    assert bar.startswith("epoch 2/20 ") and "1,234/7,843 batches" in bar and "loss 1.8342" in bar, bar
    assert "ETA" in bar and len(bar) <= 80
    monkeypatch.setattr(live, "LIVE_RUNNING_S", 0.0)
    table.progress(1300, 7843, lambda: {"loss": 1.7})
    assert "loss 1.7000" in rendered(table)
    table.phase("validate", "validating epoch 2")
    assert rendered(table).splitlines()[-1].endswith("validating epoch 2")
    table.epoch(lm_row(2))
    table.phase("test", "testing best.pt (epoch 2) on the test split")
    shown = rendered(table)
    assert shown.splitlines()[-1].endswith("testing best.pt (epoch 2) on the test split")
    assert "batches" not in shown  # no phantom `epoch 3: 0/7843` while testing
    table.finish({})
    assert "testing" not in rendered(table)


def test_train_on_an_80_column_terminal(cli, names_files, monkeypatch):
    monkeypatch.setattr(cli_module, "out", Console(width=80, force_terminal=True, color_system=None, highlight=False))
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    shown = plain(result.stdout)
    assert "…" not in shown
    header = next(line for line in shown.splitlines() if line.startswith("epoch "))
    assert "val acc" in header and "train loss" in header and "best" in header
    assert re.search(r"^\s+2/2\s+\d\.\d{4}\s", shown, re.M), shown
    assert "completed in" in shown


# -- the task's unit -------------------------------------------------------------------------------


@pytest.mark.slow
def test_speed_and_counts_say_the_tasks_unit_not_samples(cli, isolated, monkeypatch):
    """A regressor's speed is values per second, a language model's characters per second: each task's own
    word in the plain lines, the live table, eval's count and the report; the metrics files keep samples_per_s."""
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("train", "smoke/sincos_tiny")
    assert result.exit_code == 0, result.output
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and all(" values/s " in line for line in epoch_lines), epoch_lines
    assert "samples/s" not in result.stdout
    (run,) = run_dirs(isolated)
    assert all("samples_per_s" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    result = cli("eval", "latest")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith("(epoch 2), 800 values"), result.stdout  # 4 streams of 200
    assert cli("report", "latest").exit_code == 0
    assert (
        "values/s</th>" in (run / "report.html").read_text()
        and "samples_<wbr>per_<wbr>s" not in (run / "report.html").read_text()
    )
    lines = screen(in_terminal(["train", "smoke/charlm_tiny", "--set", "train.epochs=1"], 160), 160)
    header = next(line for line in lines if line.startswith("epoch  train loss"))
    assert "chars/s" in header and "samples/s" not in header, "\n".join(lines)


def test_one_line_escapes_and_cuts_between_characters():
    assert live.one_line("to be\n\tor\\not\x01") == "to be\\n\\tor\\\\not\\x01"
    assert live.one_line("ab\ncd", 4) == "ab…"  # `\n` would need two cells: it goes whole
    assert live.one_line("ab\ncd", 5) == "ab\\n…"
    assert live.one_line("日本語", 4) == "日…"  # wide characters count two cells
    assert live.one_line("ohlol", 5) == "ohlol"

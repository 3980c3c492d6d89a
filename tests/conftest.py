"""Shared fixtures: an isolated runs/data environment, a tiny generated names data set, a trained run.

Nothing here reads ../shared or the network: data sets are generated (seeded) into temporary folders.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.hub

from rnnctl.loggers import Logger

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TINY = CONFIGS / "smoke" / "names_tiny.yaml"

torch.set_num_threads(1)  # the machine is shared and small: keep in-process training on one core

# -- environment ---------------------------------------------------------------------------------


def _isolate(mp: pytest.MonkeyPatch, where: Path) -> None:
    runs, data = where / "runs", where / "empty-data"
    data.mkdir(parents=True, exist_ok=True)
    mp.setenv("RNNCTL_RUNS", str(runs))
    mp.setenv("RNNCTL_DATA", str(data))  # an empty folder: nothing local, and never the network
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        mp.delenv(var, raising=False)
    # rich wraps at the console width (80 in a pipe): wide enough that long tmp paths stay on one line.
    # test_cli.py checks the 80-column behaviour on its own.
    mp.setenv("COLUMNS", "1000")
    mp.setattr(torch.hub, "download_url_to_file", _no_network)  # rnnctl's one way to the network is closed


def _no_network(url, dst, *args, **kwargs):
    raise URLError("tests never use the network")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test: runs root and data folder under tmp_path, cwd = tmp_path. Returns the runs root."""
    _isolate(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs"


# -- a tiny generated names data set -------------------------------------------------------------

ROOTS = ["bar", "dim", "kol", "lan", "mer", "pet", "rog", "sal", "tur", "vel", "zan", "gor", "hal", "nor"]
CV = ["ka", "ta", "mi", "ko", "na", "shi", "ro", "yu", "ha", "se", "to", "su"]


def gen_names(n: int, seed: int) -> list[tuple[str, str]]:
    """n (name, label) rows over 4 classes whose spelling gives the class away."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["Slavic", "Gaelic", "Nippon", "Iberic"][i % 4]
        root = rnd.choice(ROOTS) + rnd.choice(["", "a", "i", "e"])
        if label == "Slavic":
            name = root.capitalize() + rnd.choice(["ov", "ski", "ova", "enko"])
        elif label == "Gaelic":
            name = rnd.choice(["Mc", "O'", "Mac"]) + root.capitalize()
        elif label == "Nippon":
            name = "".join(rnd.choice(CV) for _ in range(rnd.randint(2, 3))).capitalize() + rnd.choice(
                ["ko", "ta", "mi"]
            )
        else:
            name = root.capitalize() + rnd.choice(["ez", "es", "ado"])
        rows.append((name, label))
    rnd.shuffle(rows)
    return rows


def write_names(
    path: Path,
    rows: list[tuple[str, ...]],
    header: bool = True,
    gz: bool = False,
    newline: str = "\n",
) -> Path:
    """Write rows as CSV (optionally with a `name,label` header, gzipped, CRLF)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=newline)
    if header:
        w.writerow(["name", "label"])
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def monthly_csv(path: Path, n: int = 96, values=None, header: str = '"Month","Passengers"') -> Path:
    """A seasonal, growing monthly series from 2001-01 (the airline file's layout: CRLF, quoted header)."""
    if values is None:
        values = [round(100 * 1.01**i * (1 + 0.2 * math.sin(2 * math.pi * i / 12)), 1) for i in range(n)]
    lines = [header] + [f'"{2001 + i // 12}-{i % 12 + 1:02d}",{v}' for i, v in enumerate(values)]
    path.write_text("\r\n".join(lines), encoding="utf-8")
    return path


@dataclass
class NamesFiles:
    train: Path
    test: Path

    @property
    def overrides(self) -> list[str]:
        return [f"data.path={self.train}", f"data.test_path={self.test}"]

    def set_args(self) -> list[str]:
        """The same overrides as CLI arguments."""
        return [a for o in self.overrides for a in ("--set", o)]


def make_names_files(folder: Path) -> NamesFiles:
    return NamesFiles(
        train=write_names(folder / "names_train.csv", gen_names(240, seed=1)),
        test=write_names(folder / "names_test.csv", gen_names(60, seed=2)),
    )


@pytest.fixture
def names_files(tmp_path: Path) -> NamesFiles:
    """240 training rows and 60 test rows, 4 learnable classes, under tmp_path/data."""
    return make_names_files(tmp_path / "data")


def tiny_config(files: NamesFiles, *more: str):
    from rnnctl.config import load_config

    return load_config(TINY, [*files.overrides, *more])


# -- one trained run, shared read-only by the tests that only inspect it -------------------------


@dataclass
class TrainedRun:
    dir: Path
    files: NamesFiles
    stdout: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """`rnnctl train` on the tiny config through the real CLI, once per session. Do not modify it:
    copy it with `copy_run` first."""
    from typer.testing import CliRunner

    from rnnctl.cli import app

    base = tmp_path_factory.mktemp("session-run")
    files = make_names_files(base / "data")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, base)
        mp.chdir(base)
        args = ["train", str(TINY), *files.set_args()]
        mp.setattr(sys, "argv", ["rnnctl", *args])  # what run.json records as the command
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = [p for p in (base / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return TrainedRun(runs[0], files, result.stdout)


@pytest.fixture
def copy_run(trained_run: TrainedRun, isolated: Path):
    """A writable copy of the session's trained run inside this test's runs root."""
    isolated.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(trained_run.dir, isolated / trained_run.dir.name))


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture
def cli():
    """Invoke the real `rnnctl` app in-process; returns click's Result (stdout, stderr separate)."""
    from typer.testing import CliRunner

    from rnnctl.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def without_timing(rows: list[dict]) -> list[dict]:
    """Metrics rows without the columns that differ between identical runs (speed, wall time)."""
    from rnnctl.loop import TIMING_KEYS

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def metrics(run_dir: Path) -> list[dict]:
    """A run folder's metrics rows as metrics.jsonl holds them (read here, not through RunFolder), without
    timings: what two runs that should have trained the same must agree on."""
    return without_timing([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])


def run_info(run_dir: Path) -> dict:
    """A run folder's run.json."""
    return json.loads((run_dir / "run.json").read_text())


def members(group: Path) -> list[dict[str, str]]:
    """A sweep's or study's trials.csv: one dict per member."""
    return list(csv.DictReader(io.StringIO((group / "trials.csv").read_text(encoding="utf-8"))))


def pairs(examples) -> list[tuple[str, str]]:
    """A text task's examples as (text, label) pairs."""
    return [(e.text, e.label) for e in examples]


def wait_for(condition, timeout: float = 120, what: str = "the condition", proc: subprocess.Popen | None = None):
    """Poll `condition()` until it returns something true, and return that. Fail after `timeout` seconds, and
    as soon as `proc` (the process that should bring it about) has exited, with what it printed."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited early with {proc.returncode}, waiting for {what}:\n{out}\n{err}")
        if time.monotonic() >= deadline:
            if proc is not None:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{out}\n{err}")
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` ("": every interface)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 1, stderr is one line `error: ...` containing every needle, and no traceback. A run that
    failed after it began training (`train --resume`) said first which run it goes on from: that line is
    not the error."""
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"  # not an uncaught exception
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    err = result.stderr
    assert "Traceback" not in result.output
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].startswith("using run "):
        lines = lines[1:]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -- loggers for in-process training tests ---------------------------------------------------------


class QuietLogger(Logger):
    """The loop's Logger protocol, doing nothing (its defaults): subclass and override what a test watches."""


class CtrlCAtEpoch(QuietLogger):
    """Raises KeyboardInterrupt when it sees epoch `n` (after the disk logger wrote it): Ctrl-C at a boundary."""

    def __init__(self, n: int):
        self.n = n

    def epoch(self, row):
        if row["epoch"] == self.n:
            raise KeyboardInterrupt

    def finish(self, summary):
        self.summary = summary


def assert_lm_trains_and_samples(cli, tmp_path: Path, cell: str) -> None:
    """A 2-layer language model of `cell` trains on a tiny text through the CLI, then `sample` streams text."""
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 60)
    tiny = CONFIGS / "smoke" / "charlm_tiny.yaml"
    result = cli("train", tiny, "--set", f"data.path={text}", "--set", f"model.cell={cell}", "--set", "model.layers=2")
    assert result.exit_code == 0, result.output
    result = cli("sample", "--prompt", "the ", "--length", "20", "--rng-seed", "1")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) >= 20


# -- a real terminal -------------------------------------------------------------------------------


class Terminal:
    """`rnnctl ARGS` in a child process whose stdin, stdout and stderr are a pseudo-terminal `columns` wide
    (COLUMNS unset: rich asks the terminal, as on a user's screen). `shown` is what it printed so far,
    escape sequences and all, with the terminal's CRLF as LF."""

    def __init__(self, args: list[str], columns: int, env: dict[str, str] | None = None):
        import fcntl
        import os
        import pty
        import signal
        import struct
        import termios

        self.primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        environ.pop("COLUMNS", None)

        def child() -> None:  # its own session, the terminal its controlling one: ^C there is SIGINT to it
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnctl", *map(str, args)], stdin=secondary, stdout=secondary, stderr=secondary,
            env=environ, start_new_session=True, preexec_fn=child,
        )  # fmt: skip
        os.close(secondary)
        self.raw = b""

    @property
    def shown(self) -> str:
        return self.raw.decode("utf-8", "replace").replace("\r\n", "\n")

    def read_until(self, predicate, timeout: float = 120) -> str:
        """Read what the child prints until `predicate(shown)` holds or the child closes the terminal; fails
        at the deadline."""
        import os
        import select

        deadline = time.monotonic() + timeout
        while not predicate(self.shown):
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise AssertionError(f"timed out after {timeout}s; shown:\n{self.shown}")
            if not select.select([self.primary], [], [], min(left, 1.0))[0]:
                continue
            try:
                chunk = os.read(self.primary, 65536)
            except OSError:  # the child closed the terminal (EIO)
                chunk = b""
            if not chunk:
                break
            self.raw += chunk
        return self.shown

    def type(self, keys: bytes) -> None:
        """Keys typed at the terminal: b"\\x03" is Ctrl-C (the terminal echoes `^C` and sends SIGINT)."""
        import os

        os.write(self.primary, keys)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Read to the end; the exit code and everything shown."""
        self.read_until(lambda _: False, timeout)  # to the end: the child closed the terminal
        code = self.proc.wait(timeout=timeout)
        self.close()
        return code, self.shown

    def close(self) -> None:
        import os

        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.close(self.primary)
        except OSError:
            pass


def screen(shown: str, columns: int) -> list[str]:
    """The lines a terminal `columns` wide holds after `shown` (what a Terminal read): enough of a VT100 for
    rich's live display: text with auto-wrap (a character past the last column starts the next line), \\r,
    \\n, backspace, cursor up/down/left/right, erase in line; colours and modes ignored."""
    lines: list[list[str]] = [[]]
    row = col = 0
    pending = False  # the cursor sits past the last column: the next character wraps first
    for m in re.finditer(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|(.)", shown, re.S):
        args, op, ch = m.group(1), m.group(2), m.group(3)
        n = int(args) if args and args.isdigit() else 1
        if op == "A":
            row, pending = max(row - n, 0), False
        elif op == "B":
            row, pending = row + n, False
        elif op == "C":
            col, pending = min(col + n, columns - 1), False
        elif op == "D":
            col, pending = max(col - n, 0), False
        elif op == "K":
            line = lines[row] if row < len(lines) else []
            lines[row] = [] if args == "2" else line[:col] if args in ("", "0") else [" "] * col + line[col:]
        elif op is not None or ch is None:
            continue  # colours, modes, titles
        elif ch == "\r":
            col, pending = 0, False
        elif ch == "\n":
            row, col, pending = row + 1, 0, False  # the pty turns \n into \r\n
        elif ch == "\b":
            col, pending = max(col - 1, 0), False
        elif ch.isprintable():
            if pending:
                row, col, pending = row + 1, 0, False
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
            if col == columns:
                col, pending = columns - 1, True
        while len(lines) <= row:
            lines.append([])
    return ["".join(line).rstrip() for line in lines]


def in_terminal(args: list[str], columns: int, timeout: float = 120) -> str:
    """Run `rnnctl ARGS` to its end on a terminal `columns` wide; what it showed (exit code 0 asserted)."""
    term = Terminal(args, columns)
    code, shown = term.finish(timeout)
    assert code == 0, shown
    return shown


class Spy(torch.nn.Module):
    """A classifier that predicts every class alike and keeps what it was given: `seen`, a list of (x, lengths)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.seen = classes, []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, lengths):
        from rnnctl.models import Output

        self.seen.append((x.clone(), lengths.clone()))
        return Output(torch.zeros(len(x), self.classes), None)


def stop(proc: subprocess.Popen, signum: int, timeout: float = 120) -> tuple[str, str]:
    """Send `proc` a stop signal and wait for it to end; its stdout and stderr. Killed if it outlives `timeout`."""
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The names model's training loss is NaN at its `step`th training forward pass of this process."""
    from rnnctl.models import RecurrentClassifier

    original, calls = RecurrentClassifier.forward, {"train": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == step:
                return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(RecurrentClassifier, "forward", forward)

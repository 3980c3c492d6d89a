"""What the user watches while a run trains: on a terminal a rich live table with a `rich.progress` bar
beneath it, elsewhere plain lines. Both are loggers (loggers.Logger) and read the same rows.

Tables here and in views.py narrow to the terminal by dropping their least important columns
(`fit_table`), never by cutting a number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.constrain import Constrain
from rich.live import Live
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.spinner import Spinner
from rich.table import Column, Table
from rich.text import Text

from rnnctl.loggers import Logger, Running

PLAIN_PROGRESS_S = 30.0  # not a terminal: a progress line inside an epoch at most this often
LIVE_RUNNING_S = 1.0  # a terminal: the running training loss is read back from the device this often
MIN_BAR = 10  # the progress bar's least width; the figures beside it give way first
WRAP_MIN = 10  # a column of free text needs this much room; it wraps within what is left
ECHO_ROOM = 2  # the live display leaves the terminal's last columns free: Ctrl-C's echo `^C` must not wrap
# its last line, or the next redraw starts one line low and leaves the table's header on the screen twice
CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "mingru": "minGRU", "minlstm": "minLSTM"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "lr":
        return f"{value:.2e}"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def speed_label(unit: str | None) -> str:
    """What `samples_per_s` is shown as: `chars/s`, `names/s`, `values/s` (the task's unit; `samples/s` for a
    run.json that names none)."""
    return f"{unit or 'samples'}/s"


def epoch_label(row: dict[str, Any]) -> str:
    """`3` at the end of epoch 3; `2.50` halfway through it (a `train.eval_every` row)."""
    return f"{row['epoch_fraction']:.2f}" if row.get("partial") else str(row["epoch"])


def print_path(console: Console, label: str, path: Any) -> None:
    """`label path` on one line, or, on a terminal too narrow for it, the label and then the path alone on the
    next line: a path shares its line with nothing that a wrap could break (a pipe keeps one line)."""
    if console.is_terminal and cell_len(f"{label} {path}") > console.width:
        console.print(label, markup=False, highlight=False)
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"{label} {path}", markup=False, highlight=False, soft_wrap=True)


def print_names(console: Console, label: str, names: list[str]) -> None:
    """`label a, b, c`: on a terminal wrapped between names, never inside one; a pipe keeps one line."""
    text = Text(f"{label} {', '.join(names)}")
    console.print(text, soft_wrap=not console.is_terminal, overflow="fold")


ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}  # a backslash doubled: `\\n` is the text's own


def one_line(text: str, width: int | None = None) -> str:
    """A preview (a sample, a predicted string) as one line, the same in a pipe and on a terminal: a newline
    shown as `\\n`, a tab `\\t`, a backslash `\\\\`, any other control character `\\xNN`; no quotes. With
    `width`, cut to that many cells with `…`, between two characters, never inside an escape."""
    pieces = [
        ESCAPES.get(ch) or (ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")) for ch in text
    ]
    if width is None or sum(map(cell_len, pieces)) <= width:
        return "".join(pieces)
    kept, used = [], 1  # room for the `…`
    for piece in pieces:
        if used + cell_len(piece) > width:
            break
        kept.append(piece)
        used += cell_len(piece)
    return "".join(kept) + "…"


def metric_columns(row: dict[str, Any]) -> list[str]:
    """train_* then val_* metrics, in the row's order."""
    return [k for k in row if k.startswith("train_")] + [k for k in row if k.startswith("val_")]


# -- what will run ---------------------------------------------------------------------------------


def data_sizes(derived: dict[str, Any], sizes: dict[str, int]) -> str:
    """`18,063 train / 2,007 val / 2,000 test examples`: the first per-split count among the data's own facts
    (examples, characters, rows, values: the task's word), else the length of each split."""
    for unit, counts in derived.items():
        if (
            isinstance(counts, dict)
            and "train" in counts
            and set(counts) <= set(sizes)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values())
        ):
            return " / ".join(f"{v:,} {k}" for k, v in counts.items()) + f" {unit}"
    return " / ".join(f"{v:,} {k}" for k, v in sizes.items())


def describe(info: dict[str, Any]) -> str:
    """One line of what will run: task and data, model and parameters, epochs, device and threads."""
    sizes = data_sizes(info.get("derived") or {}, info.get("sizes") or {})
    model = (info.get("config") or {}).get("model") or {}
    cell = CELLS.get(str(model.get("cell")), model.get("cell"))
    net = f"{'bidirectional ' if model.get('bidirectional') else ''}{cell}, " if cell else ""
    done = info.get("epochs_done") or 0
    epochs = f"{info['epochs']} epoch{'' if info['epochs'] == 1 else 's'}" + (f" ({done} done)" if done else "")
    ranks = info.get("ranks") or [{}]
    where = str(ranks[0].get("device") or info.get("device"))  # this session's (a resume may move the run)
    world, threads = info.get("world_size") or 1, info.get("threads")
    if world > 1:
        where += f", {world} processes"
    if threads:
        where += f"{' x ' if world > 1 else ', '}{threads} thread{'' if threads == 1 else 's'}"
    head = f"{info['task']}: {sizes}" if sizes else str(info["task"])
    return " · ".join([head, f"{net}{info['parameters']:,} parameters", epochs, where])


class _Clock:
    """Elapsed and ETA from the epochs done so far in this session (validation included in the pace)."""

    def __init__(self) -> None:
        self.epochs = self.first_epoch = 0
        self.t0 = time.perf_counter()

    def start(self, info: dict[str, Any]) -> None:
        self.epochs = info["epochs"]
        self.first_epoch = info.get("epochs_done", 0)
        self.t0 = time.perf_counter()

    def eta(self, row: dict[str, Any]) -> float | None:
        done = row.get("epoch_fraction", row["epoch"]) - self.first_epoch
        return (time.perf_counter() - self.t0) / done * (self.epochs - row["epoch"]) if done > 0 else None

    def run_eta(self, epoch: int, fraction: float, epoch_left: float | None = None) -> float | None:
        """Seconds left in the run while `fraction` of epoch `epoch` is trained: what is left of this epoch
        (`epoch_left`, the ETA shown beside it, else at the session's pace) and the epochs after it at the
        session's pace. Never less than `epoch_left`: the run ends with its last epoch, not before."""
        done = epoch - 1 + fraction - self.first_epoch
        if done <= 0:
            return epoch_left
        per_epoch = (time.perf_counter() - self.t0) / done
        this = epoch_left if epoch_left is not None else per_epoch * (1 - fraction)
        return this + per_epoch * max(self.epochs - epoch, 0)


def rate(per_s: float | None, unit: str = "/s") -> str:
    """Batches per second (`12.3/s`), or seconds per batch when they are slow."""
    if not per_s:
        return "-"
    return f"{per_s:,.1f}{unit}" if per_s >= 0.1 else f"{1 / per_s:,.0f} s/batch"


# -- tables that fit -------------------------------------------------------------------------------


@dataclass
class Col:
    """One column of a table that must fit the terminal."""

    header: str
    cells: list[str | Text]
    keep: int = 0  # lower: kept longer when the table must narrow
    justify: str = "right"
    wraps: bool = False  # free text (never a number) that may wrap onto more lines; fitted at WRAP_MIN


def cell_width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def fit_table(width: int, cols: list[Col], styles: list[str | None] | None = None) -> Table:
    """A table of the columns that fit `width` characters: the least important columns are dropped whole
    (the first kept is always there); a number is never cut, free text wraps."""
    need = []
    for c in cols:
        natural = max([cell_width(c.header), *map(cell_width, c.cells)])
        need.append(min(natural, WRAP_MIN) if c.wraps else natural)
    chosen: set[int] = set()
    used = -2  # no padding at the edges, two spaces between columns
    for i in sorted(range(len(cols)), key=lambda i: cols[i].keep):
        if chosen and used + need[i] + 2 > width:
            break
        chosen.add(i)
        used += need[i] + 2
    kept = [c for i, c in enumerate(cols) if i in chosen]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in kept:
        table.add_column(Text(c.header), justify=c.justify, no_wrap=not c.wraps, overflow="fold")  # type: ignore[arg-type]
    for r in range(len(cols[0].cells) if cols else 0):
        cells = [c.cells[r] if isinstance(c.cells[r], Text) else Text(str(c.cells[r])) for c in kept]
        table.add_row(*cells, style=styles[r] if styles else None)
    return table


# -- plain lines -----------------------------------------------------------------------------------


class PlainLines(Logger):
    """For pipes, files and CI logs: what will run, a progress line at most every PLAIN_PROGRESS_S inside an
    epoch, one line per epoch, and a line when the best checkpoint is tested."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.clock = _Clock()
        self.every = PLAIN_PROGRESS_S
        self.last = time.monotonic()  # when a line was last printed
        self.current = 1  # the epoch being trained
        self.speed = speed_label(None)
        self.epoch_t0: tuple[float, int] | None = None  # (time, batches) when the epoch's first batch was seen

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.last = time.monotonic()

    def start(self, info: dict[str, Any]) -> None:
        self.clock.start(info)
        self.current = self.clock.first_epoch + 1
        self.speed = speed_label(info.get("unit"))
        self._print(f"run {info['id']} -> {info['dir']}")
        self._print(describe(info))

    def progress(self, done: int, total: int, running: Running | None = None) -> None:
        now = time.monotonic()
        if self.epoch_t0 is None or done < self.epoch_t0[1]:
            self.epoch_t0 = (now, done)
        if now - self.last < self.every or done >= total:  # the epoch's line comes at its end
            return
        t0, first = self.epoch_t0
        per_s = (done - first) / (now - t0) if now > t0 and done > first else None
        parts = [
            f"epoch {self.current}/{self.clock.epochs}: batch {done:,}/{total:,} ({done / total:.0%})",
            rate(per_s, " batches/s"),
        ]
        loss = running().get("loss") if running is not None else None
        if loss is not None:
            parts.append(f"train loss {loss:.4f}")
        epoch_left = (total - done) / per_s if per_s else None
        parts.append(f"epoch ETA {fmt_duration(epoch_left)}")
        parts.append(f"run ETA {fmt_duration(self.clock.run_eta(self.current, done / total, epoch_left))}")
        self._print(", ".join(parts))

    def phase(self, name: str, text: str) -> None:
        if name != "validate":  # every epoch validates, and its line follows at once
            self._print(text)

    def epoch(self, row: dict[str, Any]) -> None:
        parts = [f"epoch {epoch_label(row)}/{self.clock.epochs}"]
        parts += [f"{k} {fmt_value(k, row[k])}" for k in metric_columns(row)]
        parts += [f"lr {fmt_value('lr', row['lr'])}"]
        if not row.get("partial"):
            parts += [
                f"grad_norm {row['grad_norm']:.3f}",
                f"{row['samples_per_s']:,.0f} {self.speed}",
                f"elapsed {fmt_duration(row['elapsed'])}",
                f"eta {fmt_duration(self.clock.eta(row))}",
            ]
            self.current, self.epoch_t0 = row["epoch"] + 1, None
        parts += [f"best {row['best_epoch']}" + (" *" if row["best_epoch"] == row["epoch"] else "")]
        self._print("  ".join(parts))
        if "preview" in row:
            self._print(f"  preview: {one_line(row['preview'])}")  # a pipe has no width: whole


# -- the live table --------------------------------------------------------------------------------


class _Figures(ProgressColumn):
    """Beside the bar: batches, rate, the epoch's and the run's ETA, running loss, as many as fit."""

    def __init__(self, display: LiveTable):
        super().__init__(table_column=Column(no_wrap=True))
        self.display = display

    def render(self, task: Task) -> Text:
        d = self.display
        done, total = int(task.completed), int(task.total or 0)
        pieces = [  # (figure, rank: lower is kept longer)
            (f"{done:,}/{total:,} batches", 0),
            (rate(task.speed), 4),
            (f"ETA {fmt_duration(task.time_remaining)}", 1),
            (
                f"run ETA {fmt_duration(d.clock.run_eta(d.current, done / total if total else 0.0, task.time_remaining))}",
                3,
            ),
            (f"loss {d.loss:.4f}" if d.loss is not None else "loss -", 2),
        ]
        room = d.width - cell_len(str(task.description)) - 2 - MIN_BAR
        kept: set[int] = set()
        used = -2
        for i in sorted(range(len(pieces)), key=lambda i: pieces[i][1]):
            if used + cell_len(pieces[i][0]) + 2 > room:
                break
            kept.add(i)
            used += cell_len(pieces[i][0]) + 2
        return Text("  ".join(p for i, (p, _) in enumerate(pieces) if i in kept))


class LiveTable(Logger):
    """A rich table that grows by one row per epoch, with the epoch's progress bar beneath it, or a line
    saying what the run does instead (validating, testing the best checkpoint, drawing plots)."""

    def __init__(self, console: Console):
        self.console = console
        self.clock = _Clock()
        self.rows: list[dict[str, Any]] = []
        self.monitor = "val_loss"
        self.speed = speed_label(None)
        self.current = 1  # the epoch being trained
        self.doing: str | None = None  # a phase's text, shown instead of the bar
        self.loss: float | None = None  # the epoch's running training loss
        self.read_at = 0.0
        self.bar = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=None),
            _Figures(self),
            console=console,
            auto_refresh=False,  # never started: drawn inside the Live below
            expand=True,
        )
        self.task: TaskID | None = None
        self.live: Live | None = None
        self.width = console.width  # of the latest drawing

    def start(self, info: dict[str, Any]) -> None:
        self.clock.start(info)
        self.monitor = info.get("monitor") or self.monitor
        self.speed = speed_label(info.get("unit"))
        self.current = self.clock.first_epoch + 1
        print_path(self.console, f"run {info['id']} ->", info["dir"])
        self.console.print(Text(describe(info)))
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def progress(self, done: int, total: int, running: Running | None = None) -> None:
        self.doing = None
        if self.task is None:
            self.task = self.bar.add_task(f"epoch {self.current}/{self.clock.epochs}", total=total)
            self.loss, self.read_at = None, 0.0
        now = time.monotonic()
        if running is not None and now - self.read_at >= LIVE_RUNNING_S:
            self.loss, self.read_at = running().get("loss"), now
        self.bar.update(self.task, completed=done, total=total)

    def phase(self, name: str, text: str) -> None:
        self.doing = text
        if self.live is not None:
            self.live.refresh()

    def epoch(self, row: dict[str, Any]) -> None:
        self.rows.append({**row, "eta": self.clock.eta(row)})
        if not row.get("partial"):
            self.current = row["epoch"] + 1
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
        if self.live is not None:
            self.live.refresh()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.live is not None:
            self.doing = None
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            self.live.refresh()
            self.live.stop()
            self.live = None

    def table(self) -> Table:
        """The last rows that fit the screen, in the columns that fit its width: epoch, the validation metric
        that picks the best epoch, the losses and the best epoch stay; lr, gradient norm, speed, elapsed
        go first."""
        rows = self.rows[-max(self.console.height - 8, 5) :]
        best = self.rows[-1]["best_epoch"]
        monitor, trained = self.monitor, "train_" + self.monitor.removeprefix("val_")

        def keep(k: str) -> int:
            order = {monitor: 1, "train_loss": 2, "val_loss": 3, trained: 5}
            return order.get(k, 6 if k.startswith("val_") else 7)

        cols = [Col("epoch", [f"{epoch_label(r)}/{self.clock.epochs}" for r in rows], 0)]
        cols += [
            Col(k.replace("_", " "), [fmt_value(k, r.get(k)) for r in rows], keep(k)) for k in metric_columns(rows[0])
        ]
        cols += [
            Col("lr", [fmt_value("lr", r["lr"]) for r in rows], 10),
            Col("grad norm", [fmt_value("grad_norm", r.get("grad_norm")) for r in rows], 11),
            Col(self.speed, [fmt_value("samples_per_s", r.get("samples_per_s")) for r in rows], 12),
            Col("elapsed", [fmt_duration(r["elapsed"]) for r in rows], 9),
            Col("ETA", [fmt_duration(r["eta"]) for r in rows], 8),
            Col("best", [str(r["best_epoch"]) for r in rows], 4),
        ]
        styles = ["bold green" if r["epoch"] == best and not r.get("partial") else None for r in rows]
        return fit_table(self.width, cols, styles)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.width = max(options.max_width - ECHO_ROOM, 20)
        parts: list[Any] = [self.table()] if self.rows else []
        if self.rows and "preview" in self.rows[-1]:
            label = f"preview (epoch {epoch_label(self.rows[-1])}): "
            text = one_line(self.rows[-1]["preview"], max(self.width - cell_len(label), 1))
            parts.append(Text(label, style="bold") + Text(text, no_wrap=True))
        if self.doing:
            parts.append(Spinner("dots", Text(self.doing, style="dim")))
        elif self.task is not None:
            parts.append(self.bar)
        yield Constrain(Group(*parts), self.width)

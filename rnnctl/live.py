"""What the user watches while a run trains: a rich live table on a terminal, plain lines elsewhere.

Both implement the Logger protocol of loggers.py (start, progress, epoch, finish) and read the same rows.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


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


def epoch_label(row: dict[str, Any]) -> str:
    """`3` at the end of epoch 3; `2.50` halfway through it (a `train.eval_every` row)."""
    return f"{row['epoch_fraction']:.2f}" if row.get("partial") else str(row["epoch"])


def metric_columns(row: dict[str, Any]) -> list[str]:
    """train_* then val_* metrics, in the row's order."""
    return [k for k in row if k.startswith("train_")] + [k for k in row if k.startswith("val_")]


class _Clock:
    """Elapsed and ETA from epochs done so far."""

    def __init__(self) -> None:
        self.epochs = 0
        self.t0 = time.perf_counter()

    def start(self, info: dict[str, Any]) -> None:
        self.epochs = info["epochs"]
        self.first_epoch = info.get("epochs_done", 0)
        self.t0 = time.perf_counter()

    def eta(self, row: dict[str, Any]) -> float | None:
        done = row.get("epoch_fraction", row["epoch"]) - self.first_epoch
        return (time.perf_counter() - self.t0) / done * (self.epochs - row["epoch"]) if done > 0 else None


class PlainLines:
    """One line per epoch, for pipes, files and CI logs."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.clock = _Clock()

    def start(self, info: dict[str, Any]) -> None:
        self.clock.start(info)
        print(
            f"run {info['id']}: task {info['task']}, {info['parameters']:,} parameters, device {info['device']}, "
            f"{info['epochs']} epochs -> {info['dir']}",
            file=self.stream,
            flush=True,
        )

    def progress(self, done: int, total: int) -> None:
        pass

    def steps(self, rows: list[dict[str, Any]]) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        parts = [f"epoch {epoch_label(row)}/{self.clock.epochs}"]
        parts += [f"{k} {fmt_value(k, row[k])}" for k in metric_columns(row)]
        parts += [f"lr {fmt_value('lr', row['lr'])}"]
        if not row.get("partial"):
            parts += [
                f"grad_norm {row['grad_norm']:.3f}",
                f"{row['samples_per_s']:,.0f} samples/s",
                f"elapsed {fmt_duration(row['elapsed'])}",
                f"eta {fmt_duration(self.clock.eta(row))}",
            ]
        parts += [f"best {row['best_epoch']}" + (" *" if row["best_epoch"] == row["epoch"] else "")]
        print("  ".join(parts), file=self.stream, flush=True)
        if "preview" in row:
            print(f"  preview: {row['preview']!r}", file=self.stream, flush=True)

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class LiveTable:
    """A rich table that grows by one row per epoch, with the current epoch's progress beneath it."""

    def __init__(self, console: Console):
        self.console = console
        self.clock = _Clock()
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.done = self.total = 0
        self.live: Live | None = None

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self.clock.start(info)
        self.console.print(
            f"[bold]run[/] {info['id']}  task [cyan]{info['task']}[/]  {info['parameters']:,} parameters  "
            f"device {info['device']}  -> {info['dir']}"
        )
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def steps(self, rows: list[dict[str, Any]]) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        row = {**row, "eta": self.clock.eta(row)}
        self.rows.append(row)
        if not row.get("partial"):
            self.done = 0
        if self.live is not None:
            self.live.refresh()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.live is not None:
            self.total = 0
            self.live.refresh()
            self.live.stop()
            self.live = None

    def __rich__(self) -> Group:
        table = Table(box=None, header_style="bold", pad_edge=False)
        metrics = metric_columns(self.rows[0]) if self.rows else []
        table.add_column("epoch", justify="right")
        for k in metrics:
            table.add_column(k.replace("_", " "), justify="right")
        for name in ("lr", "grad norm", "samples/s", "elapsed", "ETA", "best"):
            table.add_column(name, justify="right")
        best = self.rows[-1]["best_epoch"] if self.rows else None
        height = max(self.console.height - 8, 5)
        for row in self.rows[-height:]:
            is_best = row["epoch"] == best and not row.get("partial")
            table.add_row(
                f"{epoch_label(row)}/{self.clock.epochs}",
                *[fmt_value(k, row.get(k)) for k in metrics],
                fmt_value("lr", row["lr"]),
                fmt_value("grad_norm", row.get("grad_norm")),
                fmt_value("samples_per_s", row.get("samples_per_s")),
                fmt_duration(row["elapsed"]),
                fmt_duration(row["eta"]),
                f"{row['best_epoch']}",
                style="bold green" if is_best else None,
            )
        parts: list[Any] = [table]
        if self.rows and "preview" in self.rows[-1]:
            parts.append(
                Text(f"preview (epoch {self.rows[-1]['epoch']}): ", style="bold") + Text(self.rows[-1]["preview"])
            )
        if self.total:
            width = 30
            filled = int(width * self.done / self.total)
            epoch = sum(not r.get("partial") for r in self.rows) + self.clock.first_epoch + 1
            parts.append(
                Text(
                    f"epoch {epoch}: [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} batches",
                    style="dim",
                )
            )
        return Group(*parts)

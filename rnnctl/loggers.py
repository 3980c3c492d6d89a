"""The logger protocol and its writers: what the training loop tells whoever watches.

Every logger sees the same rows (the metrics files, TensorBoard, the live table and plain lines of
live.py), so no two of them can disagree.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from rnnctl.errors import ConfigError
from rnnctl.runs import RunFolder

Running = Callable[[], dict[str, float]]  # the current epoch's training metrics so far


class Logger(Protocol):
    """What the loop tells whoever watches, in this order: start, then per epoch progress (per batch),
    phase (validating), steps and epoch (its row), and at the end phase (testing, plotting) and finish.
    A logger subclasses it to inherit a no-op for each event it does not watch."""

    def start(self, info: dict[str, Any]) -> None:
        """run.json's record, plus `dir`, `monitor`, `config`, `derived` (the data's facts), `sizes` (per split)."""

    def progress(self, done: int, total: int, running: Running | None = None) -> None:
        """`done` of `total` batches of the current epoch; `running()` reads the epoch's training metrics
        so far back from the device: call it now and then, not at every batch."""

    def phase(self, name: str, text: str) -> None:
        """The run does something other than training: `validate`, `test` (the best checkpoint) or `plot`;
        `text` says it in words. Training again is the next `progress`."""

    def steps(self, rows: list[dict[str, Any]]) -> None:
        """Every optimizer step of an epoch: step, loss, grad_norm."""

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics row: the end of an epoch, or a `train.eval_every` point inside one (`partial`)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended (completed, interrupted or failed); may be called once more than needed."""


class MetricsFiles(Logger):
    """The disk logger: metrics.jsonl (and .csv) gets each row, steps.csv each epoch's steps."""

    def __init__(self, run: RunFolder):
        self.run = run

    def steps(self, rows: list[dict[str, Any]]) -> None:
        self.run.append_steps(rows)

    def epoch(self, row: dict[str, Any]) -> None:
        self.run.append_row(row)


# -- TensorBoard ---------------------------------------------------------------------------------
# Tags are grouped the way TensorBoard lays out cards: `train/loss` and `val/loss`, `step/grad_norm`,
# `test/acc`. Events go to RUN/tensorboard; `tensorboard --logdir runs/` shows every run side by side.

NOT_SCALARS = {"epoch", "step", "best_epoch", "partial"}  # the x axis and bookkeeping, not curves


def check_installed() -> None:
    """Fail before any run folder exists when the extra is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the `tensorboard` package)
    except ImportError:
        raise ConfigError(
            "log.tensorboard: the TensorBoard extra is not installed "
            "(pip install 'rnnctl[tensorboard]', or set log.tensorboard: false)"
        ) from None


def tag(key: str) -> str:
    for split in ("train", "val"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1 :]}"
    return f"run/{key}"


class TensorBoardLog(Logger):
    """TensorBoard event files (`log.tensorboard: true`, extra `rnnctl[tensorboard]`)."""

    def __init__(self, run: RunFolder, resume_step: int | None = None):
        check_installed()
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        # on resume, events logged past the checkpoint (an unfinished epoch trained again) are purged
        purge = resume_step + 1 if resume_step is not None else None
        self.writer: Any = SummaryWriter(log_dir=str(run.tensorboard_dir), purge_step=purge)
        self.last_step = resume_step or 0

    def start(self, info: dict[str, Any]) -> None:
        config = self.run.config_text()
        command = info.get("command", "")
        text = f"`{command}`\n\n" + "\n".join("    " + line for line in config.splitlines())  # markdown code block
        self.writer.add_text("config", text, self.last_step)

    def steps(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.writer.add_scalar("step/loss", r["loss"], r["step"])
            self.writer.add_scalar("step/grad_norm", r["grad_norm"], r["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        step = row["step"]
        self.last_step = step
        for key, value in row.items():
            if key in NOT_SCALARS or isinstance(value, (bool, str)) or value is None:
                continue
            self.writer.add_scalar(tag(key), value, step)
        if "preview" in row:
            self.writer.add_text("preview", "    " + row["preview"].replace("\n", "\n    "), step)
        self.writer.flush()  # a row is on disk as soon as the table shows it

    def finish(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in (summary.get("test") or {}).items():
            if not isinstance(value, bool) and isinstance(value, (int, float)) and key != "n":
                self.writer.add_scalar(f"test/{key}", value, self.last_step)
        self.writer.close()
        self.writer = None

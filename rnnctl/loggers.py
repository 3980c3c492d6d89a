"""The logger protocol and its writers: what the training loop tells whoever watches.

Every logger sees the same rows (the metrics files, TensorBoard, the live table and plain lines of
live.py), so no two of them can disagree.
"""

from __future__ import annotations

from typing import Any, Protocol

from rnnctl.errors import ConfigError
from rnnctl.runs import RunFolder


class Logger(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...

    def progress(self, done: int, total: int) -> None: ...  # batches done in the current epoch

    def steps(self, rows: list[dict[str, Any]]) -> None: ...  # every optimizer step of an epoch: loss, grad_norm

    def epoch(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class MetricsFiles:
    """The disk logger: metrics.jsonl (and .csv) gets each row, steps.csv each epoch's steps."""

    def __init__(self, run: RunFolder):
        self.run = run

    def start(self, info: dict[str, Any]) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def steps(self, rows: list[dict[str, Any]]) -> None:
        self.run.append_steps(rows)

    def epoch(self, row: dict[str, Any]) -> None:
        self.run.append_row(row)

    def finish(self, summary: dict[str, Any]) -> None:
        pass


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


class TensorBoardLog:
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

    def progress(self, done: int, total: int) -> None:
        pass

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

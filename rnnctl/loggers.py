"""The logger protocol and its writers: what the training loop tells whoever watches.

Every logger sees the same rows (the metrics files, TensorBoard, MLflow, the live table and plain lines of
live.py), so no two of them can disagree.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator, Protocol

from rnnctl.config import flatten, plain
from rnnctl.errors import ConfigError, RunError, first_line
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
        self.config: dict[str, Any] | None = None

    def start(self, info: dict[str, Any]) -> None:
        self.config = info["config"]  # the HParams view's hyperparameters, written at the end
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
        metrics: dict[str, float] = {}
        for key, value in (summary.get("test") or {}).items():
            if not isinstance(value, bool) and isinstance(value, (int, float)) and key != "n":
                metrics[f"test/{key}"] = value
        best = summary.get("best") or {}
        if isinstance(best.get("value"), (int, float)):
            metrics[f"best/{best['metric']}"] = best["value"]  # the monitored validation metric at the best epoch
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.last_step)
        if self.config is not None:
            self._hparams(metrics)
        self.writer.close()
        self.writer = None

    def _hparams(self, metrics: dict[str, float]) -> None:
        """The HParams view: the config's scalars (dotted keys) against the test and best metrics. Written into
        the run's own event files, so `tensorboard --logdir runs/` shows one row per run."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v for k, v in flatten(self.config).items() if isinstance(v, (bool, int, float, str))}
        for part in hparams(values, metrics):  # the experiment, the session's start (the values), its end
            self.writer.file_writer.add_summary(part)


# -- MLflow --------------------------------------------------------------------------------------
# One MLflow run per rnnctl run: experiment = the config's name (or the task), run name = the run id, params =
# the resolved config under dotted keys, a metric per numeric column of each row (step = the optimizer step),
# `test_*` at the end. The store is RUN/mlflow unless `log.mlflow_uri` names one (a server, a database).

MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}
MAX_PARAMS = 100  # MLflow's limit per log_batch call


def check_mlflow_installed() -> None:
    """Fail before any run folder exists when the extra is missing."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "log.mlflow: the MLflow extra is not installed (pip install 'rnnctl[mlflow]', or set log.mlflow: false)"
        ) from None


class MLflowLog(Logger):
    """MLflow tracking (`log.mlflow: true`, extra `rnnctl[mlflow]`). `previous` is run.json's `mlflow` record of
    a resumed run: its MLflow run goes on. `record` is what run.json keeps of it."""

    def __init__(self, run: RunFolder, uri: str | None, experiment: str, previous: dict[str, Any] | None = None):
        check_mlflow_installed()
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not the user's news
            logging.getLogger(name).setLevel(logging.WARNING)
        self.run, self.errors = run, MlflowException
        artifacts = None
        if uri is None:
            uri, artifacts = run.mlflow_store()  # the folder's own, wherever it was moved
        self.last_step, self.fresh, self.ended = 0, True, False
        with self._talking(uri):
            self.client: Any = MlflowClient(tracking_uri=uri)
            run_id = (previous or {}).get("run_id")
            if run_id and self._exists(run_id):
                self.fresh = False
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment_id = self._experiment(experiment, artifacts)
                run_id = self.client.create_run(experiment_id, run_name=run.id).info.run_id
        self.uri, self.run_id = uri, run_id
        self.record = {"run_id": run_id, "uri": uri}

    @contextlib.contextmanager
    def _talking(self, uri: str) -> Iterator[None]:
        """MLflow's errors (a server away, a broken store) as one line naming the store."""
        try:
            yield
        except (self.errors, OSError) as e:  # OSError: a local store that cannot be made
            first = first_line(e)
            raise RunError(f"log.mlflow: {uri}: {first[:300]}") from None

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except self.errors:
            return False
        return True

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except self.errors:  # another run created it meanwhile (sweep workers on one server)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, info: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        tags = [RunTag("rnnctl.dir", info["dir"]), RunTag("rnnctl.task", str(info.get("task")))]
        with self._talking(self.uri):
            self.client.log_batch(self.run_id, tags=tags)
            if not self.fresh:  # a resume: `--epochs` may change a param, and MLflow refuses a changed one
                return
            params = [Param(k, plain(v)[:6000]) for k, v in flatten(info["config"]).items()]
            for i in range(0, len(params), MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])

    def epoch(self, row: dict[str, Any]) -> None:
        self.last_step = row["step"]
        self._metrics({k: v for k, v in row.items() if k not in NOT_SCALARS}, row["step"])

    def _metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        with self._talking(self.uri):
            for i in range(0, len(metrics), 1000):  # MLflow's limit per call
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, summary: dict[str, Any]) -> None:
        if self.ended:
            return
        self.ended = True
        test = {f"test_{k}": v for k, v in (summary.get("test") or {}).items() if k != "n"}
        status = summary.get("status")
        self._metrics(test, self.last_step)
        with self._talking(self.uri):
            self.client.set_tag(self.run_id, "rnnctl.status", str(status))
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))  # "running": it died

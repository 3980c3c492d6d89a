"""The one training loop, for every task; it never names a task.

`train` starts a run in a new run folder, `resume` goes on with one from its last checkpoint; `Trainer.fit`
trains epoch by epoch, validates, and hands each validation and the end of the run to the callbacks
(checkpoints, early stopping, the run record, the final test, plots) and its rows to the loggers (metrics
files, TensorBoard, the live display).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from rnnctl import distributed
from rnnctl.callbacks import Callback, Point, RunRecord, StepCheckpoints, check_loggers, default_callbacks, disk_loggers
from rnnctl.callbacks import restore, resume_point, trackers
from rnnctl.config import Config
from rnnctl.errors import DataError, DivergedError
from rnnctl.loggers import Logger
from rnnctl.locks import FolderLock, NoLock
from rnnctl.runs import RunFolder
from rnnctl.runtime import deferred_interrupt, keep_freed_memory, make_precision, pick_device, rng_states
from rnnctl.runtime import set_backends, set_seed, stop_signals
from rnnctl.schedules import EarlyStopping, LRSchedule
from rnnctl.tasks import get_task
from rnnctl.tasks.base import Meter, Previews
from rnnctl.training import EpochProgress, evaluate, make_optimizer, placed, train_epoch, WeightAverage

TIMING_KEYS = ("samples_per_s", "epoch_time", "elapsed")  # the only metrics that differ between identical runs


class _EndNow(Exception):
    """A callback set `trainer.end_now`: the run ends at this validation with that status (a pruned trial)."""


class Trainer:
    """A training run: the task's data and model, the optimizer and schedule, progress, callbacks; `open`
    gives it its run folder, loggers and record."""

    def __init__(self, cfg: Config, callbacks: list[Callback] = (), meta: dict[str, Any] | None = None):
        """Everything but the run folder; `callbacks` come after the default ones (a group's pruning); `meta` (a
        checkpoint's vocabulary and classes) for a resumed run."""
        self.cfg = cfg
        self.task = get_task(cfg.task)
        check_loggers(cfg)  # a missing extra is a one-line error before any run folder exists
        set_seed(cfg.train.seed)
        self.device = pick_device(cfg.train.device)
        self.precision = make_precision(cfg.train.precision, self.device)  # unsupported: an error before any folder
        self.math = set_backends(self.device, cfg.train.tf32, cfg.train.deterministic)  # what run.json records
        self.math["malloc_keeps_freed"] = keep_freed_memory()  # before the data and the model allocate
        self.data = self.task.prepare(cfg, meta)  # user data errors surface here, before any run folder exists
        for name, split in self.data.splits.items():
            if len(split) == 0:
                raise DataError(f"the {name} split is empty: more data, or another data.val_fraction")
        self.world = distributed.init(self.device.type)  # torchrun's process group; one process: rank 0 of 1
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)  # one GPU per local rank
        self.model = self.task.build_model(cfg, self.data.meta, self.data.init)
        self.trained = placed(self.model, self.device, self.world)  # what training calls: the model, or DDP
        self.optimizer = make_optimizer(cfg.optim, self.model.optimizer_groups())
        # train.ema: validation, the checkpoints' weights and so every later use read the average
        self.averaged = WeightAverage(self.model, cfg.train.ema) if cfg.train.ema > 0 else None
        self.evaluated = self.averaged.model if self.averaged is not None else self.model
        self.generator = torch.Generator().manual_seed(cfg.train.seed)  # data order, saved in checkpoints
        steps_per_epoch = self.data.splits["train"].num_batches(cfg.train.batch_size)
        mode = self.task.monitor_mode
        self.schedule = LRSchedule(cfg.train.schedule, cfg.optim.lr, cfg.train.epochs, steps_per_epoch, mode)
        early = EarlyStopping(cfg.train.early_stop, mode)
        self.saver = StepCheckpoints(cfg.train.checkpoint_every, self.world)  # step checkpoints, on every rank
        self.callbacks = [*default_callbacks(early, self.saver, self.world.main), *callbacks]
        self.epoch = self.step = 0
        self.inside: EpochProgress | None = None  # a step checkpoint's place inside the next epoch (`restore`)
        self.elapsed_before = 0.0  # training seconds of earlier sessions
        self.best: dict[str, Any] = {
            "epoch": None, "step": None, "value": None, "metric": f"val_{self.task.monitor}", "mode": mode,
        }  # fmt: skip
        self.stopped_early: dict[str, Any] | None = None
        self.end_now: str | None = None  # set by a callback: end the run at once with this status ("pruned")
        self.rng: list[dict[str, Any]] = []  # every rank's random states at the last validation, for checkpoints
        self.clock = time.perf_counter()

    def open(
        self, run: RunFolder, lock: FolderLock | NoLock, command: str, loggers: list[Logger], overrides: list[str],
        resumed: bool = False,
    ) -> Trainer:  # fmt: skip
        """Train into `run`, its lock held (rank 0); the loggers its config asks for come before `loggers`;
        `overrides` (`key=value`) are what run.json records the command changed. A resumed run (`restore`d)
        loses the rows logged after its checkpoint, and its record goes on."""
        processes = distributed.describe(self.device)  # every rank's host and device: all ranks take part
        self.run, self.lock, self.loggers, self.info = run, lock, [], {}
        if self.world.main and resumed:  # rank 0 alone logs and records
            kept = run.truncate(self.step)  # rows logged after the checkpoint (an unfinished epoch) go
            self.elapsed_before = self.elapsed_before or (kept[-1]["elapsed"] if kept else 0.0)  # a step's: its own
            before = run.read_info()
            self.loggers = [*disk_loggers(run, self.cfg, self.step, before.get("mlflow")), *loggers]
            self.info = {**RunRecord.resumed(self, before, command, overrides), **trackers(self.loggers), **processes}
        elif self.world.main:
            self.loggers = [*disk_loggers(run, self.cfg), *loggers]
            self.info = {**RunRecord.new(self, command, overrides), **trackers(self.loggers), **processes}
        return self

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train the epochs still to do (none when only the wrap-up of a killed run is left), then wrap up."""
        try:
            with stop_signals():
                self.clock = time.perf_counter() - self.elapsed_before
                self._emit("on_start")
                sizes = {name: len(split) for name, split in self.data.splits.items()}
                start = {"dir": str(self.run.path), "monitor": self.best["metric"], "config": self.cfg.to_dict()}
                for lg in self.loggers:  # what will run, from the record and the data's own facts
                    lg.start({**self.info, **start, "derived": self.data.derived, "sizes": sizes})
                try:
                    while self.epoch < self.cfg.train.epochs and not self.stopped_early:
                        with self.saver.inside_epoch():  # with step checkpoints, Ctrl-C waits for a checkpoint
                            self._train_epoch()
                    self._emit("on_finish", "completed")  # inside the try: a failure while testing is recorded too
                except _EndNow:
                    self._emit("on_finish", self.end_now)  # recorded and plotted; not tested
                except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM
                    self._emit("on_abort", "interrupted")
                    self._emit("on_finish", "interrupted")  # the best checkpoint is still tested, the plots drawn
                    if self.world.main:
                        e.summary = {**self.info, "dir": str(self.run.path)}  # the CLI shows it like a finished run
                    raise
                except BaseException:
                    self._emit("on_abort", "failed")
                    raise
                finally:
                    for lg in self.loggers:  # idempotent: stops a live display however the run ended
                        lg.finish({**self.info, "dir": str(self.run.path)})
        finally:
            self.lock.release()
            distributed.shutdown()  # a rank that leaves with its process group alive can abort (and take rank 0)
        return {**self.info, "dir": str(self.run.path)}

    def _train_epoch(self) -> None:
        cfg = self.cfg.train
        self.epoch += 1
        progress, self.inside = self.inside or EpochProgress(self.task.meter(self.data.meta)), None
        meter, self.step = progress.meter, self.step - progress.steps  # the steps before this epoch

        def on_batch(done: int, total: int) -> None:
            if self.averaged is not None:
                self.averaged.update()  # after each optimizer step
            self._set_lr(self.step + done)  # for the next step
            for lg in self.loggers:
                lg.progress(done, total, meter.compute)  # the running metrics, read when a logger asks
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                self._validation(self.step + done, meter, fraction=done / total)  # a row inside a long epoch
                self.model.train()
            self._emit("on_step", progress)  # train.checkpoint_every

        self._set_lr(self.step + progress.steps)
        try:
            out = train_epoch(
                self.trained, self.data.splits["train"], meter, self.optimizer, self.device, cfg.batch_size,
                self.generator, cfg.grad_clip, cfg.grad_clip_value, on_batch, self.precision, progress,
            )  # fmt: skip
        except DivergedError as e:
            raise DivergedError(
                f"epoch {self.epoch}, step {self.step + e.step}: the training loss is not finite "
                f"(lower optim.lr or set train.grad_clip); last good checkpoint: {self.saver.kept(self.epoch)}",
                e.step,
            ) from None
        seconds = time.perf_counter() - progress.t0
        norms = out["grad_norms"]
        step_rows = [
            {"step": self.step + i + 1, "loss": loss, "grad_norm": n}
            for i, (loss, n) in enumerate(zip(out["losses"], norms))
        ]
        self.step += out["steps"]
        epoch_stats = {
            "grad_norm": sum(norms) / max(len(norms), 1), "grad_norm_max": max(norms, default=0.0),
            "samples_per_s": out["samples"] / seconds,  # training examples (names, characters) per second
            "t0": progress.t0,
        }  # fmt: skip
        self._validation(self.step, out["metrics"], epoch_stats=epoch_stats, step_rows=step_rows)

    def _validation(
        self, step: int, train: Meter | dict[str, float], fraction: float | None = None,
        epoch_stats: dict[str, float] | None = None, step_rows: list[dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        """Validate, then record it everywhere: at an epoch's end, or inside it (`fraction` of it done)."""
        self.phase("validate", f"validating epoch {self.epoch}")
        meter = self.task.meter(self.data.meta)
        val = evaluate(
            self.evaluated, self.data.splits["val"], meter, self.device, self.cfg.train.batch_size, True, self.precision
        ).compute()
        self.rng = distributed.gather(rng_states(self.generator))  # every rank's random state, for checkpoints
        shows = self.world.main and isinstance(self.task, Previews)  # rank 0 alone shows anything
        preview = self.task.preview(self.evaluated, self.data.meta, self.cfg, step) if shows else None
        with deferred_interrupt():  # checkpoints, run.json and metrics agree even if Ctrl-C lands here
            value = val[self.task.monitor]
            improved = self._update_best(value, step)
            end_of_epoch = fraction is None
            if end_of_epoch:
                lr = self.schedule.lr(step - 1)  # what the epoch's last step used
                self.schedule.epoch_end(value)  # plateau decays act from the next step on
            else:
                lr = self.optimizer.param_groups[0]["lr"]
            row = self._row(step, train if isinstance(train, dict) else train.compute(), val, lr, fraction, epoch_stats)
            if preview is not None:
                row["preview"] = preview
            if step_rows is not None:
                for lg in self.loggers:  # before the callbacks: a resume truncates steps and rows by step alike
                    lg.steps(step_rows)
            self._emit("on_evaluation", Point(row, step, value, improved, end_of_epoch))
            for lg in self.loggers:
                lg.epoch(row)
        if self.end_now:
            raise _EndNow()

    def _row(self, step, train, val, lr, fraction, epoch_stats) -> dict[str, Any]:
        """One metrics row, in the column order of metrics.csv."""
        row: dict[str, Any] = {"epoch": self.epoch, "step": step}
        if fraction is not None:
            row.update(epoch_fraction=self.epoch - 1 + fraction, partial=True)
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"val_{k}": v for k, v in val.items()})
        row["lr"] = lr
        if epoch_stats:
            row.update(grad_norm=epoch_stats["grad_norm"], grad_norm_max=epoch_stats["grad_norm_max"])
        row["best_epoch"] = self.best["epoch"]
        if epoch_stats:
            row.update(samples_per_s=epoch_stats["samples_per_s"], epoch_time=time.perf_counter() - epoch_stats["t0"])
        row["elapsed"] = time.perf_counter() - self.clock
        return row

    def phase(self, name: str, text: str) -> None:
        """Tell the loggers what the run does besides training (validate; the callbacks: test, plot)."""
        for lg in self.loggers:
            lg.phase(name, text)

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _set_lr(self, step: int) -> None:
        if self.schedule.constant and step > 0:
            return
        lr = self.schedule.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]

    def _update_best(self, value: float, step: int) -> bool:
        if not math.isfinite(value):  # a diverged epoch is never the best one
            return False
        old = self.best["value"]
        better = old is None or (value > old if self.task.monitor_mode == "max" else value < old)
        if better:
            self.best.update(epoch=self.epoch, step=step, value=value)
        return better


def train(
    cfg: Config, command: str, loggers: list[Logger], root: Path | None = None, callbacks: list[Callback] = (),
    overrides: list[str] = (),
) -> dict[str, Any]:  # fmt: skip
    """A new run in a new run folder (under `root`, else the runs folder), trained to its end; `callbacks` come
    after the default ones (a group's pruning); `overrides`: what run.json records the command changed."""
    trainer = Trainer(cfg, callbacks)
    held: list[FolderLock] = []

    def create() -> str:  # rank 0 alone owns the run folder
        run = RunFolder.create(cfg.name or cfg.task, root)
        held.append(run.lock())  # before anything is written into it
        return str(run.path)

    run = RunFolder(Path(distributed.main_only(create)))
    return trainer.open(run, held[0] if held else NoLock(), command, loggers, list(overrides)).fit()


def resume(
    ref: str, epochs: int | None, command: str, loggers: list[Logger], force: bool = False,
    using: Callable[[RunFolder, str | None, int | None], None] | None = None, callbacks: list[Callback] = (),
) -> dict[str, Any]:  # fmt: skip
    """Continue a run (id, path or `latest`) from its last checkpoint: weights, optimizer, progress, best, every
    RNG; `epochs` may extend it. A run whose epochs are all trained but whose wrap-up was cut short (killed,
    full disk) gets its wrap-up; one killed before its first checkpoint starts over in its own folder. Under
    torchrun rank 0 alone locks and writes the run. `using(run, checkpoint, epoch)` hears on rank 0 which run
    and checkpoint (None: none yet) it goes on from, once they are known to work."""
    run, lock, ckpt, cfg = resume_point(ref, epochs, force)
    try:
        trainer = Trainer(cfg, callbacks, meta=ckpt["meta"] if ckpt else None)
        if ckpt is not None:
            restore(trainer, ckpt, run.checkpoint_path("last"))
        overrides = [f"train.epochs={epochs}"] if epochs is not None else []
        trainer.open(run, lock, command, loggers, overrides, resumed=True)
        if using is not None and trainer.world.main:
            using(run, "last" if ckpt else None, ckpt["epoch"] if ckpt else None)
    except BaseException:
        lock.release()
        raise
    return trainer.fit()

"""The one training loop, for every task; it never names a task.

A run starts fresh (`Trainer.start`) or from its last checkpoint (`Trainer.resume`); `fit` trains epoch
by epoch, validates, and hands each validation and the end of the run to the callbacks (checkpoints,
early stopping, the run record, the final test, plots) and its rows to the loggers (metrics files,
TensorBoard, the live display).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from rnnctl import distributed
from rnnctl.callbacks import Callback, EarlyStop, Point, RunRecord, default_callbacks
from rnnctl.config import Config, validate
from rnnctl.errors import ConfigError, DataError, DivergedError, RunError
from rnnctl.loggers import Logger, MetricsFiles, MLflowLog, TensorBoardLog, check_installed, check_mlflow_installed
from rnnctl.runs import FolderLock, NoLock, RunFolder
from rnnctl.schedules import EarlyStopping, LRSchedule
from rnnctl.tasks import get_task
from rnnctl.tasks.base import Meter, Previews
from rnnctl.runtime import deferred_interrupt, keep_freed_memory, make_precision, pick_device, restore_rng
from rnnctl.runtime import rng_states, set_backends, set_seed, stop_signals
from rnnctl.training import evaluate, make_optimizer, train_epoch, WeightAverage

TIMING_KEYS = ("samples_per_s", "epoch_time", "elapsed")  # the only metrics that differ between identical runs


class _EndNow(Exception):
    """A callback set `trainer.end_now`: the run ends at this validation with that status (a pruned trial)."""


class Trainer:
    """A training run: the task's data and model, the optimizer and schedule, progress, callbacks, loggers."""

    def __init__(self, cfg: Config, loggers: list[Logger], meta: dict[str, Any] | None = None):
        """Everything but the run folder; `meta` (a checkpoint's vocabulary and classes) for a resumed run."""
        self.cfg = cfg
        self.task = get_task(cfg.task)
        if cfg.log.tensorboard:
            check_installed()  # a missing extra is a one-line error before any run folder exists
        if cfg.log.mlflow:
            check_mlflow_installed()
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
        self.model = self.task.build_model(cfg, self.data.meta, self.data.init).to(self.device)
        for module in self.model.modules():  # cuDNN wants each RNN's weights in one block after a move
            if isinstance(module, torch.nn.RNNBase):
                module.flatten_parameters()
        self.trained = self.model  # what training calls: the model, or DDP around it under torchrun
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            distributed.hold(self.trained)  # freed only by the rank's exit (see distributed.hold)
        self.optimizer = make_optimizer(cfg.optim, self.model.optimizer_groups())
        # train.ema: validation, the checkpoints' weights and so every later use read the average
        self.averaged = WeightAverage(self.model, cfg.train.ema) if cfg.train.ema > 0 else None
        self.evaluated = self.averaged.model if self.averaged is not None else self.model
        self.generator = torch.Generator().manual_seed(cfg.train.seed)  # data order, saved in checkpoints
        steps_per_epoch = self.data.splits["train"].num_batches(cfg.train.batch_size)
        mode = self.task.monitor_mode
        self.schedule = LRSchedule(cfg.train.schedule, cfg.optim.lr, cfg.train.epochs, steps_per_epoch, mode)
        early = EarlyStopping(cfg.train.early_stop, mode)
        self.callbacks: list[Callback] = default_callbacks(early) if self.world.main else [EarlyStop(early)]
        self.user_loggers = loggers
        self.epoch = self.step = 0
        self.best: dict[str, Any] = {
            "epoch": None, "step": None, "value": None, "metric": f"val_{self.task.monitor}", "mode": mode,
        }  # fmt: skip
        self.stopped_early: dict[str, Any] | None = None
        self.end_now: str | None = None  # set by a callback: end the run at once with this status ("pruned")
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run (resume)
        self.clock = time.perf_counter()

    @classmethod
    def start(
        cls,
        cfg: Config,
        command: str,
        loggers: list[Logger],
        root=None,
        callbacks: list[Callback] = (),
        overrides: list[str] = (),
    ) -> Trainer:
        """A new run in a new run folder; `callbacks` come after the default ones (a group's pruning);
        `overrides` (`key=value`: --set, --epochs, a group's values) are what run.json records it changed."""
        self = cls(cfg, loggers)
        self.callbacks += callbacks
        processes = distributed.describe(self.device)

        def create() -> str:  # rank 0 alone owns the run folder
            self.run = RunFolder.create(cfg.name or cfg.task, root)
            self.lock = self.run.lock()  # before anything is written into it
            return str(self.run.path)

        path = distributed.main_only(create)
        if not self.world.main:
            self.run, self.lock = RunFolder(Path(path)), NoLock()
        self.loggers = [*self._disk_loggers(None), *loggers] if self.world.main else []
        self.info = (
            {**RunRecord.new(self, command, overrides), **self._trackers(), **processes} if self.world.main else {}
        )
        return self

    @classmethod
    def resume(
        cls,
        run: RunFolder,
        lock: FolderLock | NoLock,
        ckpt: dict[str, Any] | None,
        cfg: Config,
        command: str,
        loggers: list[Logger],
        callbacks: list[Callback] = (),
        overrides: list[str] = (),
    ) -> Trainer:
        """Continue a run from its last checkpoint: weights, optimizer, progress, best, every RNG. Without a
        checkpoint (killed before its first epoch ended) the run starts over in its own folder."""
        self = cls(cfg, loggers, meta=ckpt["meta"] if ckpt else None)
        self.callbacks += callbacks
        if ckpt is not None:
            restore(self, ckpt, run.checkpoint_path("last"))
        processes = distributed.describe(self.device)
        self.run, self.lock = run, lock
        if not self.world.main:
            self.loggers, self.info = [], {}
            return self
        kept = run.truncate(self.step)  # rows logged after the checkpoint (an unfinished epoch) go
        self.elapsed_before = kept[-1]["elapsed"] if kept else 0.0
        record = run.read_info()
        self.loggers = [*self._disk_loggers(self.step, record.get("mlflow")), *loggers]
        self.info = {**RunRecord.resumed(self, record, command, overrides), **self._trackers(), **processes}
        return self

    def _disk_loggers(self, resume_step: int | None, mlflow_before: dict[str, Any] | None = None) -> list[Logger]:
        """The loggers the run's config asks for: metrics files always, TensorBoard and MLflow when asked
        (`mlflow_before`: run.json's record of the MLflow run a resumed run goes on with)."""
        loggers: list[Logger] = [MetricsFiles(self.run)]
        if self.cfg.log.tensorboard:
            loggers.append(TensorBoardLog(self.run, resume_step))
        self.mlflow: MLflowLog | None = None
        if self.cfg.log.mlflow:
            experiment = self.cfg.name or self.cfg.task
            self.mlflow = MLflowLog(self.run, self.cfg.log.mlflow_uri, experiment, mlflow_before)
            loggers.append(self.mlflow)
        return loggers

    def _trackers(self) -> dict[str, Any]:
        """What run.json keeps of an outside tracker: the MLflow run that `train --resume` goes on with."""
        return {"mlflow": self.mlflow.record} if self.mlflow is not None else {}

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task, "config": self.cfg.to_dict(), "meta": self.data.meta,
            "model": self.evaluated.state_dict(), "optimizer": self.optimizer.state_dict(),
            **({"trained": self.model.state_dict(), "average": self.averaged.state_dict()} if self.averaged else {}),
            "epoch": self.epoch, "step": self.step, "best": dict(self.best), "schedule": self.schedule.state_dict(),
            **{cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
            "rng": self.rng[0], "rng_ranks": self.rng,  # every rank's, so a resume on as many ranks is exact
            **({"scaler": self.precision.scaler.state_dict()} if self.precision.scaler else {}),  # fp16's loss scale
        }  # fmt: skip

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
        t0 = time.perf_counter()
        meter = self.task.meter(self.data.meta)

        def on_batch(done: int, total: int) -> None:
            if self.averaged is not None:
                self.averaged.update()  # after each optimizer step
            self._set_lr(self.step + done)  # for the next step
            for lg in self.loggers:
                lg.progress(done, total, meter.compute)  # the running metrics, read when a logger asks
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                self._validation(self.step + done, meter, fraction=done / total)  # a row inside a long epoch
                self.model.train()

        self._set_lr(self.step)
        try:
            out = train_epoch(
                self.trained, self.data.splits["train"], meter, self.optimizer, self.device, cfg.batch_size,
                self.generator, cfg.grad_clip, cfg.grad_clip_value, on_batch, self.precision,
            )  # fmt: skip
        except DivergedError as e:
            kept = f"epoch {self.epoch - 1} in checkpoints/last.pt" if self.epoch > 1 else "none"
            raise DivergedError(
                f"epoch {self.epoch}, step {self.step + e.step}: the training loss is not finite "
                f"(lower optim.lr or set train.grad_clip); last good checkpoint: {kept}",
                e.step,
            ) from None
        seconds = time.perf_counter() - t0
        norms = out["grad_norms"]
        step_rows = [
            {"step": self.step + i + 1, "loss": loss, "grad_norm": n}
            for i, (loss, n) in enumerate(zip(out["losses"], norms))
        ]
        self.step += out["steps"]
        epoch_stats = {
            "grad_norm": sum(norms) / max(len(norms), 1), "grad_norm_max": max(norms, default=0.0),
            "samples_per_s": out["samples"] / seconds,  # training examples (names, characters) per second
            "t0": t0,
        }  # fmt: skip
        self._validation(self.step, out["metrics"], epoch_stats=epoch_stats, step_rows=step_rows)

    def _validation(
        self,
        step: int,
        train: Meter | dict[str, float],
        fraction: float | None = None,
        epoch_stats: dict[str, float] | None = None,
        step_rows: list[dict[str, Any]] | None = None,
    ) -> None:
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


def restore(trainer: Trainer, ckpt: dict[str, Any], path) -> None:
    """A checkpoint's training state into a trainer built from its config; RunError when it does not fit."""
    try:
        if trainer.averaged is not None:  # "model" holds the average, "trained" the weights training goes on from
            trainer.model.load_state_dict(ckpt["trained"])
            trainer.averaged.load_state_dict(ckpt["model"], ckpt["average"])
        else:
            trainer.model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.epoch, trainer.step, trainer.best = ckpt["epoch"], ckpt["step"], dict(ckpt["best"])
        trainer.schedule.load_state_dict(ckpt["schedule"])
        if trainer.precision.scaler is not None and "scaler" in ckpt:  # fp16: go on with the loss scale reached
            trainer.precision.scaler.load_state_dict(ckpt["scaler"])
        for cb in trainer.callbacks:
            if cb.state_key:
                cb.load_state_dict(ckpt[cb.state_key])
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        w = trainer.world  # the same number of ranks: each its own state; another number: rank 0's for all
        restore_rng(ranks[w.rank] if len(ranks) == w.size else ckpt["rng"], trainer.generator)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path}: does not fit its own config ({first[:200]})") from None


def train(cfg: Config, command: str, loggers: list[Logger], **options: Any) -> dict[str, Any]:
    """A new run trained to its end; `options` as Trainer.start takes them (root, callbacks, overrides)."""
    return Trainer.start(cfg, command, loggers, **options).fit()


def resume(
    ref: str,
    epochs: int | None,
    command: str,
    loggers: list[Logger],
    force: bool = False,
    using: Callable[[RunFolder, str | None, int | None], None] | None = None,
    callbacks: list[Callback] = (),
) -> dict[str, Any]:
    """Continue a run (id, path or `latest`) from its last checkpoint; `epochs` may extend it. A run whose
    epochs are all trained but whose wrap-up was cut short (killed, full disk) gets its wrap-up; one killed
    before its first checkpoint starts over in its own folder. Under torchrun every rank reads the run (a
    shared file system) and rank 0 alone locks and writes it. `using(run, checkpoint, epoch)` hears on rank 0
    which run and checkpoint (None: none yet) it goes on from, once they are known to work."""
    run = RunFolder.resolve(ref, latest="started")  # `latest` here: the newest run, whatever its state
    if distributed.launched():
        distributed.init(distributed.device_kind(str((run.config().get("train") or {}).get("device", "auto"))))
    ckpt = run.load_checkpoint("last") if run.has_checkpoint("last") else None
    rows = len([r for r in run.rows() if not r.get("partial")]) if ckpt is None else 0
    recorded = int(run.info().get("epochs_done") or 0) if ckpt is None else 0
    if rows > 1 or recorded > 0:  # no checkpoint, yet epochs trained (a row may precede its checkpoint: one, not two)
        trained = max(rows, recorded)
        raise RunError(
            f"{run.id}: {run.checkpoint_path('last')} is missing, though {trained} epochs were trained: it "
            f"cannot go on from where it stopped; start a new run from its config: "
            f"rnnctl train {run.path / 'config.yaml'}"
        )
    if ckpt is not None:
        raw, source = dict(ckpt["config"]), str(run.checkpoint_path("last"))
    else:  # killed before the first epoch ended: the resolved config of the run folder
        raw, source = {k: v for k, v in run.config().items() if k != "derived"}, str(run.path / "config.yaml")
    if epochs is not None:
        raw["train"] = {**(raw.get("train") or {}), "epochs": epochs}
    try:
        cfg = validate(raw, source="--epochs" if epochs is not None else source)
    except ConfigError as e:
        raise RunError(str(e)) from None
    held: list[FolderLock] = []

    def take() -> None:  # rank 0: the lock first, then the checks that need it
        held.append(run.lock(force))
        try:
            info = run.read_info()
            if run.info()["status"] == "running":  # alive on this host, run by an rnnctl without locks
                raise RunError(f"{run.id} is still running (pid {info.get('pid')}): stop it before resuming")
            done = ckpt["epoch"] if ckpt else 0
            if epochs is not None and epochs < done:
                raise RunError(f"--epochs {epochs}: {run.id} has already trained {done} epochs: give N > {done}")
            if done >= cfg.train.epochs and info.get("status") == "completed":
                raise RunError(
                    f"{run.id} has trained all its {done} epochs: pass --epochs N with N > {done} to train longer"
                )
        except BaseException:
            held.pop().release()
            raise

    distributed.main_only(take)
    lock = held[0] if held else NoLock()
    try:
        overrides = [f"train.epochs={epochs}"] if epochs is not None else []
        trainer = Trainer.resume(run, lock, ckpt, cfg, command, loggers, callbacks, overrides)
        if using is not None and trainer.world.main:
            using(run, "last" if ckpt else None, ckpt["epoch"] if ckpt else None)
    except BaseException:
        lock.release()
        raise
    return trainer.fit()

"""What happens at the loop's events, kept out of the loop (Lightning's hooks, kept small).

Events, in the order the loop sends them to each callback of its list:
- `on_start`: the run is set up (fresh or resumed) and about to train;
- `on_step`: after each optimizer step (and the validation that `train.eval_every` puts there), on every rank;
- `on_evaluation`: a validation at the end of an epoch, or inside one (`train.eval_every`);
- `on_abort`: Ctrl-C or a failure, before anything else happens (the record says so first);
- `on_finish`: the wrap-up after the last epoch, an early stop, Ctrl-C, or a callback's `trainer.end_now`
  (status "pruned": a search trial stopped for its poor start; not tested).
A callback with a `state_key` keeps state in every checkpoint under that key.

Beside them, what the loop's start and end need from the run folder: the loggers a run's config asks for,
a trainer's state as a checkpoint holds it and back, and the checks before a run is resumed.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from rnnctl import distributed
from rnnctl.config import Config, parse_duration, validate
from rnnctl.errors import ConfigError, RunError, first_line
from rnnctl.locks import HOST, FolderLock, NoLock
from rnnctl.loggers import Logger, MetricsFiles, MLflowLog, TensorBoardLog, check_installed, check_mlflow_installed
from rnnctl.runs import RunFolder, git_commit, now, versions
from rnnctl.runtime import StepEndSignals, deferred_interrupt, restore_rng, rng_states
from rnnctl.schedules import EarlyStopping
from rnnctl.training import EpochProgress

if TYPE_CHECKING:
    from rnnctl.loop import Trainer


@dataclass
class Point:
    """One validation: its metrics row, where it happened, and whether it is the best so far."""

    row: dict[str, Any]
    step: int  # optimizer steps so far
    value: float  # the monitored validation metric
    improved: bool  # a new best
    end_of_epoch: bool  # False: a `train.eval_every` point inside an epoch


class Callback:
    state_key: str | None = None

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, progress: EpochProgress) -> None:
        pass

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        pass

    def on_abort(self, trainer: Trainer, status: str) -> None:
        pass

    def on_finish(self, trainer: Trainer, status: str) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EarlyStop(Callback):
    """`train.early_stop`: ends the run after `patience` epochs without a better validation metric."""

    state_key = "early_stop"

    def __init__(self, rule: EarlyStopping):
        self.rule = rule

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        if point.end_of_epoch and self.rule.should_stop(point.value):
            trainer.stopped_early = {"epoch": trainer.epoch, "patience": self.rule.cfg.patience}

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


class Checkpointer(Callback):
    """last.pt at every epoch end (where training resumes); best.pt whenever validation improves."""

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        names = (["last"] if point.end_of_epoch else []) + (["best"] if point.improved else [])
        if names:
            trainer.run.save_checkpoint(names, {**checkpoint_state(trainer), "step": point.step})


class StepCheckpoints(Callback):
    """`train.checkpoint_every`: last.pt inside epochs too, every N optimizer steps (counted over the run) or
    every so many seconds, with the place in the epoch; and, when it is set, a Ctrl-C or SIGTERM during an
    epoch stops at the end of its step with a step checkpoint, or once a validation under way is recorded
    (see `inside_epoch`). Every rank takes part; rank 0 writes. Under torchrun the ranks agree on steps
    without a word at each one: a duration is refused, and a signal waits for the next step checkpoint or
    the epoch's end, where every rank learns whether one of them was told to stop."""

    def __init__(self, every: int | str | None, world: distributed.World):
        self.on, self.steps = every is not None, every if isinstance(every, int) else None
        self.seconds = parse_duration(every, "train.checkpoint_every") if isinstance(every, str) else None
        if self.seconds is not None and world.distributed:
            raise ConfigError(
                f"train.checkpoint_every: {every} is a duration, which the processes of a torchrun would each "
                "measure apart: give a number of steps"
            )
        self.signals, self.world = StepEndSignals(), world
        self.due = time.monotonic()
        self.saved: tuple[int, int] | None = None  # (epoch, step) of this session's newest step checkpoint

    @contextlib.contextmanager
    def inside_epoch(self) -> Iterator[None]:
        """Around an epoch, its validation included: with step checkpoints on, a stop signal waits for the end of
        its step (a step checkpoint) or of the epoch (last.pt written); under torchrun every rank then learns,
        at the epoch's end, whether one of them was told to stop."""
        if not self.on:
            yield
            return
        with self.signals:  # raises the signal caught, if any, as the epoch ends
            yield
            if self.world.distributed:
                told = [s for s in distributed.gather(self.signals.caught) if s is not None]
                self.signals.caught = self.signals.caught or (told[0] if told else None)

    def on_start(self, trainer: Trainer) -> None:
        self._restart_clock()

    def on_step(self, trainer: Trainer, progress: EpochProgress) -> None:
        if not self.on:
            return
        if self.steps is not None:
            due = (trainer.step + progress.steps) % self.steps == 0
        else:
            due = time.monotonic() >= self.due
        due = due and progress.steps < progress.total  # not at the epoch's last step: its end writes last.pt
        if due or self.signals.caught is not None and not trainer.world.distributed:
            signum = self.save(trainer, progress)
            if signum is not None:
                self.signals.stop(signum)

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        if point.end_of_epoch:  # last.pt was just written
            self._restart_clock()

    def save(self, trainer: Trainer, progress: EpochProgress) -> int | None:
        """A step checkpoint, at the end of a step: last.pt with every rank's place in the epoch, RNG states and
        running sums. Returns the stop signal some rank had caught (alone: also one caught while saving)."""
        finite = bool(torch.stack(progress.losses).isfinite().all()) if progress.losses else True
        mine = {"rng": rng_states(trainer.generator), "progress": progress.state_dict(), "finite": finite}
        ranks = distributed.gather({**mine, "stop": self.signals.caught})  # every rank's, as at a validation
        step, good = trainer.step + progress.steps, all(r["finite"] for r in ranks)
        if good and trainer.world.main:  # a NaN loss in the epoch: last.pt keeps the last good state
            state = {
                **checkpoint_state(trainer, [r["rng"] for r in ranks]), "step": step,
                "inside": {"elapsed": time.perf_counter() - trainer.clock, "ranks": [r["progress"] for r in ranks]},
            }  # fmt: skip
            with deferred_interrupt():
                trainer.run.save_checkpoint(["last"], state)
        self.saved = (trainer.epoch, step) if good else self.saved
        self._restart_clock()
        stops = [r["stop"] for r in ranks if r["stop"] is not None]
        return stops[0] if stops else self.signals.caught if not trainer.world.distributed else None

    def kept(self, epoch: int) -> str:
        """Where last.pt stands, for the message of a run whose loss diverged in `epoch`."""
        if self.saved is not None and self.saved[0] == epoch:
            return f"epoch {epoch}, step {self.saved[1]} in checkpoints/last.pt"
        return f"epoch {epoch - 1} in checkpoints/last.pt" if epoch > 1 else "none"

    def _restart_clock(self) -> None:
        if self.seconds is not None:
            self.due = time.monotonic() + self.seconds


class FinalTest(Callback):
    """Tests the best checkpoint on the task's report splits; the test metrics go into the run record."""

    def on_finish(self, trainer: Trainer, status: str) -> None:
        from rnnctl.inference import evaluate_and_save

        splits = [s for s in trainer.task.report_splits if s in trainer.data.splits]
        if status not in ("completed", "interrupted") or not trainer.run.has_checkpoint("best") or not splits:
            return
        ckpt = trainer.run.load_checkpoint("best")
        trainer.model.load_state_dict(ckpt["model"])
        best = trainer.run.checkpoint_path("best").name
        for split in splits:
            trainer.phase("test", f"testing {best} (epoch {ckpt['epoch']}) on the {split} split")
            report, _ = evaluate_and_save(
                trainer.task, trainer.model, trainer.data.meta, trainer.data.splits[split], trainer.device,
                trainer.cfg.train.batch_size, trainer.run, split, "best", ckpt["epoch"], trainer.precision,
            )  # fmt: skip
            if split == "test":
                trainer.info["test"] = {k: v for k, v in report.items() if isinstance(v, (int, float)) and k != "epoch"}


class Plots(Callback):
    """Every figure the run's files allow, drawn from the files."""

    def on_finish(self, trainer: Trainer, status: str) -> None:
        trainer.phase("plot", "drawing the plots")
        # Ctrl-C or SIGTERM waits until the plots are drawn: a signal that cuts matplotlib's import leaves half
        # a module behind, and the interrupted run's own wrap-up, drawing again, would fail on it (KeyError:
        # 'Rectangle:kwdoc', two classes of one name)
        with deferred_interrupt():
            from rnnctl import plots

            plots.write_all(trainer.run)


class RunRecord(Callback):
    """config.yaml and run.json: written at the start, kept current at every validation and at the end."""

    @staticmethod
    def new(trainer: Trainer, command: str, overrides: list[str]) -> dict[str, Any]:
        """run.json of a new run; `overrides`: the `key=value` settings its config file was changed by."""
        cfg = trainer.cfg
        return {
            "id": trainer.run.id, "task": cfg.task, "name": cfg.name, "status": "running", "command": command,
            "overrides": list(overrides),  # what its command line or its group changed in the config file
            "created": now(), "created_ns": time.time_ns(),  # orders runs started within the same second
            "unit": trainer.task.unit,  # what its speed (`samples_per_s`) and an evaluation's size count
            "seed": cfg.train.seed, "device": str(trainer.device), "threads": torch.get_num_threads(),
            "precision": cfg.train.precision, **trainer.math,  # tf32: whether TF32 math ran; deterministic: the mode
            "versions": versions(), "git_commit": git_commit(),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "epochs": cfg.train.epochs, "epochs_done": 0, "best": dict(trainer.best),
            "pid": os.getpid(), "host": HOST,
        }  # fmt: skip

    @staticmethod
    def resumed(trainer: Trainer, info: dict[str, Any], command: str, overrides: list[str]) -> dict[str, Any]:
        """run.json of a run picked up again: the resume (and what it changed: --epochs) goes into its history."""
        info.setdefault("history", []).append(
            {
                "resumed": now(),
                "from_epoch": trainer.epoch,
                **({"from_step": trainer.step} if trainer.inside else {}),  # inside the next epoch
                "command": command,
                "status_before": info.get("status"),
                "overrides": list(overrides),
            }  # fmt: skip
        )
        info.update(
            status="running", unit=trainer.task.unit, epochs=trainer.cfg.train.epochs, epochs_done=trainer.epoch,
            best=dict(trainer.best), pid=os.getpid(), host=HOST, device=str(trainer.device), precision=trainer.cfg.train.precision,
            **trainer.math,
        )  # fmt: skip
        for key in ("finished", "duration", "stopped_early"):
            info.pop(key, None)
        return info

    def on_start(self, trainer: Trainer) -> None:
        trainer.run.write_config(trainer.cfg.to_dict(), trainer.data.derived)
        trainer.run.write_info(trainer.info)

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        if point.end_of_epoch:
            trainer.info["epochs_done"] = trainer.epoch
        trainer.info["best"] = dict(trainer.best)
        if point.improved:  # the best validation's every metric: `rnnctl runs` shows a regressor's MSE
            trainer.info["best_val"] = {k: v for k, v in point.row.items() if k.startswith("val_")}
        if trainer.stopped_early:
            trainer.info["stopped_early"] = trainer.stopped_early
        trainer.run.write_info(trainer.info)

    def on_abort(self, trainer: Trainer, status: str) -> None:
        self._end(trainer, status)  # recorded first: a second Ctrl-C during the wrap-up still leaves the truth

    def on_finish(self, trainer: Trainer, status: str) -> None:
        self._end(trainer, status)

    def _end(self, trainer: Trainer, status: str) -> None:
        trainer.info.update(status=status, finished=now(), duration=time.perf_counter() - trainer.clock)
        trainer.run.write_info(trainer.info)


def default_callbacks(early_stopping: EarlyStopping, steps: StepCheckpoints, main: bool) -> list[Callback]:
    """In event order: the early-stop decision before the checkpoint that saves it, the record last. Ranks
    other than 0 (`main`) write nothing: they keep the early-stop rule and take part in step checkpoints."""
    if not main:
        return [EarlyStop(early_stopping), steps]
    return [EarlyStop(early_stopping), Checkpointer(), steps, FinalTest(), Plots(), RunRecord()]


# -- the loggers a run's config asks for ----------------------------------------------------------


def check_loggers(cfg: Config) -> None:
    """A missing extra (TensorBoard, MLflow) is a one-line error before any run folder exists."""
    if cfg.log.tensorboard:
        check_installed()
    if cfg.log.mlflow:
        check_mlflow_installed()


def disk_loggers(
    run: RunFolder, cfg: Config, resume_step: int | None = None, mlflow: dict[str, Any] | None = None
) -> list[Logger]:
    """Metrics files always, TensorBoard and MLflow when asked; a resumed run gives the step it goes on from
    and `mlflow`, run.json's record of the MLflow run it goes on with."""
    loggers: list[Logger] = [MetricsFiles(run)]
    if cfg.log.tensorboard:
        loggers.append(TensorBoardLog(run, resume_step))
    if cfg.log.mlflow:
        loggers.append(MLflowLog(run, cfg.log.mlflow_uri, cfg.name or cfg.task, mlflow))
    return loggers


def trackers(loggers: list[Logger]) -> dict[str, Any]:
    """What run.json keeps of an outside tracker: the MLflow run that `train --resume` goes on with."""
    return {"mlflow": lg.record for lg in loggers if isinstance(lg, MLflowLog)}


# -- a trainer's state in a checkpoint, and back ---------------------------------------------------


def checkpoint_state(trainer: Trainer, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything `resume` needs to go on exactly: weights, optimizer, progress, best, schedule, the
    callbacks' states, every rank's RNG states (`rng`, else those of the last validation), fp16's loss scale."""
    rng = trainer.rng if rng is None else rng
    return {
        "task": trainer.cfg.task, "config": trainer.cfg.to_dict(), "meta": trainer.data.meta,
        "model": trainer.evaluated.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        **({"trained": trainer.model.state_dict(), "average": trainer.averaged.state_dict()} if trainer.averaged else {}),
        "epoch": trainer.epoch, "step": trainer.step, "best": dict(trainer.best),
        "schedule": trainer.schedule.state_dict(),
        **{cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_key},
        "rng": rng[0], "rng_ranks": rng,  # every rank's, so a resume on as many ranks is exact
        **({"scaler": trainer.precision.scaler.state_dict()} if trainer.precision.scaler else {}),
    }  # fmt: skip


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
        if trainer.precision.scaler is not None:  # fp16: go on with the loss scale reached
            trainer.precision.scaler.load_state_dict(ckpt["scaler"])
        for cb in trainer.callbacks:
            if cb.state_key:
                cb.load_state_dict(ckpt[cb.state_key])
        ranks, w = ckpt["rng_ranks"], trainer.world  # as many ranks: each its own state; another number: rank 0's
        restore_rng(ranks[w.rank] if len(ranks) == w.size else ckpt["rng"], trainer.generator)
        if "inside" in ckpt:  # a step checkpoint: its epoch goes on from its place, each rank from its own
            places = ckpt["inside"]["ranks"]
            if len(places) != w.size:
                raise RunError(
                    f"{path} was saved inside epoch {ckpt['epoch']} by {len(places)} processes: resume it on "
                    f"{len(places)} (--nproc {len(places)})"
                )
            meter = trainer.task.meter(trainer.data.meta)
            trainer.inside = EpochProgress.load(places[w.rank], meter, trainer.device)
            trainer.epoch -= 1  # epochs finished
            trainer.elapsed_before = float(ckpt["inside"]["elapsed"])  # training seconds until then
            trainer.saver.saved = (ckpt["epoch"], ckpt["step"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise RunError(f"{path}: does not fit its own config ({first_line(e)[:200]})") from None


# -- before a resume -------------------------------------------------------------------------------


def resume_point(
    ref: str, epochs: int | None, force: bool
) -> tuple[RunFolder, FolderLock | NoLock, dict[str, Any] | None, Config]:
    """The run a resume goes on with (id, path or `latest`), its lock (rank 0's; NoLock on other ranks), its
    last checkpoint (None: killed before its first epoch ended) and its config (`epochs` may extend it);
    RunError when it cannot go on. Under torchrun every rank reads the run (a shared file system)."""
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
            done = ckpt["epoch"] if ckpt else 0  # a step checkpoint's: the epoch it is inside
            if epochs is not None and epochs < done:
                done_text = (
                    f"is inside epoch {done}: give N >= {done}"
                    if "inside" in ckpt
                    else f"has already trained {done} epochs: give N > {done}"
                )
                raise RunError(f"--epochs {epochs}: {run.id} {done_text}")
            if done >= cfg.train.epochs and info.get("status") == "completed":
                raise RunError(
                    f"{run.id} has trained all its {done} epochs: pass --epochs N with N > {done} to train longer"
                )
        except BaseException:
            held.pop().release()
            raise

    distributed.main_only(take)
    return run, held[0] if held else NoLock(), ckpt, cfg

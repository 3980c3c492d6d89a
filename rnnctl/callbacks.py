"""What happens at the loop's events, kept out of the loop (Lightning's hooks, kept small).

Events, in the order the loop sends them to each callback of its list:
- `on_start`: the run is set up (fresh or resumed) and about to train;
- `on_evaluation`: a validation at the end of an epoch, or inside one (`train.eval_every`);
- `on_abort`: Ctrl-C or a failure, before anything else happens (the record says so first);
- `on_finish`: the wrap-up after the last epoch, an early stop, Ctrl-C, or a callback's `trainer.end_now`
  (status "pruned": a search trial stopped for its poor start; not tested).
A callback with a `state_key` keeps state in every checkpoint under that key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rnnctl.runs import HOST, git_commit, now, versions
from rnnctl.runtime import deferred_interrupt
from rnnctl.schedules import EarlyStopping

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
            trainer.run.save_checkpoint(names, {**trainer.checkpoint_state(), "step": point.step})


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


def default_callbacks(early_stopping: EarlyStopping) -> list[Callback]:
    """In event order: the early-stop decision before the checkpoint that saves it, the record last."""
    return [EarlyStop(early_stopping), Checkpointer(), FinalTest(), Plots(), RunRecord()]

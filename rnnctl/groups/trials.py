"""A group's members as Optuna trials: what each member is (read from the trials alone), the objective that
trains one as a run folder, the callback that reports its validations, and the queueing that makes a group
whole again. A member (a grid point, or a search's sampled point) may have several trials: a continuation
after an interrupt (the same run folder), a retry after a failure or after its worker died; the newest counts.
"""

from __future__ import annotations

import math
import os
import shlex
from typing import Any

import optuna
from optuna.storages._heartbeat import fail_stale_trials

from rnnctl import loop
from rnnctl.callbacks import Callback, Point
from rnnctl.config import load_config
from rnnctl.errors import ConfigError, RnnctlError, StorageError, first_line
from rnnctl.groups.folder import GroupFolder
from rnnctl.groups.space import Param, combinations, member_name
from rnnctl.locks import HOST, alive
from rnnctl.runs import RunFolder
from rnnctl.runtime import deferred_interrupt

STATUS = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "pending"}
SKIPPED = "skipped"  # user attr of a trial that found its member taken by another: not a member's trial


class Skipped(Exception):
    """A trial whose member another trial has (or a search's trial past its N): failed on purpose, hidden."""


class Failed(Exception):
    """A member's run failed for a reason of its own (recorded in the trial): the group goes on."""


def counted(trials: list) -> list:
    return [t for t in trials if not t.user_attrs.get(SKIPPED)]


def status(t) -> str:
    if t.state.name == "FAIL" and t.user_attrs.get("interrupted"):
        return "interrupted"
    return STATUS.get(t.state.name, t.state.name.lower())


def member_of(t, grid: dict[str, list[str]] | None) -> int:
    """A trial's member: its attribute (every trial of a sweep is queued with one), else a search's trial number."""
    return t.user_attrs.get("member", t.number if grid is None else -1)


def latest(trials: list, grid: dict[str, list[str]] | None) -> dict[int, Any]:
    """The newest trial of each member."""
    return {member_of(t, grid): t for t in sorted(counted(trials), key=lambda t: t.number)}


def members(trials: list, grid: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    """One row per member, in member order; a grid point without any trial yet is pending."""
    newest, seconds = latest(trials, grid), {}
    for t in counted(trials):  # a member's time is that of all its trials (a continued run trained in two)
        if t.datetime_complete and t.datetime_start:
            m = member_of(t, grid)
            seconds[m] = seconds.get(m, 0.0) + (t.datetime_complete - t.datetime_start).total_seconds()
    points = combinations(grid) if grid is not None else []
    rows = []
    for m in range(len(points)) if grid is not None else sorted(newest):
        t = newest.get(m)
        attrs = t.user_attrs if t is not None else {}
        values = attrs.get("values") or ({k: str(v) for k, v in t.params.items()} if t else points[m])
        rows.append({
            "member": m, "values": values, "status": status(t) if t else "pending", "trial": t.number if t else None,
            "value": t.value if t is not None and t.state.name == "COMPLETE" else None, "seconds": seconds.get(m),
            **{key: attrs.get(key) for key in ("run", "host", "device", "error")},
        })  # fmt: skip
    return rows


def requeue(s: optuna.Study, group: GroupFolder) -> None:
    """Before workers start: grid points without a trial are queued; trials left `running` by a dead process here
    become interrupted; members whose newest trial failed or was interrupted are queued (to continue their run)."""
    grid = group.spec.get("grid")
    fail_stale_trials(s)  # another machine's dead worker: failed by its heartbeat, its values queued again
    trials = s.get_trials(deepcopy=False)
    for t in trials:
        if t.state.name == "RUNNING" and t.user_attrs.get("host") == HOST and not alive(t.user_attrs.get("pid"), HOST):
            s._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            s._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    trials = s.get_trials(deepcopy=False)
    newest = latest(trials, grid)
    if grid is not None:
        for m, values in enumerate(combinations(grid)):
            if m not in newest:
                s.enqueue_trial(values, user_attrs={"member": m, "values": values})
    for m, t in sorted(newest.items()):
        if t.state.name == "FAIL" and m >= 0:
            again = {"member": m, "values": t.user_attrs.get("values") or {k: str(v) for k, v in t.params.items()}}
            if t.user_attrs.get("interrupted") and t.user_attrs.get("run"):
                again["resume"] = t.user_attrs["run"]
            s.enqueue_trial(dict(t.params), user_attrs=again)


class Pruning(Callback):
    """Reports each validation (a continued run's earlier ones first) at hundredths of an epoch, so members
    compare at the same point of training; ends a run the pruner calls worse (`pruned`). The value: the best."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.values: list[float] = []

    def on_start(self, trainer: loop.Trainer) -> None:
        self.replay(trainer.run)  # a continued run: its validations before the checkpoint

    def replay(self, run: RunFolder, info: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with deferred_interrupt():  # a signal cut into a storage write can leave a journal's lock held
            self.trial.set_user_attr("run", run.id)
            for row in run.rows():
                self._report(row, None, prune=False)
        return info

    def on_evaluation(self, trainer: loop.Trainer, point: Point) -> None:
        with deferred_interrupt():
            self._report(point.row, trainer, prune=True)

    def _report(self, row: dict[str, Any], trainer: loop.Trainer, prune: bool) -> None:
        value = row.get(self.metric)
        if not isinstance(value, (int, float)):
            known = ", ".join(k for k in row if k.startswith("val_"))
            raise ConfigError(f"--metric {self.metric}: this task's validation metrics are {known}")
        if not math.isfinite(value):
            return
        self.values.append(value)
        epochs = row.get("epoch_fraction", row["epoch"])
        self.trial.report(value, round(100 * epochs))
        if prune and epochs < trainer.cfg.train.epochs and self.trial.should_prune():  # never at the last one
            trainer.end_now = "pruned"
            trainer.info["pruned"] = {"epoch": round(epochs, 2), self.metric: value}


class Objective:
    """One trial: its member's config trained as a run folder of the group, or its interrupted run continued.
    `training` is the context in which a stop signal may cut the run (the worker holds it elsewhere)."""

    def __init__(self, group: GroupFolder, space: list[Param], trials: int, device: str | None, training, on_start):
        self.group, self.space, self.trials, self.device, self.training = group, space, trials, device, training
        self.on_start = on_start  # called once the trial is known to train its member
        self.grid = group.spec.get("grid")

    def __call__(self, trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in self.space}
        mine = trial.study._storage.get_trial(trial._trial_id)  # its attributes as queued (member, resume)
        member = member_of(mine, self.grid)
        if not self._needed(trial, member):
            trial.set_user_attr(SKIPPED, True)
            raise Skipped()
        overrides = [f"{k}={v}" for k, v in values.items()] + ([f"train.device={self.device}"] if self.device else [])
        for key, value in dict(member=member, values=values, host=HOST, pid=os.getpid(), device=self.device).items():
            trial.set_user_attr(key, value)
        self.on_start()
        pruning = Pruning(trial, self.group.spec["metric"])
        retried = mine.user_attrs.get("run") if "failed_trial" in mine.system_attrs else None  # its worker died
        again = self.group.member(mine.user_attrs.get("resume") or retried)
        try:
            with self.training():
                ended = again.info() if again is not None else {}
                if ended.get("status") in ("completed", "pruned"):  # it ended, but a signal came before its trial
                    result = pruning.replay(again, ended)  # was told: its validations, reported again
                elif again is not None:  # an interrupted member: its own run, from its last checkpoint
                    command = shlex.join(["rnnctl", "train", "--resume", str(again.path)])
                    result = loop.resume(str(again.path), None, command, [], callbacks=[pruning])
                else:
                    name = member_name(member, values) if self.grid is not None else f"trial-{member:04d}"
                    cfg = load_config(self.group.config, [*overrides, f"name={name}"])
                    command = shlex.join(["rnnctl", "train", str(self.group.config),
                                          *(f"--set={o}" for o in overrides), "--name", name])  # fmt: skip
                    result = loop.train(cfg, command, [], root=self.group.runs, callbacks=[pruning],
                                        overrides=overrides)  # fmt: skip
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the member is interrupted; --resume continues its run
            with deferred_interrupt():
                trial.set_user_attr("interrupted", True)
            raise
        except (ConfigError, StorageError):
            raise  # the same for every member (a --metric the task lacks) or the machine's (a full disk): stop
        except RnnctlError as e:  # this member's own failure (diverged, its data missing): the others go on
            with deferred_interrupt():
                trial.set_user_attr("error", first_line(e)[:500])
            raise Failed() from None
        if result["status"] == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {result.get('pruned', {}).get('epoch')}")
        if not pruning.values:
            return float("nan")  # Optuna records a trial with no finite value as failed
        return max(pruning.values) if self.group.spec["direction"] == "maximize" else min(pruning.values)

    def _needed(self, trial: optuna.Trial, member: int) -> bool:
        """A member is trained by one trial: one that finds it done, or taken by a lower-numbered running trial,
        steps aside; so does a search's new point once the study has its N members, however many workers ask."""
        done = ("completed", "pruned")
        others = [t for t in counted(trial.study.get_trials(deepcopy=False)) if t.number != trial.number]
        for t in others:
            if member_of(t, self.grid) == member and (
                status(t) in done or t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number
            ):
                return False
        if self.grid is not None:
            return member >= 0
        mine = trial.study._storage.get_trial(trial._trial_id)
        if {"resume"} & set(mine.user_attrs) or {"failed_trial", "fixed_params"} & set(mine.system_attrs):
            return True  # a member's continuation or retry, or a point queued by hand
        taken = {
            member_of(t, None) for t in others
            if status(t) in (*done, "pending", "interrupted") or status(t) == "running" and t.number < trial.number
        }  # fmt: skip
        return len(taken) < self.trials

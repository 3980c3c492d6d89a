"""The processes that train a group's members: this one (`--jobs 1`), one per job or device here, and any
process elsewhere given the same storage; each takes queued or sampled trials until the group has its members.
A worker holds SIGINT/SIGTERM while it talks to the storage and lets one cut only a member's training (the run
stays resumable); the driving process passes a signal on to its workers, waits for them and stops the same way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Any, Callable

import optuna
from optuna.storages._heartbeat import fail_stale_trials, get_heartbeat_thread

from rnnctl.config import load_config
from rnnctl.errors import RunError
from rnnctl.groups import trials as tr
from rnnctl.groups.folder import GroupFolder
from rnnctl.groups.space import Param, combinations, parse_param
from rnnctl.groups.storage import open_study, quiet
from rnnctl.runtime import Signals

MAX_FAILED_IN_A_ROW = 5  # a worker stops after this many failed members in a row (data every member lacks)
MAX_WAIT_S = 120  # how long the driving process waits for a signalled worker to record its run
POLL_S = 0.5


def space(group: GroupFolder) -> list[Param]:
    if group.spec.get("grid") is not None:
        return [Param(k, "choice", choices=tuple(v)) for k, v in group.spec["grid"].items()]
    return [parse_param(k, v, f"{group.path}: space.{k}") for k, v in group.spec["space"].items()]


def make_pruner(spec: dict[str, Any], epochs: int):
    """`median`: a member worse than the median of the others at the same point stops, once `after` members
    completed and past `warmup` of its epochs; `hyperband`: successive halving from `warmup` on; `none`."""
    name, after, warmup = spec["pruner"], spec["prune_after"], spec["prune_warmup"]
    first = max(1, round(100 * epochs * warmup))  # steps are hundredths of an epoch
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=after, n_warmup_steps=first)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=100 * epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def load(group: GroupFolder, index: int) -> optuna.Study:
    """The group's study as worker `index` uses it: a search samples with TPE (seeded by the config's seed,
    the trials so far and the worker, so a resumed study samples anew) and prunes; a sweep's trials are queued."""
    spec, cfg = group.spec, load_config(group.config)
    if spec.get("grid") is not None:
        return open_study(group, optuna.samplers.RandomSampler(seed=index), optuna.pruners.NopPruner())
    seed = (cfg.train.seed * 7919 + len(open_study(group).get_trials(deepcopy=False)) * 31 + index) % 2**32
    return open_study(group, optuna.samplers.TPESampler(seed=seed), make_pruner(spec, cfg.train.epochs))


def target(group: GroupFolder) -> int:
    """How many members the group asks for: every grid point, or a search's --trials."""
    grid = group.spec.get("grid")
    return len(combinations(grid)) if grid is not None else group.spec["trials"]


def has_work(group: GroupFolder, trials: list) -> bool:
    """Something queued, or (a search) fewer members finished, running or interrupted than it asks for."""
    waiting = any(t.state.name == "WAITING" for t in trials)
    if waiting or group.spec.get("grid") is not None:
        return waiting
    return sum(tr.status(t) != "failed" for t in tr.latest(trials, None).values()) < target(group)


def work(group: GroupFolder, index: int, device: str | None, timeout: float | None, on_change: Callable) -> None:
    """Train the group's members in this process until there is nothing left to do here (or `timeout`)."""
    from rnnctl.tasks import get_task

    get_task(load_config(group.config).task)  # the task imports before any member's clock starts
    began, failures, State = time.monotonic(), 0, optuna.trial.TrialState
    with Signals() as signals, quiet():
        s = load(group, index)
        objective = tr.Objective(group, space(group), target(group), device, signals.training, on_change)
        while True:
            signals.check()
            fail_stale_trials(s)  # a trial whose worker died: failed, its values queued again
            late = timeout is not None and time.monotonic() - began > timeout
            if late or not has_work(group, s.get_trials(deepcopy=False)):
                return
            trial, state, value, skipped = s.ask(), State.FAIL, None, False
            try:
                with get_heartbeat_thread(trial._trial_id, s._storage):
                    value, state = objective(trial), State.COMPLETE
            except optuna.TrialPruned:
                state = State.PRUNED
            except tr.Skipped:
                skipped = True
            except tr.Failed:
                pass
            finally:
                s.tell(trial, value, state)
                on_change()
            failures = failures if skipped else failures + 1 if state == State.FAIL or value != value else 0
            if failures >= MAX_FAILED_IN_A_ROW:
                why = s._storage.get_trial(trial._trial_id).user_attrs.get("error") or "see the members' run folders"
                raise RunError(f"{failures} members in a row failed; the last: {why}")


def drive(group: GroupFolder, slots: list[str | None], timeout: float | None, on_change: Callable[[], None]) -> None:
    """The group's members: in this process for one slot, else in one worker process per slot (each with
    cpu_count // slots threads), `on_change` called as the storage changes."""
    if len(slots) == 1:
        return work(group, 0, slots[0], timeout, on_change)
    threads = str(max((os.cpu_count() or 1) // len(slots), 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    procs = []
    with Signals() as signals:
        for i, device in enumerate(slots):
            cmd = [sys.executable, "-m", "rnnctl.cli", "worker", str(group.path), "--index", str(i)]
            cmd += [*(["--timeout", f"{timeout}s"] if timeout else []), *(["--device", device] if device else [])]
            with group.worker_log(i).open("w", encoding="utf-8") as log:  # each worker in a session of its own:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,  # a terminal's
                                              start_new_session=True))  # Ctrl-C reaches them once, from here # fmt: skip
        while any(p.poll() is None for p in procs) and not signals.caught:
            time.sleep(POLL_S)
            on_change()
        if signals.caught:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signals.caught)
            deadline = time.monotonic() + MAX_WAIT_S
            for p in procs:
                try:
                    p.wait(timeout=max(deadline - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    p.kill()
            on_change()
            signals.check()
    on_change()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            log = group.worker_log(i, new=False)
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log else []
            why = next((ln[7:] for ln in reversed(lines) if ln.startswith("error: ")), None)
            raise RunError(f"worker {i} exited with code {p.returncode}{': ' + why if why else ''} (see {group.logs})")

"""Making, joining, resuming and driving a group: what `rnnctl sweep` and `rnnctl search` call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna

from rnnctl.config import apply_overrides, config_path, dump_yaml, load_config, load_yaml
from rnnctl.errors import ConfigError
from rnnctl.groups import results, trials, workers
from rnnctl.groups.folder import GroupFolder
from rnnctl.groups.space import check, direction, parse_grid, parse_space
from rnnctl.groups.storage import open_study, quiet, shown_url, storage
from rnnctl.runs import safe_name
from rnnctl.runtime import Signals, deferred_interrupt

PRUNERS = ("median", "hyperband", "none")
MAX_TRIALS = 100_000
SAME = ("kind", "config_text", "grid", "space", "metric", "direction")  # what every worker of a study must share


def create(kind: str, config: Path, items: list[str], overrides: list[str] = (), name: str | None = None,
           storage: str | None = None, metric: str | None = None, trials: int | None = None,
           pruner: tuple[str, int, float] = ("none", 0, 0.0)) -> GroupFolder:  # fmt: skip
    """A sweep (`items`: --grid) or a search (`items`: --space, and the config's `search:`) of `config` with
    `overrides` (--set), checked before anything trains. A named group that exists is joined (the same command
    again, or another machine with the same --storage); another config, grid, space or metric is an error."""
    from rnnctl.tasks import get_task

    config = config_path(config)  # a file, or a shipped config's name
    cfg = load_config(config, overrides)
    text = config.read_text(encoding="utf-8")
    raw = load_yaml(text) or {}
    if overrides:
        text = f"# {config} with --set {' --set '.join(overrides)}\n" + dump_yaml(apply_overrides(raw, overrides))
    grid = parse_grid(items) if kind == "sweep" else None
    space = [] if grid is not None else parse_space(items, raw.get("search"), config)
    check(config, list(overrides), grid, space)
    task = get_task(cfg.task)
    metric = metric or f"val_{task.monitor}"
    if pruner[0] not in PRUNERS:
        raise ConfigError(f"--pruner {pruner[0]!r}: expected one of {', '.join(PRUNERS)}")
    _check_trials(trials)
    if name is not None and (safe_name(name) != name or name.startswith(".")):
        raise ConfigError(f"--study {name!r}: use letters, digits and -_. only")
    spec = {
        "kind": "sweep" if grid is not None else "study", "config": str(config.resolve()), "config_text": text,
        "overrides": list(overrides), "grid": grid, "space": {p.key: p.spec for p in space} if grid is None else None,
        "metric": metric, "direction": direction(metric, task.monitor, task.monitor_mode), "storage": storage,
        "trials": (trials or 20) if grid is None else None,
        "pruner": pruner[0], "prune_after": pruner[1], "prune_warmup": pruner[2],
    }  # fmt: skip
    name = name or (config.stem if kind == "study" else None)
    group = GroupFolder(GroupFolder.root(spec["kind"]) / name) if name else None
    if group is not None and group.exists():
        old = group.spec
        differs = [k for k in (*SAME, "storage") if old.get(k) != spec[k]]
        if differs:
            raise ConfigError(
                f"{group.kind} {name!r} ({group.path}) was started with another {', '.join(differs)}: "
                f"continue it with the same command, or start a new one with --study NEW_NAME"
            )
        keep = ("trials", "pruner", "prune_after", "prune_warmup")  # how many, and how to prune, may change
        spec = {**old, **{k: spec[k] for k in keep}, "trials": trials or old["trials"]}
    else:
        group = GroupFolder.create(spec["kind"], name, config.stem)
        group.write("config", text)
    group.write_spec(spec)
    _join(group)
    return group


def _join(group: GroupFolder) -> None:
    """The group's Optuna study, made or joined; a study of that name made for another group is refused."""
    mine = {k: group.spec[k] for k in SAME}
    with quiet(), deferred_interrupt():
        s = optuna.create_study(
            study_name=group.name, storage=storage(group), direction=group.spec["direction"], load_if_exists=True
        )
        stored = s.user_attrs.get("rnnctl")
        if stored is None:
            s.set_user_attr("rnnctl", mine)  # a worker on another machine checks its group against this
        elif stored != mine:
            differs = ", ".join(k for k in mine if stored.get(k) != mine[k])
            raise ConfigError(
                f"study {group.name!r} in {shown_url(group.storage_url())} was started with another {differs}: "
                "use the same config and grid or space, or another --study"
            )


def resolve(ref: str, kind: str, trials: int | None = None) -> GroupFolder:
    """A sweep or study by name or folder; `trials`: a search's new total (more trials for a finished study)."""
    group = GroupFolder.resolve(ref, (kind,))
    if _check_trials(trials) is not None:
        group.write_spec({**group.spec, "trials": trials})
    return group


def _check_trials(trials: int | None) -> int | None:
    if trials is not None and not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"--trials {trials}: expected 1 to {MAX_TRIALS:,}")
    return trials


def run(
    group: GroupFolder,
    jobs: int = 1,
    devices: list[str] | None = None,
    timeout: float | None = None,
    on_event: Callable[[dict], None] = lambda event: None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Make the group whole (trials.requeue), train what is left with `jobs` workers (or one per device), and
    summarize; its lock refuses a second driver. A stop signal stops every worker and raises with `resume` set."""
    slots = devices or [None] * jobs
    stop: KeyboardInterrupt | None = None
    with group.lock(), Signals() as signals:  # held outside the members' training: files stay whole
        with quiet():
            s = open_study(group)
            trials.requeue(s, group)
            left = workers.has_work(group, s.get_trials(deepcopy=False))
        if left:
            progress = results.Progress(group, len(slots), workers.target(group), on_event)
            try:
                workers.drive(group, slots, timeout, progress)
            except KeyboardInterrupt as e:
                stop = e
        summary = results.summarize(group, metric)
        try:
            signals.check()  # a signal during the wrap-up: the result is written, then the group stops
        except KeyboardInterrupt as e:
            stop = stop or e
    if stop is not None:
        stopped = type(stop)()  # the group's own: what continues it is the group, not one member's run
        stopped.resume = f"rnnctl {'sweep' if group.kind == 'sweep' else 'search'} --resume {group.name}"
        raise stopped from None
    return {**summary, "nothing_left": not left}

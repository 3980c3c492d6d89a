"""Sweeps: every combination of a grid of config values, each trained as its own run.

A sweep is an Optuna study with a grid sampler, run by search.py's machinery: its trials are the members,
`--jobs N` worker processes share it here, and every machine given the same `--study` and `--storage`
joins it. A sweep folder `runs/sweeps/<time>-<config>/` (or `runs/sweeps/<study>/`) holds sweep.json
(config, grid, members and their state), study.json (how its trials run), the storage study.db unless
--storage names another, the members' run folders under runs/, the workers' logs, and the summary
(summary.json, summary.png). A member that fails is recorded and the others go on.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

from rnnctl.config import config_path, load_config
from rnnctl.errors import ConfigError, RunError
from rnnctl.runs import FolderLock, RunFolder, atomic_write, new_folder, read_json, runs_root, safe_name, sweeps_root
from rnnctl.search import member_name  # noqa: F401  (a sweep member's run name; tests and callers use it here)

MAX_MEMBERS = 1000  # combinations in one sweep


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`--grid model.cell=rnn,lstm` -> {"model.cell": ["rnn", "lstm"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    return grid


def create(config: Path, grid_items: list[str], storage: str | None = None, study: str | None = None) -> Path:
    """The sweep folder and its study; with `study`, the folder runs/sweeps/<study>/ and the Optuna study of
    that name, joined when they exist (the same command on another machine with the same --storage)."""
    from rnnctl.tasks import get_task

    config = config_path(config)  # a file, or a shipped config's name
    grid = parse_grid(grid_items)
    if not grid:
        raise ConfigError("sweep: give at least one --grid key=v1,v2")
    n = math.prod(len(v) for v in grid.values())
    if n > MAX_MEMBERS:
        raise ConfigError(f"--grid: {n:,} combinations are too many for one sweep (at most {MAX_MEMBERS:,})")
    members = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for m in members:  # every combination is a valid config before anything trains
        try:
            load_config(config, [f"{k}={v}" for k, v in m.items()])
        except ConfigError as e:
            what = " ".join(f"{k}={v}" for k, v in m.items())
            raise ConfigError(f"--grid {what}: {str(e).splitlines()[0]}") from None
    if study is not None and (safe_name(study) != study or study.startswith(".")):
        raise ConfigError(f"--study {study!r}: use letters, digits and -_. only")
    text = config.read_text(encoding="utf-8")
    if study is not None and (sweeps_root() / study / "sweep.json").is_file():
        folder = sweeps_root() / study
        old = read_json(folder / "sweep.json")
        if old["grid"] != grid or (folder / "config.yaml").read_text(encoding="utf-8") != text:
            raise ConfigError(f"sweep {study!r} ({folder}) has another config or grid: give another --study")
    else:
        folder = sweeps_root() / study if study else new_folder(sweeps_root(), config.stem, what="sweep")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(config, folder / "config.yaml")
        state = {
            "config": str(config.resolve()),
            "grid": grid,
            "members": [{"set": m, "status": "pending"} for m in members],
        }
        atomic_write(folder / "sweep.json", json.dumps(state, indent=2) + "\n")
    task = get_task(load_config(config).task)
    _study(folder, grid, study or folder.name, storage, f"val_{task.monitor}", task.monitor_mode)
    return folder


def _study(folder: Path, grid: dict[str, list[str]], name: str, storage: str | None, metric: str, mode: str):
    """study.json (what search.py needs to run the members as trials) and the Optuna study itself."""
    import optuna

    from rnnctl import search

    spec = {"name": name, "grid": grid, "metric": metric, "direction": "maximize" if mode == "max" else "minimize",
            "pruner": "none", "storage": storage}  # fmt: skip
    if not (folder / "study.json").is_file():
        atomic_write(folder / "study.json", json.dumps(spec, indent=2) + "\n")
    found = search.resolve_study(str(folder))
    with search.quiet():
        s = optuna.create_study(
            study_name=found.name, storage=found.open(), direction=spec["direction"], load_if_exists=True
        )
        mine = {"grid": grid, "config_text": (folder / "config.yaml").read_text(encoding="utf-8")}
        stored = s.user_attrs.get("rnnctl_sweep")
        if stored is None:
            s.set_user_attr("rnnctl_sweep", mine)
        elif stored != mine:
            raise ConfigError(
                f"study {found.name!r} in {search.shown_url(found.storage_url())} is another sweep: give another --study"
            )
    return found


def parse_devices(spec: str | None) -> list[str] | None:
    """`--devices cuda:0,cuda:1`, `auto` (every CUDA GPU) or None; each listed device is one member's slot."""
    if spec is None:
        return None
    import torch

    if spec.strip() == "auto":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError("--devices auto: this machine has no CUDA GPU (use --jobs to run members side by side)")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for d in devices:
        kind, _, index = d.partition(":")
        if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise ConfigError(f"--devices: {d!r} is not a device (expected cpu, cuda, cuda:N or mps, comma-separated)")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--devices: {d} does not exist here ({torch.cuda.device_count()} CUDA GPUs)")
    if not devices:
        raise ConfigError("--devices: give at least one device, e.g. cuda:0,cuda:1, or auto")
    return devices


def run(
    folder: Path,
    jobs: int,
    on_member: Callable[[dict[str, Any]], None],
    devices: list[str] | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Train every member not yet completed as a trial of the sweep's study: `jobs` worker processes (or
    one per device) each with cpu_count // jobs threads. A member that failed before (or that sweep.json
    says is not completed) is queued again. The sweep folder is locked for the while: a second
    `sweep --resume` of the same sweep gets one line instead of training members twice."""
    from rnnctl import search

    with FolderLock(folder, what="sweep"):
        state = read_json(folder / "sweep.json")
        if not (folder / "study.json").is_file():  # a sweep from before sweeps were studies
            from rnnctl.tasks import get_task

            task = get_task(load_config(folder / "config.yaml").task)
            _study(folder, state["grid"], folder.name, None, f"val_{task.monitor}", task.monitor_mode)
        study = search.resolve_study(str(folder))
        s = study.load()
        record = {json.dumps(m["set"], sort_keys=True): m for m in state["members"]}
        tried = _latest_trials(s)
        again = []
        for key, m in record.items():
            t = tried.get(key)
            if m["status"] != "completed" and t is not None and t.state.is_finished():
                again.append(m["set"])  # the grid sampler hands out each point once: queue it by hand
            elif m["status"] == "completed" and t is None:
                done = study.spec.setdefault("done", [])  # trained before the study existed: not again
                if m["set"] not in done:
                    done.append(m["set"])
        for values in again:
            s.enqueue_trial(values, skip_if_exists=False)
        atomic_write(folder / "study.json", json.dumps(study.spec, indent=2) + "\n")

        def on_trial(t: dict[str, Any]) -> None:
            m = record.get(json.dumps({k: str(v) for k, v in t["params"].items()}, sort_keys=True))
            if m is None:
                return
            m.update(status="completed" if t["status"] == "completed" else "failed", run=t.get("run"))
            m["error"] = (
                None if t["status"] == "completed" else (t.get("error") or f"trial {t['number']} {t['status']}")
            )
            if t.get("device"):
                m["device"] = t["device"]
            m["elsewhere"] = bool(t.get("run")) and not (folder / "runs" / t["run"]).is_dir()  # another machine's
            atomic_write(folder / "sweep.json", json.dumps(state, indent=2) + "\n")
            on_member(m)

        search.run(study, len(record), jobs, None, devices, on_trial)
        for key, t in _latest_trials(study.load()).items():  # trials of other machines and workers
            m = record.get(key)
            if m is not None and t.state.is_finished() and m["status"] == "pending":
                on_trial(search.trial_row(t))
    return summarize(folder, metric)


def _latest_trials(s) -> dict[str, Any]:
    """The newest trial of each grid point (a retry after a failure is newer), by its values."""
    from rnnctl.search import SKIPPED

    latest: dict[str, Any] = {}
    for t in s.get_trials(deepcopy=False):
        if t.params and not t.system_attrs.get(SKIPPED):
            latest[json.dumps({k: str(v) for k, v in t.params.items()}, sort_keys=True)] = t
    return latest


def summarize(folder: Path, metric: str | None = None) -> dict[str, Any]:
    """Group members by the swept keys other than the seed: mean and std of each group's best validation
    `metric` (default: the one the task picks its best epoch by), best group first; the test figure of the
    same name is shown beside it, never ranked on. One overlay plot of all curves."""
    from rnnctl import plots
    from rnnctl.search import direction

    state = read_json(folder / "sweep.json")
    keys = [k for k in state["grid"] if k != "train.seed"]
    groups: dict[str, list[float]] = {}
    tests: dict[str, list[float]] = {}
    elsewhere = 0
    goal = None
    curves = []
    for m in state["members"]:
        if m["status"] != "completed" or not m.get("run"):
            continue
        member = RunFolder(folder / "runs" / m["run"])
        if not member.exists():
            elsewhere += 1
            continue  # trained by another machine of a shared sweep: its run folder is there
        info, rows = member.info(), member.rows()
        best = info.get("best") or {}
        monitored = best.get("metric", "val_loss")
        if metric is None:  # the task's; a regressor's loss is in scaled units: rank by its MSE in the data's
            metric = "val_mse" if monitored == "val_loss" and rows and "val_mse" in rows[0] else monitored
        goal = direction(metric, monitored.removeprefix("val_"), best.get("mode", "min"))
        if metric == monitored:
            value = best.get("value")
        else:
            values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float))]
            if not values:
                known = ", ".join(k for k in (rows[0] if rows else {}) if k.startswith("val_"))
                raise ConfigError(f"--metric {metric}: the members log {known}")
            value = max(values) if goal == "maximize" else min(values)
        label = ", ".join(f"{k}={m['set'][k]}" for k in keys) or "all"
        groups.setdefault(label, []).append(value)
        test = (info.get("test") or {}).get(metric.removeprefix("val_"))
        if isinstance(test, (int, float)):
            tests.setdefault(label, []).append(test)
        curves.append((m["run"], rows))
    rows = [
        {
            "group": g, "n": len(v), "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "test_mean": statistics.fmean(tests[g]) if g in tests else None,
        }
        for g, v in groups.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: -r["mean"] if goal == "maximize" else r["mean"])  # the best group first
    failed = [{"set": m["set"], "error": m.get("error")} for m in state["members"] if m["status"] == "failed"]
    summary = {
        "metric": metric, "direction": goal, "groups": rows, "failed": failed, "members": len(state["members"]),
        "elsewhere": elsewhere,  # completed members whose runs another machine of a shared sweep holds
    }  # fmt: skip
    if curves:
        plots.compare(curves, metric, folder / "summary.png")
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2, default=lambda x: None) + "\n")
    return {**summary, "dir": str(folder)}


def resolve_sweep(ref: str) -> Path:
    path = Path(ref)
    if not (path / "sweep.json").is_file():
        path = sweeps_root() / ref
    if not (path / "sweep.json").is_file():
        raise RunError(f"unknown sweep {ref!r}: no sweep.json there or in {runs_root()}/sweeps/")
    return path


def resolve_group(ref: str) -> tuple[str, Path] | None:
    """A sweep's or a search study's folder from its name or path, as ("sweep" | "study", folder); None when
    `ref` names neither. A sweep folder holds a study.json too, so the sweep is tried first."""
    from rnnctl.search import resolve_study

    for kind, resolve in (("sweep", resolve_sweep), ("study", lambda r: resolve_study(r).folder)):
        try:
            return kind, resolve(ref)
        except RunError:
            continue
    return None

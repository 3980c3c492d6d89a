"""Sweeps: every combination of a grid of config values, each trained as its own run, in parallel processes.

A sweep folder `runs/sweeps/<time>-<config>/` holds sweep.json (config, grid, members and their state),
the members' run folders under runs/, one log per member, and the summary (summary.json, summary.png).
Members run as `rnnctl train` subprocesses, so one that fails is reported and the others go on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from rnnctl.config import config_path, load_config
from rnnctl.errors import ConfigError, RunError
from rnnctl.runs import FolderLock, RunFolder, atomic_write, new_folder, read_json, runs_root, safe_name, sweeps_root


MAX_MEMBERS = 1000  # combinations in one sweep
NAME_VALUE = 24  # characters of each key and value in a member's name
NAME_MAX = 100  # characters of the whole name: a run folder's and a log's name stay far below 255 bytes


def member_name(i: int, values: dict[str, str]) -> str:
    """Member i's run name and log file stem, e.g. `003-cell=lstm-path=b-y.csv`: ASCII letters, digits and
    `-_.=` only, each value cut to its last NAME_VALUE characters (a path's end tells members apart). The
    index keeps names unique; sweep.json keeps the full values."""
    parts = (f"{key.split('.')[-1][:NAME_VALUE]}={value[-NAME_VALUE:]}" for key, value in values.items())
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", "-".join(parts))
    return re.sub(r"-{2,}", "-", f"{i:03d}-{slug}")[:NAME_MAX].rstrip("-.")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`--grid model.cell=rnn,lstm` -> {"model.cell": ["rnn", "lstm"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    return grid


def create(config: Path, grid_items: list[str]) -> Path:
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
    folder = new_folder(sweeps_root(), config.stem, what="sweep")
    shutil.copy(config, folder / "config.yaml")
    state = {
        "config": str(config.resolve()),
        "grid": grid,
        "members": [{"set": m, "status": "pending"} for m in members],
    }
    atomic_write(folder / "sweep.json", json.dumps(state, indent=2) + "\n")
    return folder


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
    """Train every member not yet completed, `jobs` at a time, each with cpu_count // jobs threads; with
    `devices`, one member per device at a time (`--set train.device=...`). The sweep folder is locked for
    the while: a second `sweep --resume` of the same sweep gets one line instead of training members twice."""
    state = read_json(folder / "sweep.json")
    todo = [i for i, m in enumerate(state["members"]) if m["status"] != "completed"]
    slots: queue.Queue[str | None] = queue.Queue()
    for device in devices or [None] * jobs:
        slots.put(device)
    jobs = slots.qsize()
    threads = max((os.cpu_count() or 1) // jobs, 1)
    lock = threading.Lock()

    def save() -> None:
        atomic_write(folder / "sweep.json", json.dumps(state, indent=2) + "\n")

    def train(i: int) -> None:
        member = state["members"][i]
        name = member_name(i, member["set"])
        cmd = [sys.executable, "-m", "rnnctl.cli", "train", str(folder / "config.yaml"), "--quiet", "--name", name]
        for k, v in member["set"].items():
            cmd += ["--set", f"{k}={v}"]
        device = slots.get()
        if device is not None:
            cmd += ["--set", f"train.device={device}"]
        env = {
            **os.environ,
            "RNNCTL_RUNS": str(folder / "runs"),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        log = folder / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        try:
            with log.open("w", encoding="utf-8") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        finally:
            slots.put(device)
        # the member's folder is the newest one with its (unique) name; parallel members make others
        new = sorted((folder / "runs").glob(f"*-{safe_name(name)}")) if (folder / "runs").exists() else []
        error = next((ln[7:] for ln in log.read_text(encoding="utf-8").splitlines() if ln.startswith("error: ")), None)
        with lock:
            member.update(status="completed" if rc == 0 else "failed", run=new[-1].name if new else None, exit_code=rc)
            member["error"] = None if rc == 0 else (error or f"exit code {rc}, see {log}")
            if device is not None:
                member["device"] = device
            save()
            on_member(member)

    with FolderLock(folder, what="sweep"), ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(train, todo))
    return summarize(folder, metric)


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
    goal = None
    curves = []
    for m in state["members"]:
        if m["status"] != "completed" or not m.get("run"):
            continue
        member = RunFolder(folder / "runs" / m["run"])
        info, rows = member.info(), member.rows()
        best = info.get("best") or {}
        monitored = best.get("metric", "val_loss")
        metric = metric or monitored
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
    summary = {"metric": metric, "direction": goal, "groups": rows, "failed": failed, "members": len(state["members"])}
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

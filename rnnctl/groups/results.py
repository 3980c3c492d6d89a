"""What a group has: a line per member start and finish while it trains, and its result files after
(trials.csv, best.yaml, summary.json, a sweep's groups over seeds and curves, a search's Optuna figures)."""

from __future__ import annotations

import collections
import statistics
import time
from typing import Any, Callable

from rnnctl import plots
from rnnctl.config import dump_yaml, load_config
from rnnctl.errors import ConfigError
from rnnctl.groups import trials as tr
from rnnctl.groups.folder import GroupFolder
from rnnctl.groups.space import direction
from rnnctl.groups.storage import open_study, quiet, shown_url
from rnnctl.runs import table_text

FINAL = ("completed", "pruned", "failed", "interrupted")
MIN_FOR_IMPORTANCE = 4  # completed members before a parameter-importance figure means anything


class Progress:
    """Turns the storage's changes into events: a member started (`start`) or ended (`finish`, with its
    value, time, how many are done and the group's ETA from the mean member time and the workers here)."""

    def __init__(self, group: GroupFolder, workers: int, total: int, on_event: Callable[[dict], None]):
        self.group, self.workers, self.total, self.on_event = group, workers, total, on_event
        self.study, self.began = open_study(group), time.monotonic()
        self.seen = {r["member"]: (r["status"], r["trial"]) for r in self.rows()}

    def rows(self) -> list[dict[str, Any]]:
        with quiet():
            return tr.members(self.study.get_trials(deepcopy=False), self.group.spec.get("grid"))

    def __call__(self) -> None:
        rows = self.rows()
        done = [r for r in rows if r["status"] in ("completed", "pruned")]
        times = [r["seconds"] for r in done if r["seconds"]]
        eta = statistics.fmean(times) * max(self.total - len(done), 0) / self.workers if times else None
        for r in rows:
            now = (r["status"], r["trial"])
            if self.seen.get(r["member"]) != now and r["status"] in (*FINAL, "running"):
                kind = "start" if r["status"] == "running" else "finish"
                self.on_event({**r, "event": kind, "done": len(done), "total": self.total, "eta": eta,
                               "elapsed": time.monotonic() - self.began, "metric": self.group.spec["metric"]})  # fmt: skip
            self.seen[r["member"]] = now


def summarize(group: GroupFolder, metric: str | None = None) -> dict[str, Any]:
    """trials.csv, best.yaml (the best member's resolved config) and summary.json; a sweep ranks its groups by
    their members' best `metric` and draws their curves, a search draws Optuna's figures."""
    spec, grid = group.spec, group.spec.get("grid")
    with quiet():
        s = open_study(group)
        rows = tr.members(s.get_trials(deepcopy=False), grid)
    keys = list(grid or spec["space"])
    group.write("trials", table_text(
        ["member" if grid else "trial", "status", spec["metric"], *keys, "seconds", "run", "host"],
        [[r["member"], r["status"], r["value"], *(r["values"].get(k) for k in keys), r["seconds"], r["run"], r["host"]]
         for r in rows],
    ))  # fmt: skip
    complete = [r for r in rows if r["status"] == "completed" and r["value"] is not None]
    best = None
    if complete:
        pick = max if spec["direction"] == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
        cfg = load_config(group.config, [f"{k}={v}" for k, v in best["values"].items()]).to_dict()
        cfg["name"] = f"{group.name}-best"
        head = f"# The best member of {group.kind} {group.name}: {spec['metric']} {best['value']:.4f}.\n"
        group.write("best", head + f"# Train it with: rnnctl train {group.file('best')}\n" + dump_yaml(cfg))
    counts = dict(collections.Counter(r["status"] for r in rows))
    summary = {
        "kind": group.kind, "name": group.name, "metric": spec["metric"], "direction": spec["direction"],
        "counts": counts, "best": best, "storage": shown_url(group.storage_url()),
    }  # fmt: skip
    if grid is not None:
        summary.update(_groups(group, rows, metric))
    elif complete:
        drawn = ["history", "parallel"] + (["importance"] if len(complete) >= MIN_FOR_IMPORTANCE else [])
        plots.study(s, {stem: group.plot_path(stem) for stem in drawn}, spec["metric"])
    written = group.write("summary", summary)
    return {**summary, "members": rows, "dir": str(group.path), "plots": [str(p) for p in group.plots()],
            "summary_json": str(written),
            "best_yaml": str(group.file("best")) if best else None}  # fmt: skip


def _groups(group: GroupFolder, rows: list[dict[str, Any]], metric: str | None) -> dict[str, Any]:
    """A sweep's members grouped by the swept keys other than the seed, best group first."""
    keys = [k for k in group.spec["grid"] if k != "train.seed"]
    values: dict[str, list[float]] = {}
    tests: dict[str, list[float]] = {}
    curves, goal, elsewhere = [], None, 0
    for r in rows:
        run = group.member(r["run"]) if r["status"] == "completed" else None
        if run is None:
            elsewhere += r["status"] == "completed"  # trained by another machine of a shared sweep
            continue
        info, metrics = run.info(), run.rows()
        best = info.get("best") or {}
        monitored = best.get("metric", "val_loss")
        if metric is None:  # the task's; a regressor's loss is in scaled units: rank by its MSE in the data's
            metric = "val_mse" if monitored == "val_loss" and metrics and "val_mse" in metrics[0] else monitored
        goal = direction(metric, monitored.removeprefix("val_"), best.get("mode", "min"))
        found = [m[metric] for m in metrics if isinstance(m.get(metric), (int, float))]
        if not found:
            known = ", ".join(k for k in (metrics[0] if metrics else {}) if k.startswith("val_"))
            raise ConfigError(f"--metric {metric}: the members log {known}")
        label = ", ".join(f"{k}={r['values'][k]}" for k in keys) or "all"
        values.setdefault(label, []).append(max(found) if goal == "maximize" else min(found))
        test = (info.get("test") or {}).get(metric.removeprefix("val_"))
        if isinstance(test, (int, float)):
            tests.setdefault(label, []).append(test)
        curves.append((label if keys else run.id, metrics))
    ranked = [
        {"group": g, "n": len(v), "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
         "test_mean": statistics.fmean(tests[g]) if g in tests else None}
        for g, v in values.items()
    ]  # fmt: skip
    ranked.sort(key=lambda r: -r["mean"] if goal == "maximize" else r["mean"])
    if curves:
        plots.compare(curves, metric, group.plot_path("summary"))
    return {"groups": ranked, "group_metric": metric, "group_direction": goal, "elsewhere": elsewhere}

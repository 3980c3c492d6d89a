"""Ensembles: the completed members of a sweep or a search study, evaluated and asked for predictions as one
model. Classifiers and language models average the members' probabilities; regressors their predictions
(what a task's `averages` says). `top` keeps the K members best on their validation metric.

Every member runs its own model on batches from its own data preparation (a member with `model.ngrams` needs
its n-gram bags), served in stored order with one batch size; the batches must hold the same examples with
the same targets, which members that share the task and the data section of their config do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rnnctl.errors import RunError
from rnnctl.inference import NO_INPUTS, Inference, LoadedRun, config_differences
from rnnctl.models import Output, mean_probability
from rnnctl.groups.folder import GroupFolder, ensemble_stem
from rnnctl.runs import RunFolder, now
from rnnctl.tasks.base import Forecasts, Predicts
from rnnctl.training import fp32

EVERY_CLASS = 2**31 - 1  # `top` that makes a task's predict rank every class


def combine(logits: list[torch.Tensor], averages: str) -> torch.Tensor:
    """The members' outputs as one: the log of their mean probability (valid logits: softmax gives that mean
    back, and its cross-entropy is the ensemble's NLL), or their mean value."""
    if averages == "values":
        return torch.stack(logits).mean(0)
    return mean_probability(logits)


def ranked_members(group: GroupFolder) -> tuple[list[tuple[RunFolder, float]], str, str]:
    """The group's completed members with their best validation value, best first; the metric and its mode."""
    done = []
    for run in group.members():
        info = run.info()
        best = info.get("best") or {}
        if info.get("status") == "completed" and isinstance(best.get("value"), (int, float)):
            done.append((run, best))
    if not done:
        raise RunError(f"{group.path}: no completed member with a validation metric yet: nothing to ensemble")
    metric, mode = done[0][1].get("metric", "val_loss"), done[0][1].get("mode", "min")
    done.sort(key=lambda rb: rb[1]["value"] if mode == "min" else -rb[1]["value"])
    return [(run, best["value"]) for run, best in done], metric, mode


class Ensemble:
    """A sweep's or study's completed members, each restored from one of its checkpoints (an `Inference`,
    like a saved run)."""

    def __init__(self, group: GroupFolder, top: int | None = None, checkpoint: str = "best", device: str = "auto"):
        if top is not None and top < 1:
            raise RunError(f"--top-members {top}: must be at least 1")
        self.group, self.kind, self.folder, self.checkpoint = group, group.kind, group.path, checkpoint
        ranked, self.metric, self.mode = ranked_members(group)
        self.completed = len(ranked)
        self.top = top
        chosen = ranked[:top] if top is not None else ranked
        self._check_shared([run for run, _ in chosen])
        self.members = [LoadedRun(str(run.path), checkpoint, device) for run, _ in chosen]
        self.values = [value for _, value in chosen]  # each member's best validation value, as ranked
        self.task = self.members[0].task
        self.averages = self.task.averages

    def _check_shared(self, runs: list[RunFolder]) -> None:
        configs = [run.config() for run in runs]
        differs = config_differences([{"task": c.get("task"), "data": c.get("data")} for c in configs])
        if differs:
            key, values = next(iter(differs.items()))
            first = next(i for i, v in enumerate(values) if v != values[0])
            raise RunError(
                f"{self.kind} {self.folder.name}: its members do not share the task and the data ({key} is "
                f"{values[0]} in {runs[0].id} but {values[first]} in {runs[first].id}): an ensemble averages "
                "predictions of the same examples"
            )

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def stem(self) -> str:
        return ensemble_stem(self.checkpoint, self.top)

    @property
    def used(self) -> str:
        n = len(self.members)
        if self.top is not None:
            which = f"the top {n} of {self.completed} completed members by {self.metric}"
        else:
            which = f"all {n} completed members" if n > 1 else "its one completed member"
        return f"using {self.kind} {self.name}: {which}, checkpoint {self.checkpoint}"

    def member_rows(self) -> list[dict[str, Any]]:
        return [
            {"run": m.run.id, "epoch": m.ckpt["epoch"], self.metric: value}
            for m, value in zip(self.members, self.values)
        ]

    @torch.no_grad()
    def evaluate(self, split: str | None) -> tuple[dict[str, Any], Path]:
        """Every member and the ensemble on one split; the report is written to GROUP/eval/."""
        first = self.members[0]
        prepared = [m.task.prepare(m.cfg, meta=m.meta) for m in self.members]
        split = split or ("test" if "test" in prepared[0].splits else "val")
        if split not in prepared[0].splits:
            raise RunError(f"--split {split!r}: expected one of {', '.join(prepared[0].splits)}")
        batch_size = first.cfg.train.batch_size
        meters = [m.task.meter(m.meta) for m in self.members]
        ensemble = first.task.meter(first.meta, detailed=True)
        states: list[Any] = [None] * len(self.members)
        for m in self.members:
            m.model.eval()
        streams = [p.splits[split].batches(batch_size) for p in prepared]
        sentinel = object()
        while True:
            batches = [next(s, sentinel) for s in streams]
            if all(b is sentinel for b in batches):
                break
            if any(b is sentinel for b in batches) or any(
                not torch.equal(b.targets, batches[0].targets) for b in batches[1:]
            ):
                raise RunError(
                    f"{self.kind} {self.name}: the members' {split} splits do not hold the same examples "
                    "(was a member's data changed since it trained?)"
                )
            batches = [b.to(m.device) for m, b in zip(self.members, batches)]
            outs = []
            for i, (m, b) in enumerate(zip(self.members, batches)):
                out = fp32(m.model(**b.inputs, targets=b.targets, state=states[i]))
                states[i] = out.state
                meters[i].update(b, out)
                outs.append(out.logits.to(first.device))
            ensemble.update(batches[0], Output(combine(outs, self.averages), None))
        rows = [{**row, **meters[i].compute()} for i, row in enumerate(self.member_rows())]
        report = {
            "split": split, "checkpoint": self.checkpoint, "created": now(), self.kind: self.name,
            "averages": self.averages, "selected_by": self.metric, "top": self.top, "completed": self.completed,
            "members": rows, "ensemble": ensemble.report(), "unit": first.task.unit,
        }  # fmt: skip
        return report, self.group.write_ensemble_eval(split, self.stem, report)

    def predict(self, inputs: list[str], top: int) -> list[dict[str, Any]]:
        """Each input's top classes by the members' mean probability."""
        if not isinstance(self.task, Predicts):
            raise RunError(f"{self.kind} {self.name}: its {self.members[0].cfg.task} runs do not classify inputs")
        if not inputs:
            raise RunError(NO_INPUTS)
        per_member = [m.task.predict(m.model, m.meta, inputs, EVERY_CLASS) for m in self.members]
        rows = []
        for i, row in enumerate(per_member[0]):
            mean: dict[str, float] = {}
            for member in per_member:
                for label, p in member[i]["top"]:
                    mean[label] = mean.get(label, 0.0) + p / len(per_member)
            ranked = sorted(mean.items(), key=lambda lp: -lp[1])[:top]
            rows.append({**row, "top": ranked})
        return rows

    def forecast(self, steps: int) -> dict[str, Any]:
        """The members' forecasts of the next `steps` values, averaged; written to GROUP/forecast/."""
        from rnnctl import plots

        if not isinstance(self.task, Forecasts):
            raise RunError(f"{self.kind} {self.name}: its runs are not time series: --horizon does not apply")
        results = [m.task.forecast(m.model, m.meta, steps) for m in self.members]
        first = results[0]
        labels = [t for t, _ in first["rows"]]
        if any([t for t, _ in r["rows"]] != labels for r in results[1:]):
            raise RunError(f"{self.kind} {self.name}: the members' series do not end at the same point")
        values = [sum(r["rows"][j][1] for r in results) / len(results) for j in range(len(labels))]
        result = {**first, "rows": [[t, v] for t, v in zip(labels, values)]}
        record = {
            "run": f"{self.kind} {self.name}, ensemble of {len(self.members)}", self.kind: self.name,
            "checkpoint": self.checkpoint, "members": [m.run.id for m in self.members], **result,
        }  # fmt: skip
        paths = self.group.write_ensemble_forecast(
            steps, self.stem, record, [result["time"], result["column"]], result["rows"]
        )
        plots.forecast(paths["json"], paths["png"])
        return {**result, **{ext: str(p) for ext, p in paths.items()}}


def load(ref: str, top: int | None, checkpoint: str, device: str) -> Inference:
    """A run (id, folder or `latest`), else a sweep or a study as an ensemble of its members. `top` picks
    members, so it applies to a sweep or a study only."""
    try:
        run = RunFolder.resolve(ref)
    except RunError as e:
        group = GroupFolder.find(ref) if ref != "latest" else None
        if group is None:
            raise RunError(f"{e}; nor is it a sweep or a study") from None
        return Ensemble(group, top=top, checkpoint=checkpoint, device=device)
    if top is not None:
        raise RunError(f"--top-members: {run.id} is a run; the option picks members of a sweep or a study")
    return LoadedRun(str(run.path), checkpoint, device)

"""Pieces shared by the sequence-regression tasks (sine, sincos, series): batches, splits, the meter.

Values live in two spaces. The model sees "model space": the data after the task's transform and
scaling, and, for relative windows, minus the window's last input value (`base`). Metrics other than
the training loss are in the data's original units: the meter maps predictions back with the
task's `Scale`, so an MSE reads in passengers squared and an R2 compares with the data's own spread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnctl.models import Output


@dataclass
class Scale:
    """Original units <-> model space: z = (f(v) - mean) / std, f = log or identity, fitted on train only."""

    mean: float = 0.0
    std: float = 1.0
    log: bool = False

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return ((v.log() if self.log else v) - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        v = z * self.std + self.mean
        return v.exp() if self.log else v

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "log": self.log}


@dataclass
class WindowBatch:
    x: torch.Tensor  # (B, T, F) input features, model space
    targets: torch.Tensor  # (B, T) one value per step, or (B, H) the next H values; model space
    base: torch.Tensor  # (B,) added back to predictions and targets before unscaling (relative windows; else 0)
    stream: torch.Tensor  # (B,) which stream (phase) each row belongs to; a series is stream 0
    time: torch.Tensor  # (B, T or H) position of each target in its stream
    fresh: bool = True  # the first window of its streams: the model starts from a zero state
    naive: dict[str, torch.Tensor] = field(default_factory=dict)  # baseline forecasts, original units, like targets

    @property
    def inputs(self) -> dict[str, Any]:
        return {"x": self.x, "fresh": self.fresh}

    @property
    def size(self) -> int:
        return self.targets.numel()  # predicted values: the task's unit is values

    @property
    def rows(self) -> int:
        return self.targets.size(0)

    def select(self, start: int, stop: int) -> WindowBatch:
        s = slice(start, stop)
        return WindowBatch(
            self.x[s], self.targets[s], self.base[s], self.stream[s], self.time[s], self.fresh,
            {k: v[s] for k, v in self.naive.items()},
        )  # fmt: skip

    def to(self, device: torch.device) -> WindowBatch:
        return WindowBatch(
            self.x.to(device, non_blocking=True), self.targets.to(device, non_blocking=True), self.base,
            self.stream, self.time, self.fresh, self.naive,
        )  # fmt: skip


class Windows:
    """Independent windows, tensorized once: (N, T, F) inputs, (N, H) targets. Batching is slicing."""

    def __init__(self, x, targets, base, time, naive: dict[str, torch.Tensor] | None = None):
        self.x, self.targets, self.base, self.time = x, targets, base, time
        self.naive = naive or {}

    def __len__(self) -> int:
        return len(self.targets)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[WindowBatch]:
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for idx in order.split(batch_size):
            yield WindowBatch(
                self.x[idx], self.targets[idx], self.base[idx], torch.zeros(len(idx), dtype=torch.int64),
                self.time[idx], True, {k: v[idx] for k, v in self.naive.items()},
            )  # fmt: skip


class Streams:
    """S streams of P steps read as consecutive windows of W steps (seed 004).

    With `carry`, a pass takes the streams in groups of `batch_size` (in random order when shuffled)
    and serves each group's windows in time order, so the hidden state can flow from one window to the
    next; the first window of a group is `fresh`. Without, every window is independent and shuffled.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, window: int, carry: bool):
        # x: (S, P, F), y: (S, P)
        self.x, self.y, self.window, self.carry = x, y, window, carry
        self.windows_per_stream = y.size(1) // window

    def __len__(self) -> int:
        return self.y.size(0) * self.windows_per_stream * self.window  # predicted values per pass

    def num_batches(self, batch_size: int) -> int:
        s, w = self.y.size(0), self.windows_per_stream
        return -(-s // batch_size) * w if self.carry else -(-(s * w) // batch_size)

    def _batch(self, streams: torch.Tensor, starts: torch.Tensor, fresh: bool) -> WindowBatch:
        time = starts.unsqueeze(1) + torch.arange(self.window)  # (B, W)
        rows = streams.unsqueeze(1)
        return WindowBatch(self.x[rows, time], self.y[rows, time], torch.zeros(len(streams)), streams, time, fresh)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[WindowBatch]:
        s, w = self.y.size(0), self.windows_per_stream
        if self.carry:
            order = torch.randperm(s, generator=generator) if generator is not None else torch.arange(s)
            for group in order.split(batch_size):
                for k in range(w):
                    yield self._batch(group, torch.full((len(group),), k * self.window), fresh=k == 0)
            return
        pairs = torch.randperm(s * w, generator=generator) if generator is not None else torch.arange(s * w)
        for idx in pairs.split(batch_size):
            yield self._batch(idx // w, (idx % w) * self.window, fresh=True)


def regression_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """MSE, MAE, RMSE and R2 of predictions against the truth, both in original units."""
    pred, truth = pred.double().flatten(), truth.double().flatten()
    err = pred - truth
    mse = float((err**2).mean()) if len(err) else float("nan")
    sst = float(((truth - truth.mean()) ** 2).sum()) if len(truth) else 0.0
    return {
        "mse": mse,
        "mae": float(err.abs().mean()) if len(err) else float("nan"),
        "rmse": math.sqrt(mse) if len(err) else float("nan"),
        "r2": 1.0 - float((err**2).sum()) / sst if sst > 0 else float("nan"),
    }


class RegressionMeter:
    """The loss (MSE in model space, what training minimizes) and MSE/MAE in original units; on a detailed
    pass also RMSE, R2, the same metrics for the batches' naive baselines, and stream 0's predictions over
    time for the prediction-vs-truth plot: every step (`per_step`), or a forecaster's first step.

    Per-epoch sums stay on the model's device until `compute`, so a step never waits on a `.item()`.
    """

    def __init__(self, scale: Scale, per_step: bool, detailed: bool = False, dates: list[str] | None = None):
        self.scale, self.per_step, self.detailed, self.dates = scale, per_step, detailed, dates
        self.sq = self.sq_v = self.abs_v = 0
        self.count = 0
        self.preds: list[torch.Tensor] = []
        self.truths: list[torch.Tensor] = []
        self.naive: dict[str, list[torch.Tensor]] = {}
        self.trace: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (time, truth, pred) of stream 0
        self.naive_trace: dict[str, list[torch.Tensor]] = {}  # each baseline's forecasts of stream 0, like pred

    def update(self, batch: WindowBatch, out: Output) -> None:
        pred, target = out.logits.detach().float(), batch.targets.float()
        base = batch.base.to(pred.device).view(-1, *[1] * (target.dim() - 1))
        pred_v, truth_v = self.scale.inverse(pred + base), self.scale.inverse(target + base)
        wide = torch.float32 if pred.device.type == "mps" else torch.float64  # MPS has no float64
        err_v = (pred_v - truth_v).to(wide)
        self.sq = self.sq + ((pred - target) ** 2).sum()
        self.sq_v = self.sq_v + (err_v**2).sum()
        self.abs_v = self.abs_v + err_v.abs().sum()
        self.count += target.numel()
        if not self.detailed:
            return
        pred_v, truth_v = pred_v.cpu(), truth_v.cpu()
        self.preds.append(pred_v)
        self.truths.append(truth_v)
        for name, values in batch.naive.items():
            self.naive.setdefault(name, []).append(values.float())
        rows = batch.stream == 0
        if rows.any():
            steps = slice(None) if self.per_step else slice(0, 1)
            self.trace.append((batch.time[rows][:, steps], truth_v[rows][:, steps], pred_v[rows][:, steps]))
            for name, values in batch.naive.items():  # the baselines over time too, for the same plot
                self.naive_trace.setdefault(name, []).append(values.float()[rows][:, steps])

    def compute(self) -> dict[str, float]:
        n = max(int(self.count), 1)
        return {"loss": float(self.sq) / n, "mse": float(self.sq_v) / n, "mae": float(self.abs_v) / n}

    def totals(self) -> dict[str, Any]:
        return {"sq": self.sq, "sq_v": self.sq_v, "abs_v": self.abs_v, "count": self.count}

    def set_totals(self, totals: dict[str, Any]) -> None:
        self.sq, self.sq_v, self.abs_v, self.count = totals["sq"], totals["sq_v"], totals["abs_v"], int(totals["count"])

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.compute(), "n": self.count}
        if not self.preds:
            return out
        truth = torch.cat(self.truths)
        out.update(regression_metrics(torch.cat(self.preds), truth))
        if self.naive:
            out["naive"] = {name: regression_metrics(torch.cat(v), truth) for name, v in self.naive.items()}
        if self.trace:
            time = torch.cat([t.flatten() for t, _, _ in self.trace])
            order = torch.argsort(time, stable=True)
            series = {
                "time": time[order].tolist(),
                "truth": torch.cat([y.flatten() for _, y, _ in self.trace])[order].tolist(),
                "pred": torch.cat([p.flatten() for _, _, p in self.trace])[order].tolist(),
            }
            if self.naive_trace and all(len(v) == len(self.trace) for v in self.naive_trace.values()):
                series["naive"] = {
                    name: torch.cat([t.flatten() for t in v])[order].tolist() for name, v in self.naive_trace.items()
                }
            if self.dates:
                series["dates"] = [self.dates[t] for t in series["time"]]
            out["series"] = series
        return out

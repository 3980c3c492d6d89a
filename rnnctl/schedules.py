"""Learning-rate schedules: a function of the step (warm-up, step decay, cosine) or of the validation
metric (plateau), and early stopping. Their state goes into checkpoints, so a resumed run continues them."""

from __future__ import annotations

import math
from typing import Any

from rnnctl.config import EarlyStopConfig, ScheduleConfig


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int, mode: str):
        self.cfg, self.base_lr, self.mode = cfg, base_lr, mode
        self.total_steps = max(epochs * steps_per_epoch, 1)
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.factor = 1.0  # plateau: the decays so far
        self.best: float | None = None
        self.bad_epochs = 0
        self.constant = cfg.name == "none" and cfg.warmup_steps == 0  # nothing to set after the first step

    def lr(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based, counted over the whole run)."""
        c = self.cfg
        if c.name == "step":
            lr = self.base_lr * c.gamma ** (step // self.steps_per_epoch // c.step_size)
        elif c.name == "cosine":
            t = min(step / self.total_steps, 1.0)
            lr = c.min_lr + (self.base_lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        elif c.name == "plateau":
            lr = max(self.base_lr * self.factor, c.min_lr)
        else:
            lr = self.base_lr
        if c.warmup_steps and step < c.warmup_steps:
            lr *= (step + 1) / c.warmup_steps
        return lr

    def epoch_end(self, value: float) -> None:
        """plateau: decay by gamma after `patience` epochs without a better validation metric."""
        if self.cfg.name != "plateau" or not math.isfinite(value):
            return
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            self.factor *= self.cfg.gamma
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor, self.best, self.bad_epochs = state["factor"], state["best"], state["bad_epochs"]


class EarlyStopping:
    def __init__(self, cfg: EarlyStopConfig, mode: str):
        self.cfg, self.mode = cfg, mode
        self.best: float | None = None
        self.bad_epochs = 0

    def should_stop(self, value: float) -> bool:
        """Record an epoch's validation metric; True once `patience` epochs in a row did not improve it."""
        if self.cfg.patience is None:
            return False
        gain = None if self.best is None else (self.best - value if self.mode == "min" else value - self.best)
        if gain is None or (math.isfinite(value) and gain > self.cfg.min_delta):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]

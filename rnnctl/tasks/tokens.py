"""Pieces shared by the tasks that predict one token per input position (charlm, hello)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rnnctl.models import Output


@dataclass
class TextBatch:
    x: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) one target id per input position (the next character, the tagged one)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {"x": self.x}

    @property
    def size(self) -> int:
        return self.targets.numel()  # tokens: the task's unit is chars

    @property
    def rows(self) -> int:
        return self.x.size(0)  # parallel streams: each rank keeps its own, so a carried state stays per stream

    def select(self, start: int, stop: int) -> "TextBatch":
        return TextBatch(self.x[start:stop], self.targets[start:stop])

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(self.x.to(device, non_blocking=True), self.targets.to(device, non_blocking=True))


class LMMeter:
    """Mean negative log-likelihood per token, in nats; also bits per token (`bpc`) and perplexity.

    A step costs one `detach`: the models' loss is the batch's mean NLL already, so it is kept as is
    and weighted by the batch's size once, in `compute` (no second softmax, no per-step arithmetic).
    """

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []  # one 0-d mean NLL per batch
        self.sizes: list[int] = []
        self.count = 0

    def update(self, batch: TextBatch, out: Output) -> None:
        if out.loss is not None:
            self.means.append(out.loss.detach())
        else:
            logits = out.logits.detach()
            self.means.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.targets.reshape(-1)))
        self.sizes.append(batch.size)
        self.count += batch.size

    def compute(self) -> dict[str, float]:
        if not self.means:
            return {"loss": float("nan"), "bpc": float("nan"), "ppl": float("nan")}
        means = torch.stack(self.means).double().cpu()
        loss = float(means @ torch.tensor(self.sizes, dtype=torch.float64)) / self.count
        return {"loss": loss, "bpc": loss / math.log(2), "ppl": math.exp(min(loss, 50.0))}

    def report(self) -> dict[str, Any]:
        return {**self.compute(), "n": self.count}

    def totals(self) -> dict[str, Any]:
        loss_sum = (
            torch.stack(self.means).double().cpu() @ torch.tensor(self.sizes, dtype=torch.float64)
            if self.means
            else 0.0
        )
        return {"loss_sum": loss_sum, "count": self.count}

    def set_totals(self, totals: dict[str, Any]) -> None:
        self.means, self.sizes, self.count = [torch.as_tensor(totals["loss_sum"])], [1], int(totals["count"])

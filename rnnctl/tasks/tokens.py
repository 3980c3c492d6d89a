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
        return self.targets.numel()  # tokens, so samples/s reads as characters/s

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(self.x.to(device, non_blocking=True), self.targets.to(device, non_blocking=True))


class LMMeter:
    """Mean negative log-likelihood per token, in nats; also bits per token (`bpc`) and perplexity."""

    def __init__(self) -> None:
        self.nll = 0
        self.count = 0

    def update(self, batch: TextBatch, out: Output) -> None:
        if out.loss is not None:  # the models' loss is the mean NLL already: reuse it, no second softmax
            self.nll = self.nll + out.loss.detach() * batch.size
        else:
            logits = out.logits.detach()
            self.nll = self.nll + F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch.targets.reshape(-1), reduction="sum"
            )
        self.count += batch.size

    def compute(self) -> dict[str, float]:
        loss = float(self.nll) / max(self.count, 1)
        return {"loss": loss, "bpc": loss / math.log(2), "ppl": math.exp(min(loss, 50.0))}

    def report(self) -> dict[str, Any]:
        return {**self.compute(), "n": self.count}

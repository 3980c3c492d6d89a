"""hello: learn to map one string to another of the same length, character by character (seed 000).

Seed 000 teaches "hello" -> "ohlol" with a one-hot nn.RNNCell stepped by hand whose hidden state is
read directly as the logits. Here the pair comes from the config, so it teaches on any pair; each
epoch is one optimizer step on the pair, and the predicted string is shown every epoch.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from pydantic import Field, model_validator

from rnnctl.config import Config, ModelConfig, Section
from rnnctl.errors import ConfigError
from rnnctl.models import SequenceTagger
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.tokens import LMMeter, TextBatch


class HelloData(Section):
    source: str = "hello"  # the input string
    target: str = "ohlol"  # the output string, as long as the input

    @model_validator(mode="after")
    def _same_length(self) -> "HelloData":
        if not self.source or len(self.source) != len(self.target):
            raise ValueError(
                f"source and target must be non-empty strings of equal length "
                f"(got {len(self.source)} and {len(self.target)} characters)"
            )
        return self


class HelloModel(ModelConfig):
    cell: str = "rnn"
    hidden_size: int = Field(4, ge=1)
    stepwise: bool = True  # step an nn.*Cell by hand over the sequence instead of the fused module
    output_layer: bool = False  # false: the hidden state is the logits; needs hidden_size = vocabulary

    @model_validator(mode="after")
    def _forward_only(self) -> "HelloModel":
        if self.bidirectional:
            raise ValueError(
                "bidirectional: the hello tagger runs forward only, one output per step (set model.bidirectional: false)"
            )
        return self


class PairSplit:
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.numel()

    def num_batches(self, batch_size: int) -> int:
        return 1

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[TextBatch]:
        yield TextBatch(self.x, self.y)


class HelloMeter(LMMeter):
    """Per-character loss, plus the share of characters predicted right; with `vocab` (an evaluation's
    detailed report) also each string it predicts, beside its input and target."""

    def __init__(self, vocab: list[str] | None = None) -> None:
        super().__init__()
        self.correct = 0
        self.vocab = vocab
        self.strings: list[dict[str, str]] = []

    def update(self, batch: TextBatch, out) -> None:
        super().update(batch, out)
        predicted = out.logits.detach().argmax(-1)
        self.correct = self.correct + (predicted == batch.targets).sum()
        if self.vocab is not None:
            text = lambda ids: "".join(self.vocab[i] for i in ids)  # noqa: E731
            for x, p, y in zip(batch.x.tolist(), predicted.tolist(), batch.targets.tolist()):
                self.strings.append({"input": text(x), "predicted": text(p), "target": text(y)})

    def report(self) -> dict[str, Any]:
        return {**super().report(), **({"predictions": self.strings} if self.vocab is not None else {})}

    def compute(self) -> dict[str, float]:
        return {"loss": super().compute()["loss"], "acc": float(self.correct) / max(self.count, 1)}

    def totals(self) -> dict[str, Any]:
        return {**super().totals(), "correct": self.correct}

    def set_totals(self, totals: dict[str, Any]) -> None:
        super().set_totals(totals)
        self.correct = totals["correct"]


class HelloTask:
    name = "hello"
    data_config = HelloData
    model_config = HelloModel
    monitor, monitor_mode = "loss", "min"
    averages = "probabilities"  # in an ensemble of its runs
    unit = "chars"  # a batch's size counts predicted characters
    report_splits = ()  # the pair is all there is: the preview shows the predicted string

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: HelloData = cfg.data  # type: ignore[assignment]
        vocab = meta["vocab"] if meta else sorted(set(data.source + data.target))
        stoi = {ch: i for i, ch in enumerate(vocab)}
        x = torch.tensor([[stoi[ch] for ch in data.source]])
        y = torch.tensor([[stoi[ch] for ch in data.target]])
        split = PairSplit(x, y)
        return Prepared(meta={"vocab": vocab}, splits={"train": split, "val": split}, derived={"vocab": vocab})

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        m: HelloModel = cfg.model  # type: ignore[assignment]
        if not m.output_layer and m.hidden_size != len(meta["vocab"]):
            raise ConfigError(
                f"model.hidden_size: {m.hidden_size}, but with model.output_layer false the hidden state is the "
                f"logits, so it must equal the vocabulary size {len(meta['vocab'])} ({''.join(meta['vocab'])!r})"
            )
        return SequenceTagger(m, len(meta["vocab"]))

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> HelloMeter:
        return HelloMeter(meta["vocab"] if detailed else None)

    @torch.no_grad()
    def preview(self, model: torch.nn.Module, meta: dict[str, Any], cfg: Config, step: int) -> str:
        """The string the model predicts for the source, shown every epoch."""
        vocab = meta["vocab"]
        stoi = {ch: i for i, ch in enumerate(vocab)}
        device = next(model.parameters()).device
        x = torch.tensor([[stoi[ch] for ch in cfg.data.source]], device=device)
        model.eval()
        return "".join(vocab[i] for i in model(x).logits.argmax(-1)[0].tolist())

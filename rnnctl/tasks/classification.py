"""Pieces shared by the sequence-classification tasks: tensorized splits, batches, the metric meter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from rnnctl.config import ModelConfig, Section
from rnnctl.models import Output


class NgramConfig(Section):
    """A bag of hashed token n-grams beside the recurrent encoder (fastText's features): every n-gram of 1 to
    `n` tokens of the text between a start and an end marker, and the whole text, each hashed into one of
    `buckets` rows of an embedding; their mean joins the pooled RNN features before the classifier (`head:
    shared`), or has a classifier and a loss of its own and the two predict by their mean probability (`own`)."""

    n: int = Field(5, ge=1, le=16)  # the longest n-gram, in tokens (characters for names, words for sentiment)
    buckets: int = Field(2**16, ge=1, le=2**24)  # embedding rows; n-grams beyond that share rows (collisions)
    dim: int = Field(64, ge=1, le=4096)  # the bag's embedding size
    whole: bool = True  # the whole text is one more feature (a name seen in training)
    lowercase: bool = True  # n-grams of the lowercased tokens
    dropout: float = Field(0.0, ge=0, lt=1)  # share of a text's n-grams left out of its bag at each training step
    head: Literal["shared", "own"] = "shared"  # one classifier over both; or the bag its own (an ensemble of two)
    lr_scale: float = Field(1.0, gt=0, le=1e3)  # the bag's learning rate as a multiple of the RNN's (the schedule's)


class ClassifierConfig(ModelConfig):
    """The `model` section of the sequence-classification tasks."""

    pooling: Literal["last", "max", "mean", "last+max", "mean+max"] = "last"  # final states, or over time
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy against (1 - s) one-hot + s uniform
    word_dropout: float = Field(0.0, ge=0, lt=1)  # share of a text's tokens read as <unk> at each training step
    ngrams: NgramConfig | None = None  # hashed n-gram features beside the RNN; null: the RNN alone


@dataclass
class SequenceBatch:
    x: torch.Tensor  # (B, T) token ids, 0 = padding, T = longest sequence in this batch
    lengths: torch.Tensor  # (B,) int64, kept on the CPU for pack_padded_sequence
    targets: torch.Tensor  # (B,) class ids
    ngrams: torch.Tensor | None = None  # (B, G) hashed n-gram ids, 0 = padding (model.ngrams)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"x": self.x, "lengths": self.lengths}
        return inputs if self.ngrams is None else {**inputs, "ngrams": self.ngrams}

    @property
    def size(self) -> int:
        return len(self.targets)

    rows = size

    def select(self, start: int, stop: int) -> "SequenceBatch":
        lengths = self.lengths[start:stop]
        ngrams = None if self.ngrams is None else self.ngrams[start:stop]
        return SequenceBatch(self.x[start:stop, : int(lengths.max())], lengths, self.targets[start:stop], ngrams)

    def to(self, device: torch.device) -> "SequenceBatch":
        ngrams = None if self.ngrams is None else self.ngrams.to(device, non_blocking=True)
        return SequenceBatch(
            self.x.to(device, non_blocking=True), self.lengths, self.targets.to(device, non_blocking=True), ngrams
        )


class SequenceSplit:
    """A split tensorized once: padded ids (N, T_max), lengths (N,), labels (N,). Batching is slicing.

    With `bucket`, a shuffled epoch is cut from the examples sorted by length (ties in random order)
    and the batches are then shuffled: batches hold sequences of equal or similar length, so little
    padding is computed and most batches skip packing. Evaluation batches always go by length.
    """

    def __init__(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        bucket: bool = True,
        ngrams: tuple[torch.Tensor, torch.Tensor] | None = None,  # (N, G_max) bag ids, 0 = padding; (N,) counts
    ):
        self.x, self.lengths, self.labels, self.bucket, self.ngrams = x, lengths, labels, bucket, ngrams

    def __len__(self) -> int:
        return len(self.labels)

    def order(self, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The index tensor of every batch of one pass, in the order they are served."""
        n = len(self)
        if generator is None:
            return list(torch.sort(self.lengths, stable=True).indices.split(batch_size))
        perm = torch.randperm(n, generator=generator)
        if not self.bucket:
            return list(perm.split(batch_size))
        chunks = perm[torch.sort(self.lengths[perm], stable=True).indices].split(batch_size)
        return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def padding(self, batch_size: int, generator: torch.Generator) -> float:
        """The fraction of the positions of one shuffled epoch's batches that are padding."""
        padded = cells = 0
        for idx in self.order(batch_size, generator):
            lengths = self.lengths[idx]
            cells += int(lengths.max()) * len(idx)
            padded += int(lengths.max()) * len(idx) - int(lengths.sum())
        return padded / max(cells, 1)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[SequenceBatch]:
        for idx in self.order(batch_size, generator):
            lengths = self.lengths[idx]
            bags = None
            if self.ngrams is not None:
                ids, counts = self.ngrams
                bags = ids[idx, : int(counts[idx].max())]
            yield SequenceBatch(self.x[idx, : int(lengths.max())], lengths, self.labels[idx], bags)


def pad(sequences: Sequence[Sequence[int]], dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (N, T_max) zero-padded tensor and (N,) int64 lengths.

    `dtype=torch.int32` halves the memory of a large split (25,000 reviews of up to 2,700 words);
    nn.Embedding takes either.
    """
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    x = torch.zeros(len(sequences), int(lengths.max()) if len(sequences) else 0, dtype=dtype)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.tensor(s, dtype=dtype)
    return x, lengths


class ClassificationMeter:
    """Mean NLL and accuracy over a pass; with `detailed`, a confusion matrix and per-class P/R/F1.

    Sums stay on the model's device until `compute`, so a step never waits on a `.item()`.
    """

    def __init__(self, classes: list[str], detailed: bool = False):
        self.classes = classes
        self.detailed = detailed
        self.loss_sum = self.correct = 0
        self.count = 0
        self.confusion = None  # (C, C): rows true class, columns predicted

    def update(self, batch: SequenceBatch, out: Output) -> None:
        logits = out.logits.detach()
        pred = logits.argmax(dim=1)
        # the plain NLL, whatever the training objective (label smoothing): train and val compare
        self.loss_sum = self.loss_sum + F.cross_entropy(logits, batch.targets, reduction="sum")
        self.correct = self.correct + (pred == batch.targets).sum()
        self.count += batch.size
        if self.detailed:
            c = len(self.classes)
            counts = torch.bincount(batch.targets * c + pred, minlength=c * c).view(c, c)
            self.confusion = counts if self.confusion is None else self.confusion + counts

    def compute(self) -> dict[str, float]:
        n = max(int(self.count), 1)
        return {"loss": float(self.loss_sum) / n, "acc": float(self.correct) / n}

    def totals(self) -> dict[str, Any]:
        out = {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}
        return out if self.confusion is None else {**out, "confusion": self.confusion}

    def set_totals(self, totals: dict[str, Any]) -> None:
        self.loss_sum, self.correct, self.count = totals["loss_sum"], totals["correct"], int(totals["count"])
        if "confusion" in totals:
            self.confusion = totals["confusion"].long()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.compute(), "n": self.count}
        if self.confusion is None:
            return out
        cm = self.confusion.cpu().to(torch.float64)
        tp = cm.diag()
        precision = tp / cm.sum(0).clamp(min=1)
        recall = tp / cm.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        support = cm.sum(1)
        out["per_class"] = [
            {"label": label, "precision": p, "recall": r, "f1": f, "support": int(s)}
            for label, p, r, f, s in zip(
                self.classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist()
            )
        ]
        present = support > 0
        out["macro_f1"] = float(f1[present].mean()) if present.any() else 0.0
        out["classes"] = self.classes
        out["confusion"] = self.confusion.cpu().tolist()
        return out


def top_k(logits: torch.Tensor, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable classes with their softmax probabilities."""
    probs = logits.float().softmax(dim=-1)
    values, idx = probs.topk(min(k, len(classes)), dim=-1)
    return [[(classes[i], p) for i, p in zip(row_i, row_p)] for row_i, row_p in zip(idx.tolist(), values.tolist())]

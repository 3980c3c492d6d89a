"""What the training loop and the commands see of a task: data splits, batches, a meter, a model, and the
optional capabilities a task declares by having their methods (`isinstance(task, Samples)`).

A task never imports rich or matplotlib: it returns numbers and plain data; the CLI and plots decide how
they look. The loop never names a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from rnnctl.config import Config, DataConfig, ModelConfig
    from rnnctl.models import Model, Output


class Batch(Protocol):
    inputs: dict[str, Any]  # keyword arguments of the model's forward
    targets: torch.Tensor
    size: int  # what the loss is a mean over (examples, tokens, values: the task's `unit`); for speed and rank weights
    rows: int  # independent rows (examples, streams): what ranks share out

    def to(self, device: torch.device) -> "Batch": ...

    def select(self, start: int, stop: int) -> "Batch":
        """Rows [start, stop): one rank's part of a global batch."""


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches in random order when a generator is given, in stored order otherwise."""

    def num_batches(self, batch_size: int) -> int:
        """How many batches one pass serves (for progress display)."""


class Meter(Protocol):
    """Accumulates one pass over a split; `compute` gives scalars, `report` the details. `totals` are the
    additive sums behind `compute`; ranks sum theirs (`set_totals`) so every example counts once. What it
    has accumulated are its attributes that hold numbers and tensors (or lists of them): a step checkpoint
    keeps those as they are (`meter_state`), so a pass resumed inside an epoch computes the same numbers."""

    def update(self, batch: Batch, out: "Output") -> None: ...

    def compute(self) -> dict[str, float]: ...

    def report(self) -> dict[str, Any]: ...

    def totals(self) -> dict[str, Any]: ...

    def set_totals(self, totals: dict[str, Any]) -> None: ...


def meter_state(meter: Meter) -> dict[str, Any]:
    """What a meter has accumulated (see Meter): its number and tensor attributes, the rest (its classes,
    its scaler) being what `Task.meter` builds it with."""
    return {k: v for k, v in vars(meter).items() if _accumulated(v)}


def set_meter_state(meter: Meter, state: dict[str, Any]) -> None:
    """Put back what `meter_state` took, into a meter the task built alike."""
    for k, v in state.items():
        setattr(meter, k, v)


def _accumulated(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_accumulated(v) for v in value)
    return isinstance(value, (int, float, torch.Tensor)) or value is None


@dataclass
class Prepared:
    meta: dict[str, Any]  # derived from data and needed to rebuild the model (alphabet, classes); in checkpoints
    splits: dict[str, Split]  # "train", "val", "test"
    derived: dict[str, Any] = field(default_factory=dict)  # informative facts for the resolved config
    init: Any = None  # what build_model starts a new run's weights from (pretrained vectors); never checkpointed


class Task(Protocol):
    name: str
    data_config: type["DataConfig"]
    model_config: type["ModelConfig"]
    monitor: str  # validation metric that picks the best checkpoint, e.g. "acc"
    monitor_mode: str  # "max" or "min"
    report_splits: tuple[str, ...]  # the splits tested with the best checkpoint when training ends
    averages: str  # what an ensemble of its runs averages: "probabilities" (softmax of the logits) or "values"
    unit: str  # what one of its batch's `size` counts, plural ("chars", "names", "values"): `chars/s`, `800 values`

    def prepare(self, cfg: "Config", meta: dict[str, Any] | None = None) -> Prepared:
        """Load and tensorize the data. With `meta` (from a checkpoint), reuse its vocabulary."""

    def build_model(self, cfg: "Config", meta: dict[str, Any], init: Any = None) -> "Model":
        """The model (a `models.Model`) for the data's meta; `init` is a new run's Prepared.init (None for a
        loaded run)."""

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> Meter: ...


# -- capabilities: a task has them or not; commands ask with isinstance -----------------------------


@runtime_checkable
class Predicts(Protocol):
    """Classifies inputs given as text (`rnnctl predict RUN INPUT ...`)."""

    def predict(
        self, model: torch.nn.Module, meta: dict[str, Any], inputs: list[str], top: int
    ) -> list[dict[str, Any]]: ...


@runtime_checkable
class Samples(Protocol):
    """Generates text from a seed string (`rnnctl sample`)."""

    def sample(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        seed: str,
        length: int,
        temperature: float,
        top_k: int,
        generator: torch.Generator | None,
    ) -> Iterator[str]: ...


@runtime_checkable
class Forecasts(Protocol):
    """Continues a series past the end of its data (`rnnctl predict RUN --horizon N`)."""

    def forecast(self, model: torch.nn.Module, meta: dict[str, Any], steps: int) -> dict[str, Any]: ...


@runtime_checkable
class Previews(Protocol):
    """Shows a short text after each evaluation (a sample, a predicted string)."""

    def preview(self, model: torch.nn.Module, meta: dict[str, Any], cfg: "Config", step: int) -> str: ...

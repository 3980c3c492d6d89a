"""Tasks: each module turns a config into data splits, a model and metrics. A dict names them.

The engine sees only the interfaces below and never a task's name. A task never imports rich or
matplotlib: it returns numbers and plain data; the CLI and plots decide how they look.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import torch

from rnnctl.errors import ConfigError
from rnnctl.models import Output

if TYPE_CHECKING:
    from rnnctl.config import Config, DataConfig, ModelConfig


class Batch(Protocol):
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    targets: torch.Tensor
    size: int  # examples in the batch, for samples/s

    def to(self, device: torch.device) -> "Batch": ...


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches in random order when a generator is given, in stored order otherwise."""

    def num_batches(self, batch_size: int) -> int:
        """How many batches one pass serves (for progress display)."""


class Meter(Protocol):
    """Accumulates one pass over a split; `compute` gives scalars, `report` the details."""

    def update(self, batch: Batch, out: Output) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def report(self) -> dict[str, Any]: ...


@dataclass
class Prepared:
    meta: dict[str, Any]  # derived from data and needed to rebuild the model (alphabet, classes); in checkpoints
    splits: dict[str, Split]  # "train", "val", "test"
    derived: dict[str, Any] = field(default_factory=dict)  # informative facts for the resolved config


class Task(Protocol):
    name: str
    data_config: type["DataConfig"]
    model_config: type["ModelConfig"]
    monitor: str  # validation metric that picks the best checkpoint, e.g. "acc"
    monitor_mode: str  # "max" or "min"

    def prepare(self, cfg: "Config", meta: dict[str, Any] | None = None) -> Prepared:
        """Load and tensorize the data. With `meta` (from a checkpoint), reuse its vocabulary."""

    def build_model(self, cfg: "Config", meta: dict[str, Any]) -> torch.nn.Module: ...

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> Meter: ...

    def predict(
        self, model: torch.nn.Module, meta: dict[str, Any], inputs: list[str], top_k: int
    ) -> list[dict[str, Any]]: ...


def _registry() -> dict[str, Task]:
    from rnnctl.tasks.charlm import CharLMTask
    from rnnctl.tasks.hello import HelloTask
    from rnnctl.tasks.names import NamesTask
    from rnnctl.tasks.sentiment import SentimentTask
    from rnnctl.tasks.series import SeriesTask
    from rnnctl.tasks.waves import WavesTask

    sine = WavesTask("sine", target="next", carry_default=False)
    sincos = WavesTask("sincos", target="cos", carry_default=True)
    tasks = (NamesTask(), CharLMTask(), HelloTask(), sine, sincos, SeriesTask(), SentimentTask())
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _registry()


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None

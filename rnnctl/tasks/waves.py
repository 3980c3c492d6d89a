"""sine and sincos: generated waves as many-to-many sequence regression (seeds 003 and 004).

Each split is a set of streams: the same wave at independent random phases, sampled at `points`
points over [start, end) and read in windows of `window` steps. The input is the noisy sine; the
target is, for `sine`, the clean sine one step ahead (seed 003 fits sin(x)) and, for `sincos`, the
cosine at the same step (seed 004 feeds sin and learns cos). `sincos` carries the hidden state
from each window to the next of the same streams and detaches it between them, as the seed's
`h_state = h_state.data` does, with many phases batched side by side. Train, validation and test
streams have phases of their own, so validation and test are waves the model never saw.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator

from rnnctl.config import Config, ModelConfig, Section
from rnnctl.models import SequenceRegressor
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.regression import RegressionMeter, Scale, Streams


class WaveData(Section):
    start: float = 0.0  # x of the first point (radians), before each stream's random phase
    end: float = 100.0  # x of the last point
    points: int = Field(1000, ge=2)  # points per stream
    window: int = Field(10, ge=1)  # steps per window
    noise: float = Field(0.0, ge=0)  # std of the Gaussian noise added to the input
    streams: int = Field(64, ge=1)  # training streams (independent phases)
    eval_streams: int = Field(16, ge=1)  # validation streams, and as many test streams
    carry_state: bool | None = None  # carry the hidden state across windows; default: sincos yes, sine no
    split_seed: int = 0  # the phases and the noise, fixed apart from train.seed

    @model_validator(mode="after")
    def _fits(self) -> WaveData:
        if self.window > self.points:
            raise ValueError(f"window ({self.window}) must not exceed points ({self.points})")
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self


class WaveModel(ModelConfig):
    cell: str = "rnn"
    hidden_size: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _forward_only(self) -> WaveModel:
        if self.bidirectional:  # sine's target is the next input: a backward direction would read it
            raise ValueError("bidirectional: a wave is predicted step by step, left to right (set it false)")
        return self


class WavesTask:
    """Shared by sine and sincos; `target` picks the function to learn."""

    data_config = WaveData
    model_config = WaveModel
    monitor, monitor_mode = "loss", "min"
    averages = "values"  # in an ensemble of its runs
    unit = "values"  # a batch's size counts predicted values
    report_splits = ("val", "test")  # both get a prediction-vs-truth plot at the end

    def __init__(self, name: str, target: str, carry_default: bool):
        self.name, self.target, self.carry_default = name, target, carry_default

    def carry(self, cfg: Config) -> bool:
        return self.carry_default if cfg.data.carry_state is None else cfg.data.carry_state

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: WaveData = cfg.data  # type: ignore[assignment]
        carry = self.carry(cfg)
        g = torch.Generator().manual_seed(data.split_seed)
        x = torch.linspace(data.start, data.end, data.points, dtype=torch.float64)
        dx = (data.end - data.start) / (data.points - 1)
        splits = {}
        for name, n in (("train", data.streams), ("val", data.eval_streams), ("test", data.eval_streams)):
            phase = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 * math.pi
            t = x + phase  # (S, P)
            inp = torch.sin(t) + data.noise * torch.randn(t.shape, generator=g, dtype=torch.float64)
            y = torch.sin(t + dx) if self.target == "next" else torch.cos(t)
            splits[name] = Streams(inp.float().unsqueeze(-1), y.float(), data.window, carry)
        derived = {
            "carry_state": carry,
            "windows_per_stream": data.points // data.window,
            "values": {k: len(v) for k, v in splits.items()},
        }
        return Prepared(meta={"scale": Scale().to_dict(), "carry": carry}, splits=splits, derived=derived)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        return SequenceRegressor(cfg.model, input_size=1, horizon=None, carry=meta["carry"])

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> RegressionMeter:
        return RegressionMeter(Scale(**meta["scale"]), per_step=True, detailed=detailed)


def sine() -> WavesTask:  # seed 003: fit the clean next value of a noisy sine
    return WavesTask("sine", target="next", carry_default=False)


def sincos() -> WavesTask:  # seed 004: feed sin, learn cos, the state carried across windows
    return WavesTask("sincos", target="cos", carry_default=True)

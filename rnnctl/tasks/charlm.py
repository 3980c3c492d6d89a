"""charlm: a character language model trained with truncated BPTT (seed 002), sampled from a seed string.

Data: any UTF-8 text file (`data.path`); tiny Shakespeare ships with the package. `data.max_chars` keeps
only the beginning of the text (quick runs). The vocabulary is every character of the text read; the
last `val_fraction` of it is validation, never trained on.
Training cuts the text into `train.batch_size` contiguous streams read side by side in chunks of
`data.bptt` characters; the training loop carries the hidden state from chunk to chunk and detaches it.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from pydantic import Field, model_validator

from rnnctl.config import Config, DataConfig, ModelConfig
from rnnctl.data import locate, read_text
from rnnctl.errors import DataError, RunError, clip
from rnnctl.models import CharLM
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.tokens import LMMeter, TextBatch

MIN_TEMPERATURE = 1e-6  # float32 logits divided by less overflow to inf (1e-300 crashed the sampler)


class CharLMData(DataConfig):
    bptt: int = Field(100, ge=1)  # characters per truncated-BPTT chunk
    max_chars: int | None = Field(None, ge=2)  # read only the first N characters of the text (quick runs); null: all


class CharLMModel(ModelConfig):
    one_hot: bool = False  # one-hot characters as input (as min-char-rnn) instead of a learned embedding

    @model_validator(mode="after")
    def _forward_only(self) -> "CharLMModel":
        if self.bidirectional:
            raise ValueError("bidirectional: a language model reads left to right (set model.bidirectional: false)")
        return self


class StreamSplit:
    """A text as B parallel streams served chunk by chunk, in order, so a hidden state can carry over.

    A shuffled pass (a generator given) starts at a random offset below `bptt`, so chunk boundaries
    move from epoch to epoch; evaluation always starts at 0.
    """

    def __init__(self, ids: torch.Tensor, bptt: int):
        self.ids, self.bptt = ids, bptt

    def __len__(self) -> int:
        return max(len(self.ids) - 1, 0)  # characters predicted in one pass (before trimming to B streams)

    def _layout(self, batch_size: int, offset: int) -> tuple[int, int]:
        """(streams, characters per stream) for a pass starting at `offset`."""
        chars = max(len(self.ids) - offset - 1, 0)
        streams = max(min(batch_size, chars), 1)
        return streams, chars // streams

    def num_batches(self, batch_size: int) -> int:
        return -(-self._layout(batch_size, 0)[1] // self.bptt)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[TextBatch]:
        offset = 0
        if generator is not None:  # below bptt, and never more than half the text (a tiny file still trains)
            offset = int(torch.randint(max(min(self.bptt, (len(self.ids) - 1) // 2), 1), (1,), generator=generator))
        ids = self.ids[offset:]
        streams, n = self._layout(batch_size, offset)
        x = ids[: streams * n].view(streams, n)  # (B, n): stream b is one contiguous piece of the text
        y = ids[1 : streams * n + 1].view(streams, n)
        for t in range(0, n, self.bptt):
            yield TextBatch(x[:, t : t + self.bptt], y[:, t : t + self.bptt])


class CharLMTask:
    name = "charlm"
    data_config = CharLMData
    model_config = CharLMModel
    monitor, monitor_mode = "loss", "min"
    averages = "probabilities"  # in an ensemble of its runs
    unit = "chars"  # a batch's size counts predicted characters
    report_splits = ()  # a language model has no test split: validation picks and reports

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: CharLMData = cfg.data  # type: ignore[assignment]
        path = locate("tinyshakespeare", data.path)
        if path.is_dir():
            path = path / "input.txt"
        text = read_text(path)
        text = text[: data.max_chars]  # None: all of it
        if len(text) < 2:
            raise DataError(f"{path}: no text to learn from (expected a UTF-8 text file)")
        vocab = meta["vocab"] if meta else sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(vocab)}
        unknown = sorted({ch for ch in text if ch not in stoi})
        if unknown:  # only when re-evaluating a run on a changed file
            raise DataError(f"{path}: characters not in the run's vocabulary: {clip(''.join(unknown))}")
        ids = torch.tensor([stoi[ch] for ch in text], dtype=torch.int64)
        n_val = max(int(len(ids) * data.val_fraction), 2)
        if len(ids) - n_val < 2:
            raise DataError(
                f"{path}: {len(ids)} characters are too few to hold out {data.val_fraction:.0%} for validation"
            )
        splits = {"train": StreamSplit(ids[:-n_val], data.bptt), "val": StreamSplit(ids[-n_val:], data.bptt)}
        derived = {"vocab_size": len(vocab), "characters": {"train": len(ids) - n_val, "val": n_val}}
        return Prepared(meta={"vocab": vocab}, splits=splits, derived=derived)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        return CharLM(cfg.model, len(meta["vocab"]))

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> LMMeter:
        return LMMeter()

    def preview(self, model: CharLM, meta: dict[str, Any], cfg: Config, step: int) -> str:
        """A short sample after each evaluation, from a newline, seeded by (train.seed, step)."""
        generator = torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + step) % 2**63)
        seed = "\n" if "\n" in meta["vocab"] else meta["vocab"][0]
        return "".join(self.sample(model, meta, seed, 120, 0.8, 0, generator))

    def sample(
        self,
        model: CharLM,
        meta: dict[str, Any],
        seed: str,
        length: int,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> Iterator[str]:
        """The seed's characters must all be in the run's vocabulary; yields generated characters."""
        if not seed:
            raise RunError("--prompt: give at least one character to start from")
        if not MIN_TEMPERATURE <= temperature < math.inf:  # nan compares false both ways
            raise RunError(
                f"--temperature {temperature:g}: expected a finite number > 0, at least {MIN_TEMPERATURE:g} "
                f"(below that the logits overflow; sampling is greedy in effect already)"
            )
        stoi = {ch: i for i, ch in enumerate(meta["vocab"])}
        missing = sorted({ch for ch in seed if ch not in stoi})
        if missing:
            shown = " ".join(repr(c) for c in missing[:20]) + (
                f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            )
            raise RunError(f"--prompt: characters not in the run's vocabulary: {shown}")
        vocab = meta["vocab"]
        for idx in model.generate([stoi[ch] for ch in seed], length, temperature, top_k, generator):
            yield vocab[idx]

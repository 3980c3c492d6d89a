"""The recurrent models. One interface: `forward(..., targets=None, state=None) -> Output(logits, loss, state)`.

Shapes: B = batch, T = time steps (the longest sequence in the batch), E = embedding size,
H = hidden size, D = directions (1 or 2), L = layers, C = classes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rnnctl import cells
from rnnctl.errors import ConfigError

if TYPE_CHECKING:  # the model sections of config.py and the tasks; models read their fields, nothing more
    from rnnctl.config import ModelConfig as ModelSection


class Output(NamedTuple):
    """What every model's forward returns (nanoGPT style, plus a recurrent state)."""

    logits: torch.Tensor
    loss: torch.Tensor | None  # mean over the batch; None when no targets were given
    state: Any = None  # hidden state to carry into the next batch (truncated BPTT); None otherwise


class Model(nn.Module):
    """What every model is to the loop: `forward(..., targets=None, state=None) -> Output` and its parameters
    as optimizer groups."""

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The parameters as optimizer groups, each {"params", "lr_scale"}: its learning rate is lr_scale times
        the schedule's. One group at the full rate; a model whose parts learn at different rates says so here."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]


def make_rnn(m: ModelSection, input_size: int) -> nn.Module:
    """The multi-layer recurrent module a model section describes, batch-first: the cell's fused module,
    or its stepwise cell run over time (`model.stepwise`, or a cell that has no fused module)."""
    cell = cells.get(m.cell)
    if m.stepwise or cell.fused is None:
        if m.bidirectional:
            raise ConfigError(
                f"model.bidirectional: the stepwise recurrence{'' if m.stepwise else f' of cell {m.cell!r}'} "
                "runs forward only here (set model.bidirectional: false)"
            )
        return StepwiseRNN(m.cell, input_size, m.hidden_size, m.layers, m.dropout)
    return cell.fused(input_size, m.hidden_size, m.layers, m.bidirectional, m.dropout)


class StepwiseRNN(nn.Module):
    """The fused nn.RNN/LSTM/GRU spelled out: one nn.*Cell per layer, called once per time step.

    Slower than the fused module and meant for reading and teaching (seed 000 steps an nn.RNNCell by
    hand). Same inputs, outputs and state layout as the fused module with batch_first=True, and the
    same numbers given the same weights (`load_fused`).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        spec = cells.get(cell)
        self.lstm = spec.states == 2  # the state is (h, c)
        self.hidden_size = hidden_size
        self.cells = nn.ModuleList(spec.step(input_size if i == 0 else hidden_size, hidden_size) for i in range(layers))
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)  # between layers, as the fused module does

    def forward(self, x: torch.Tensor, state=None):
        # x: (B, T, I); state: h (L, B, H), or (h, c) for an LSTM, or None for zeros
        B, T, _ = x.shape
        L = len(self.cells)
        if state is None:
            zeros = x.new_zeros(L, B, self.hidden_size)
            state = (zeros, zeros) if self.lstm else zeros
        h = list(state[0].unbind(0) if self.lstm else state.unbind(0))  # L tensors (B, H)
        c = list(state[1].unbind(0)) if self.lstm else None
        inp = x
        for i, cell in enumerate(self.cells):
            outputs = []
            for t in range(T):  # the recurrence, one step at a time: h_t = cell(x_t, h_{t-1})
                if self.lstm:
                    h[i], c[i] = cell(inp[:, t], (h[i], c[i]))
                else:
                    h[i] = cell(inp[:, t], h[i])
                outputs.append(h[i])
            inp = torch.stack(outputs, dim=1)  # (B, T, H): this layer's outputs feed the next layer
            if i < L - 1:
                inp = self.drop(inp)
        h_n = torch.stack(h)  # (L, B, H)
        return inp, ((h_n, torch.stack(c)) if self.lstm else h_n)

    @torch.no_grad()
    def load_fused(self, fused: nn.RNNBase) -> None:
        """Copy a unidirectional fused module's weights: `weight_ih_l{k}` -> `cells[k].weight_ih`, etc."""
        for k, cell in enumerate(self.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(fused, f"{name}_l{k}"))


def mean_probability(logits: list[torch.Tensor]) -> torch.Tensor:
    """Several classifiers' logits (each (..., C)) as one: the log of their mean probability. Valid logits:
    softmax gives that mean back, and their cross-entropy is the NLL of the mean."""
    return torch.logsumexp(torch.stack(logits).log_softmax(-1), 0) - math.log(len(logits))


def final_hidden(h: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """h_n of any cell: LSTM returns (h_n, c_n), the others h_n alone. Shape (L*D, B, H)."""
    return h[0] if isinstance(h, tuple) else h


class PaddedRNN(nn.Module):
    """A stacked (bi)directional RNN over right-padded batches that computes what packed sequences compute,
    without packing.

    Packed sequences are exact but slow on the CPU: a packed bi-LSTM step over 64 reviews of ~270 words
    takes 30x the time of the padded one here (benchmarks/RESULTS.md). Padding at the end cannot change
    the forward direction's outputs at real positions; the backward direction runs as a forward RNN over
    each sequence reversed within its own length (padding stays at the end), and its outputs are put
    back in order. Positions past a sequence's length hold padding garbage: pooling must mask them.
    Each layer and direction is its own single-layer module (the fused kernel, one direction at a time).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        stepwise: bool = False,
    ):
        super().__init__()
        self.directions = 2 if bidirectional else 1
        spec = cells.get(cell)

        def one_direction(size: int) -> nn.Module:  # one layer, one direction: (B, T, size) -> (B, T, H)
            if stepwise or spec.fused is None:
                return StepwiseRNN(cell, size, hidden_size)
            return spec.fused(size, hidden_size, 1, False, 0.0)

        self.layers = nn.ModuleList(
            nn.ModuleList(
                one_direction(input_size if i == 0 else hidden_size * self.directions) for _ in range(self.directions)
            )
            for i in range(layers)
        )
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)  # between layers, as the fused module does
        self._register_load_state_dict_pre_hook(_fused_keys_to_layers, with_module=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (B, T, I) right-padded; lengths: (B,) -> outputs (B, T, D*H), valid where t < length
        B, T, _ = x.shape
        rev = None
        if self.directions == 2:
            t = torch.arange(T, device=x.device)
            n = lengths.to(x.device).unsqueeze(1)
            rev = torch.where(t < n, n - 1 - t, t).unsqueeze(-1)  # (B, T, 1): reverse within each length
        for i, directions in enumerate(self.layers):
            if i > 0:
                x = self.drop(x)
            outs = [directions[0](x)[0]]  # (B, T, H)
            if rev is not None:
                backward = directions[1](x.gather(1, rev.expand(-1, -1, x.size(-1))))[0]
                outs.append(backward.gather(1, rev.expand(-1, -1, backward.size(-1))))  # back in time order
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return x

    def final(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The top layer's final states from its outputs: forward at length - 1, backward at 0. (B, D*H)"""
        H = out.size(-1) // self.directions
        last = (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, H)
        parts = [out[:, :, :H].gather(1, last).squeeze(1)]  # (B, H)
        if self.directions == 2:
            parts.append(out[:, 0, H:])  # the backward direction ends at the first word
        return torch.cat(parts, dim=1)


def _fused_keys_to_layers(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before PaddedRNN hold one fused module (`weight_ih_l1_reverse`): map the names."""
    for key in [k for k in state_dict if k.startswith(prefix) and "_l" in k[len(prefix) :] and "layers." not in k]:
        name = key[len(prefix) :]  # e.g. weight_ih_l1_reverse
        base, _, rest = name.partition("_l")
        layer, _, reverse = rest.partition("_")
        if base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") and layer.isdigit():
            direction = 1 if reverse == "reverse" else 0
            state_dict[f"{prefix}layers.{layer}.{direction}.{base}_l0"] = state_dict.pop(key)


class RecurrentClassifier(Model):
    """Token ids -> embedding -> stacked (bi)RNN over padded batches -> pooled features -> class logits."""

    def __init__(
        self,
        m: ModelSection,  # cell, layers, sizes, bidirectional, dropout, pooling, label_smoothing, stepwise
        vocab_size: int,
        num_classes: int,
        padding_idx: int = 0,
        unk_idx: int = 1,  # what word dropout reads a dropped token as
        freeze_embedding: bool = False,  # keep pretrained word vectors as they are
    ):
        super().__init__()
        self.label_smoothing = m.label_smoothing
        self.word_dropout, self.unk_idx = m.word_dropout, unk_idx  # training only: a dropped token reads as <unk>
        self.directions = 2 if m.bidirectional else 1
        self.pooling = m.pooling
        self.embedding = nn.Embedding(vocab_size, m.embedding_size, padding_idx=padding_idx)
        self.embedding.weight.requires_grad_(not freeze_embedding)  # no gradient, so no optimizer step moves it
        self.rnn = PaddedRNN(
            m.cell, m.embedding_size, m.hidden_size, m.layers, m.bidirectional, m.dropout, m.stepwise
        )  # fmt: skip
        self.drop = nn.Dropout(m.dropout)
        features = m.hidden_size * self.directions * len(m.pooling.split("+"))
        self.ngrams = self.ngram_head = None
        self.ngram_lr_scale = 1.0 if m.ngrams is None else m.ngrams.lr_scale
        if m.ngrams is not None:  # fastText's bag beside the RNN: the mean of the text's hashed n-gram vectors
            self.ngrams = nn.EmbeddingBag(m.ngrams.buckets + 1, m.ngrams.dim, mode="mean", padding_idx=0)
            nn.init.zeros_(self.ngrams.weight)  # a bucket no training n-gram reaches adds nothing (random rows: noise)
            self.ngram_dropout = m.ngrams.dropout  # so that the bag cannot memorise a name by one n-gram
            if m.ngrams.head == "own":  # a linear fastText classifier of its own, trained beside the RNN's
                self.ngram_head = nn.Linear(m.ngrams.dim, num_classes)
            else:
                features += m.ngrams.dim
        self.head = nn.Linear(features, num_classes)

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The bag (with its head, if it has one) learns at `model.ngrams.lr_scale` times the rest's rate."""
        if self.ngram_lr_scale == 1.0:
            return super().optimizer_groups()
        bag = [*self.ngrams.parameters(), *(self.ngram_head.parameters() if self.ngram_head is not None else [])]
        ids = {id(p) for p in bag}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr_scale": 1.0}, {"params": bag, "lr_scale": self.ngram_lr_scale}]

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor | None = None,
        state=None,
        ngrams: torch.Tensor | None = None,
    ) -> Output:
        # x: (B, T) token ids, 0 = padding; lengths: (B,); ngrams: (B, G) n-gram ids, 0 = padding
        if self.training and self.word_dropout > 0:  # padding stays padding; the length does not change
            drop = (torch.rand(x.shape, device=x.device) < self.word_dropout) & (x != self.embedding.padding_idx)
            x = x.masked_fill(drop, self.unk_idx)
        emb = self.drop(self.embedding(x))  # (B, T, E)
        out = self.rnn(emb, lengths)  # (B, T, D*H); positions past a length are padding
        parts = []  # each (B, D*H), in the order pooling names them
        pad = torch.arange(x.size(1), device=x.device) >= lengths.to(x.device).unsqueeze(1)  # (B, T)
        for how in self.pooling.split("+"):
            if how == "last":
                parts.append(self.rnn.final(out, lengths))
            elif how == "max":
                parts.append(out.masked_fill(pad.unsqueeze(-1), float("-inf")).max(dim=1).values)
            else:  # mean over the real positions
                summed = out.masked_fill(pad.unsqueeze(-1), 0.0).sum(dim=1)
                parts.append(summed / lengths.to(out.device, out.dtype).unsqueeze(1))
        if self.ngrams is not None:
            if ngrams is None:
                raise ValueError("this model reads n-gram ids beside the tokens (model.ngrams): pass ngrams=")
            if self.training and self.ngram_dropout > 0:  # padding (0) is left out of the mean: no rescaling
                ngrams = ngrams.masked_fill(torch.rand(ngrams.shape, device=ngrams.device) < self.ngram_dropout, 0)
            bag = self.ngrams(ngrams)  # (B, dim): the mean of the kept n-grams' vectors
            if self.ngram_head is None:
                parts.append(bag)
        logits = self.head(self.drop(torch.cat(parts, dim=1)))  # (B, C)
        branches = [logits] if self.ngram_head is None else [logits, self.ngram_head(bag)]
        loss = None  # with a bag of its own, each branch learns from its own loss: neither leans on the other
        if targets is not None:
            loss = sum(F.cross_entropy(b, targets, label_smoothing=self.label_smoothing) for b in branches)
        return Output(logits if len(branches) == 1 else mean_probability(branches), loss)


class CharLM(Model):
    """Character language model: ids -> embedding (or one-hot) -> stacked RNN -> next-character logits.

    The hidden state is an input and an output, so training can carry it across truncated-BPTT chunks
    and `generate` can warm it up on a seed string and then sample one character at a time.
    """

    def __init__(self, m: ModelSection, vocab_size: int):  # m: cell, sizes, layers, dropout, one_hot, stepwise
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = None if m.one_hot else nn.Embedding(vocab_size, m.embedding_size)  # one-hot: seed 002's
        self.rnn = make_rnn(m, vocab_size if m.one_hot else m.embedding_size)
        self.drop = nn.Dropout(m.dropout)
        self.head = nn.Linear(m.hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, state=None) -> Output:
        # x: (B, T) character ids; state: h (L, B, H), or (h, c) for an LSTM, or None for zeros
        if self.embedding is None:
            inp = F.one_hot(x, self.vocab_size).float()  # (B, T, V)
        else:
            inp = self.drop(self.embedding(x))  # (B, T, E)
        out, state = self.rnn(inp, state)  # out: (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))
        return Output(logits, loss, state)

    @torch.no_grad()
    def generate(
        self,
        seed: list[int],
        length: int,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yield `length` sampled ids, one at a time, after warming the state up on the seed ids."""
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        out = self(torch.tensor([seed], device=device))  # (1, S, V): the whole seed in one pass
        try:
            for _ in range(length):
                logits = out.logits[0, -1].float().cpu() / temperature  # (V,)
                if 0 < top_k < logits.numel():
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                idx = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
                yield idx
                out = self(torch.tensor([[idx]], device=device), state=out.state)
        finally:
            self.train(was_training)


class SequenceTagger(Model):
    """One output per input step (seed 000): one-hot ids -> RNN -> logits, optionally through a linear layer.

    Without the output layer the hidden state itself is read as the logits, as seed 000 does.
    """

    def __init__(self, m: ModelSection, vocab_size: int):  # m: cell, hidden_size, layers, stepwise, output_layer
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = make_rnn(m, vocab_size)
        self.head = nn.Linear(m.hidden_size, vocab_size) if m.output_layer else nn.Identity()

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, state=None) -> Output:
        out, _ = self.rnn(F.one_hot(x, self.vocab_size).float())  # (B, T, H), from one-hot (B, T, V)
        logits = self.head(out)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return Output(logits, loss)


class SequenceRegressor(Model):
    """Real-valued sequences (seeds 003, 004): features -> stacked RNN -> linear read-out.

    Two shapes of output: one value per input step (`horizon=None`, many-to-many: sine, sin -> cos), or
    the next `horizon` values read from the last step (a forecaster over a lookback window). With
    `carry`, the hidden state is returned so that the next window of the same streams starts from it
    (seed 004's `h_state = h_state.data`; the training loop detaches it); a batch with `fresh=True` starts new
    streams from zeros.
    """

    def __init__(self, m: ModelSection, input_size: int = 1, horizon: int | None = None, carry: bool = False):
        super().__init__()
        if carry and m.bidirectional:
            raise ValueError("a carried state runs forward only")  # configs reject this first, with the key's name
        self.horizon, self.carry = horizon, carry
        self.directions = 2 if m.bidirectional else 1
        self.rnn = make_rnn(m, input_size)
        self.drop = nn.Dropout(m.dropout)
        self.head = nn.Linear(m.hidden_size * self.directions, horizon or 1)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, state=None, fresh: bool = False) -> Output:
        # x: (B, T, F) features per step; targets: (B, T) per step, or (B, horizon)
        out, state = self.rnn(x, None if fresh or not self.carry else state)  # out: (B, T, D*H)
        if self.horizon is None:
            pred = self.head(self.drop(out)).squeeze(-1)  # (B, T)
        else:
            last = final_hidden(state)[-self.directions :].transpose(0, 1).reshape(x.size(0), -1)  # (B, D*H)
            pred = self.head(self.drop(last))  # (B, horizon): both directions have read the whole window
        loss = None if targets is None else F.mse_loss(pred, targets)
        return Output(pred, loss, state if self.carry else None)

"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Their gates read the input only, never the previous state, so h_t = a_t * h_{t-1} + b_t is a linear
recurrence whose coefficients are known for every step at once: training runs over a whole sequence in
parallel with a log-space scan (Heinsen 2023) instead of a loop over time.

    minGRU:  z = sigmoid(W_z x),  h~ = g(W_h x),  h_t = (1 - z) * h_{t-1} + z * h~
    minLSTM: f = sigmoid(W_f x),  i = sigmoid(W_i x),  h~ = g(W_h x),
             h_t = f / (f + i) * h_{t-1} + i / (f + i) * h~          (one state h, no c)

g(v) = v + 0.5 for v >= 0, sigmoid(v) otherwise: the paper's activation for the log-space version, which
keeps h~ > 0 so that log h~ exists. The stepwise cells use the same g, so both compute the same function.

Only the cells are here. The paper's models also put extras around each layer (projections, a norm,
residual connections, an MLP); rnnctl's models supply their own embedding and head, and layers stack as
nn.GRU's do (dropout between layers, no residuals).

Shapes: B = batch, T = time steps, I = input size, H = hidden size, L = layers, D = directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def g(v: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: v + 0.5 for v >= 0, sigmoid(v) below (continuous at 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: torch.Tensor) -> torch.Tensor:
    """log g(v), without ever taking log of a non-positive number (relu keeps the unused branch finite)."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


def scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for every t at once, from log a and log b (B, T, H); h0 (B, H), None: zeros.

    Heinsen's scan: with a*_t = sum_{j<=t} log a_j, h_t = exp(a*_t) * (h_0 + sum_{k<=t} b_k / exp(a*_k)), so
    log of the sum is a*_t + logcumsumexp_k(log b_k - a*_k). The h_0 term is added apart, exp(a*_t) * h_0,
    rather than as log h_0 at a step 0: a zero (or missing) state then needs no log(0), and its gradient
    stays finite. Returns h_1 .. h_T, (B, T, H).
    """
    a_star = log_a.cumsum(dim=1)  # (B, T, H): log of a_1 * ... * a_t
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
    if h0 is not None:
        h = h + torch.exp(a_star) * h0.unsqueeze(1)
    return h


class MinGRUCell(nn.Module):
    """One minGRU layer and direction: `h = cell(x_t, h)` one step at a time, or `cell.scan(x, h0)` over
    a whole sequence. x_t (B, I), h (B, H); x (B, T, I) -> (B, T, H)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(input_size, 2 * hidden_size)  # [W_z; W_h] in one product

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        k, v = self.linear(x).chunk(2, dim=-1)  # (B, H) each
        z = torch.sigmoid(k)
        return (1 - z) * h + z * g(v)

    def scan(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.linear(x).chunk(2, dim=-1)  # (B, T, H) each: every step's gates in one product
        log_z = -F.softplus(-k)  # log sigmoid(k)
        log_1mz = -F.softplus(k)  # log (1 - sigmoid(k))
        return scan(log_1mz, log_z + log_g(v), h0)


class MinLSTMCell(nn.Module):
    """One minLSTM layer and direction (state h only): `h = cell(x_t, h)`, or `cell.scan(x, h0)`."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(input_size, 3 * hidden_size)  # [W_f; W_i; W_h] in one product

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        kf, ki, v = self.linear(x).chunk(3, dim=-1)  # (B, H) each
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)
        return f / (f + i) * h + i / (f + i) * g(v)

    def scan(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        kf, ki, v = self.linear(x).chunk(3, dim=-1)  # (B, T, H) each
        diff = F.softplus(-kf) - F.softplus(-ki)  # log i - log f
        log_f = -F.softplus(diff)  # log f / (f + i)
        log_i = -F.softplus(-diff)  # log i / (f + i)
        return scan(log_f, log_i + log_g(v), h0)


class MinRNN(nn.Module):
    """Stacked, optionally bidirectional minGRU/minLSTM over whole sequences, with nn.GRU's batch-first
    interface: `out, h_n = rnn(x, h0)`, x (B, T, I), out (B, T, D*H), h0 and h_n (L*D, B, H) ordered as
    nn.GRU's (layer-major, forward then backward), h0 None for zeros.

    The backward direction scans the reversed sequence (the whole of it: padding is the caller's concern,
    as with an unpacked nn.GRU); its final state is the one at t = 0. Dropout between layers, not after
    the last, as nn.GRU does.
    """

    def __init__(
        self,
        cell: type[MinGRUCell] | type[MinLSTMCell],
        input_size: int,
        hidden_size: int,
        layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(
                cell(input_size if i == 0 else hidden_size * self.directions, hidden_size)
                for _ in range(self.directions)
            )
            for i in range(layers)
        )
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        finals = []
        for i, directions in enumerate(self.layers):
            if i > 0:
                x = self.drop(x)
            outs = []
            for d, cell in enumerate(directions):
                start = None if h0 is None else h0[i * self.directions + d]  # (B, H)
                if d == 0:
                    out = cell.scan(x, start)  # (B, T, H)
                    finals.append(out[:, -1])
                else:
                    out = cell.scan(x.flip(1), start).flip(1)  # back in time order
                    finals.append(out[:, 0])  # the backward direction ends at the first step
                outs.append(out)
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (B, T, D*H)
        return x, torch.stack(finals)  # (B, T, D*H), (L*D, B, H)


def fused(cell: type[MinGRUCell] | type[MinLSTMCell]):
    """The registry's `fused(input_size, hidden_size, layers, bidirectional, dropout)` for one cell."""

    def build(input_size: int, hidden_size: int, layers: int, bidirectional: bool, dropout: float) -> MinRNN:
        return MinRNN(cell, input_size, hidden_size, layers, bidirectional, dropout)

    return build

"""The cell registry: each recurrent cell named once, with its fused module, its stepwise cell and its state.

The config's `model.cell` choices come from here, and every model builds its recurrence through here, so a
new cell is one `register(Cell(...))`:

- `step(input_size, hidden_size)` -> a module called once per time step: `h = cell(x_t, h)`, or
  `(h, c) = cell(x_t, (h, c))` for a cell with two state tensors. Shapes: x_t (B, I), h and c (B, H).
- `fused(input_size, hidden_size, layers, bidirectional, dropout)` -> a batch-first module over whole
  sequences with nn.RNN's interface: `out, state = rnn(x, state)`, x (B, T, I), out (B, T, D*H), each
  state tensor (L*D, B, H). None: the stepwise cell is run over time instead (models.StepwiseRNN).
- `states`: 1 (h) or 2 (h, c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Cell:
    name: str
    step: Callable[[int, int], nn.Module]
    fused: Callable[[int, int, int, bool, float], nn.Module] | None = None
    states: int = 1  # 1: h; 2: (h, c)


CELLS: dict[str, Cell] = {}


def register(cell: Cell) -> Cell:
    if cell.states not in (1, 2):
        raise ValueError(f"cell {cell.name!r}: states must be 1 (h) or 2 (h, c), got {cell.states}")
    CELLS[cell.name] = cell
    return cell


def get(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r} (known: {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(CELLS)


def _torch_fused(module: type[nn.RNNBase]) -> Callable[[int, int, int, bool, float], nn.Module]:
    def build(input_size: int, hidden_size: int, layers: int, bidirectional: bool, dropout: float) -> nn.Module:
        return module(
            input_size,
            hidden_size,
            num_layers=layers,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
            batch_first=True,
        )

    return build


register(Cell("rnn", nn.RNNCell, _torch_fused(nn.RNN)))  # Elman: h = tanh(W x + U h + b)
register(Cell("lstm", nn.LSTMCell, _torch_fused(nn.LSTM), states=2))
register(Cell("gru", nn.GRUCell, _torch_fused(nn.GRU)))

# minGRU / minLSTM (Feng et al. 2024): gates from the input only, trained with a parallel scan over time.
from rnnctl import mincells  # noqa: E402  (mincells imports nothing from rnnctl)

register(Cell("mingru", mincells.MinGRUCell, mincells.fused(mincells.MinGRUCell)))
register(Cell("minlstm", mincells.MinLSTMCell, mincells.fused(mincells.MinLSTMCell)))

"""The cell registry: what adding a cell costs. One `register(Cell(...))` and every task trains it: the
config accepts the name, the classifiers run it in both directions, the language model carries its state
across truncated-BPTT chunks, and `eval`/`predict`/`sample` rebuild it from a checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, assert_lm_trains_and_samples, assert_one_line_error, run_dirs
from torch import nn

from rnnctl import cells


class MGUCell(nn.Module):
    """Minimal gated unit (Zhou et al. 2016): one forget gate f, h~ = tanh(W x + U (f * h)), h = (1 - f) h + f h~."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.gate = nn.Linear(input_size + hidden_size, hidden_size)
        self.x = nn.Linear(input_size, hidden_size)
        self.h = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        f = torch.sigmoid(self.gate(torch.cat([x, h], dim=-1)))  # (B, H)
        return (1 - f) * h + f * torch.tanh(self.x(x) + self.h(f * h))


@pytest.fixture
def mgu():
    cells.register(cells.Cell("mgu", step=MGUCell))  # the one line a new cell needs
    yield "mgu"
    del cells.CELLS["mgu"]


@pytest.mark.slow
def test_a_registered_cell_trains_a_bidirectional_classifier(mgu, cli, names_files, isolated):
    tiny = CONFIGS / "smoke" / "names_tiny.yaml"
    args = [*names_files.set_args(), "--set", f"model.cell={mgu}", "--set", "model.bidirectional=true"]
    result = cli("train", tiny, *args, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert any(k.startswith("rnn.layers.0.1.cells.0.gate") for k in ckpt["model"])  # the backward MGU's weights
    result = cli("predict", "latest", "McKenzie")
    assert result.exit_code == 0, result.output
    assert cli("eval", "latest").exit_code == 0


def test_a_registered_cell_trains_a_language_model_and_samples(mgu, cli, tmp_path, isolated):
    assert_lm_trains_and_samples(cli, tmp_path, mgu)


def test_config_choices_come_from_the_registry(mgu, cli, names_files):
    from rnnctl.config import load_config

    tiny = CONFIGS / "smoke" / "names_tiny.yaml"
    assert load_config(tiny, [f"model.cell={mgu}"]).model.cell == "mgu"
    result = cli("config", "show", tiny, "--set", "model.cell=mgv")
    assert_one_line_error(result, "model.cell", "unknown cell 'mgv'", "did you mean", "mgu")


def test_an_unknown_cell_is_a_one_line_error(cli, names_files, isolated):
    result = cli("train", CONFIGS / "smoke" / "names_tiny.yaml", *names_files.set_args(), "--set", "model.cell=gruu")
    assert_one_line_error(result, "model.cell", "unknown cell 'gruu'", "gru, lstm, mingru, minlstm, rnn")
    assert run_dirs(isolated) == []


def test_a_cell_without_a_fused_module_refuses_bidirectional_where_it_cannot(mgu):
    from rnnctl.config import ModelConfig
    from rnnctl.errors import ConfigError
    from rnnctl.models import make_rnn

    with pytest.raises(ConfigError, match="forward only"):
        make_rnn(ModelConfig(cell=mgu, bidirectional=True), 3)

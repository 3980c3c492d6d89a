"""The hello task (seed 000) and the stepwise cells: reaching "ohlol", stepwise == fused, bad pairs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, assert_one_line_error, run_dirs

from rnnctl.config import ModelConfig
from rnnctl.models import CharLM, SequenceTagger, StepwiseRNN, make_rnn
from rnnctl.tasks.charlm import CharLMModel
from rnnctl.tasks.hello import HelloModel

HELLO = CONFIGS / "hello_rnncell.yaml"


def test_hello_config_reaches_ohlol_and_shows_the_string_each_epoch(cli, isolated):
    result = cli("train", HELLO)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("preview: ") == 15  # one predicted string per epoch (plain output: not a terminal)
    (run,) = run_dirs(isolated)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 15
    assert rows[-1]["preview"] == "ohlol"
    assert rows[-1]["val_acc"] == 1.0
    assert "preview" not in (run / "metrics.csv").read_text().splitlines()[0]  # text stays out of the CSV


@pytest.mark.slow
def test_hello_eval_shows_the_string_it_predicts_beside_the_target(cli, isolated, monkeypatch):
    """`accuracy 1` alone never showed the string: eval says what it predicts for the source, and the target."""
    monkeypatch.setenv("COLUMNS", "80")
    assert cli("train", HELLO).exit_code == 0
    result = cli("eval", "latest")
    assert result.exit_code == 0, result.output
    assert 'predicts "ohlol" for "hello" (target "ohlol")' in result.stdout.splitlines(), result.stdout
    assert result.stdout.splitlines()[0].endswith(", 5 chars")
    assert cli("train", HELLO, "--set", "train.epochs=1", "--quiet").exit_code == 0  # not learned yet: its own guess
    result = cli("eval", "latest")
    assert result.exit_code == 0, result.output
    run = max(run_dirs(isolated))
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert f'predicts "{row["preview"]}" for "hello" (target "ohlol")' in result.stdout.splitlines(), result.stdout
    report = json.loads((run / "eval" / "val-best.json").read_text())
    assert report["predictions"] == [{"input": "hello", "predicted": row["preview"], "target": "ohlol"}]


@pytest.mark.slow
def test_hello_teaches_other_pairs(cli, isolated):
    result = cli("train", HELLO, "--set", "data.source=abcd", "--set", "data.target=dcba", "--set", "model.output_layer=true",
                 "--set", "model.hidden_size=16", "--set", "train.epochs=40", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["preview"] == "dcba"


def test_hello_bad_pairs_are_one_line_errors(cli, isolated):
    assert_one_line_error(cli("train", HELLO, "--set", "data.target=ohlo"), "data", "equal length")
    assert_one_line_error(cli("train", HELLO, "--set", "model.hidden_size=8"), "model.hidden_size", "vocabulary size 4")
    assert_one_line_error(cli("train", HELLO, "--set", "model.bidirectional=true"), "bidirectional", "forward only")
    assert run_dirs(isolated) == []


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_stepwise_equals_fused_with_the_same_weights(cell, layers):
    torch.manual_seed(0)
    section = ModelConfig(cell=cell, hidden_size=7, layers=layers)
    fused = make_rnn(section, 5)
    stepwise = make_rnn(section.model_copy(update={"stepwise": True}), 5)
    assert isinstance(stepwise, StepwiseRNN)
    stepwise.load_fused(fused)
    x = torch.randn(3, 6, 5)
    zeros_out, zeros_h = fused(x)
    out, h = stepwise(x)
    torch.testing.assert_close(out, zeros_out)
    state = (torch.randn(layers, 3, 7), torch.randn(layers, 3, 7)) if cell == "lstm" else torch.randn(layers, 3, 7)
    out_f, h_f = fused(x, state)
    out_s, h_s = stepwise(x, state)
    torch.testing.assert_close(out_s, out_f)
    torch.testing.assert_close(h_s, h_f)
    # gradients agree too
    x.requires_grad_(True)
    g_f = torch.autograd.grad(fused(x)[0].sum(), x)[0]
    g_s = torch.autograd.grad(stepwise(x)[0].sum(), x)[0]
    torch.testing.assert_close(g_s, g_f)


def test_stepwise_charlm_matches_fused_charlm():
    torch.manual_seed(0)
    section = CharLMModel(cell="lstm", embedding_size=6, hidden_size=8, layers=2)
    fused = CharLM(section, 11)
    stepwise = CharLM(section.model_copy(update={"stepwise": True}), 11)
    stepwise.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("rnn.")}, strict=False)
    stepwise.rnn.load_fused(fused.rnn)
    x = torch.randint(0, 11, (2, 9))
    a, b = fused(x), stepwise(x)
    torch.testing.assert_close(b.logits, a.logits)
    torch.testing.assert_close(b.state, a.state)


def test_tagger_without_output_layer_reads_the_hidden_state_as_logits():
    model = SequenceTagger(HelloModel(hidden_size=4, output_layer=False), 4)
    out = model(torch.tensor([[1, 0, 2, 2, 3]]))
    assert out.logits.shape == (1, 5, 4)
    assert out.logits.abs().max() <= 1.0  # tanh hidden state, no linear layer after it


def test_hello_refuses_bidirectional_even_with_the_fused_module(cli, isolated):
    result = cli(
        "train", CONFIGS / "hello_rnncell.yaml", "--set", "model.stepwise=false", "--set", "model.bidirectional=true"
    )
    assert_one_line_error(result, "bidirectional", "forward only")
    assert run_dirs(isolated) == []

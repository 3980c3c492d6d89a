"""minGRU and minLSTM: the parallel scan computes the step-by-step recurrence (outputs, final states, a given
initial state, stacked layers, both directions, one step at a time for sampling, a state carried across
chunks), gradients are right, and every task trains them through the CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, assert_lm_trains_and_samples, run_dirs

from rnnctl import cells, mincells
from rnnctl.models import StepwiseRNN

CELLS = ["mingru", "minlstm"]
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32, sequences of up to 40 steps


def recurrence(cell: torch.nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The reference: the stepwise cell called once per step. x (B, T, I), h (B, H) -> (B, T, H)."""
    outs = []
    for t in range(x.size(1)):
        h = cell(x[:, t], h)
        outs.append(h)
    return torch.stack(outs, dim=1)


def reference(rnn: mincells.MinRNN, x: torch.Tensor, h0: torch.Tensor | None = None):
    """A stacked (bi)directional MinRNN stepped by hand: the backward direction runs over the reversed sequence."""
    D = rnn.directions
    finals = []
    for i, directions in enumerate(rnn.layers):
        outs = []
        for d, cell in enumerate(directions):
            start = x.new_zeros(x.size(0), rnn.hidden_size) if h0 is None else h0[i * D + d]
            if d == 0:
                out = recurrence(cell, x, start)
                finals.append(out[:, -1])
            else:
                out = recurrence(cell, x.flip(1), start).flip(1)
                finals.append(out[:, 0])
            outs.append(out)
        x = torch.cat(outs, dim=-1)
    return x, torch.stack(finals)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("B,T,inputs,H", [(1, 1, 1, 1), (3, 7, 5, 4), (2, 40, 3, 16), (4, 13, 8, 2)])
@pytest.mark.parametrize("initial", [False, True])
def test_scan_equals_the_recurrence(name, B, T, inputs, H, initial):
    torch.manual_seed(T)
    cell = cells.get(name).step(inputs, H)
    x = 2 * torch.randn(B, T, inputs)  # gate and candidate pre-activations on both sides of 0 (g's two branches)
    h0 = torch.rand(B, H) if initial else None
    with torch.no_grad():
        got = cell.scan(x, h0)
        expected = recurrence(cell, x, torch.zeros(B, H) if h0 is None else h0)
    torch.testing.assert_close(got, expected, **TOL)
    assert (got > 0).all()  # g keeps h~ positive, and a positive state stays positive


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (2, False), (3, True)])
@pytest.mark.parametrize("initial", [False, True])
def test_fused_module_equals_a_stacked_recurrence(name, layers, bidirectional, initial):
    torch.manual_seed(layers)
    D = 2 if bidirectional else 1
    rnn = cells.get(name).fused(5, 6, layers, bidirectional, 0.0)
    x = 2 * torch.randn(3, 11, 5)
    h0 = torch.rand(layers * D, 3, 6) if initial else None
    with torch.no_grad():
        out, h_n = rnn(x, h0)
        expected_out, expected_h = reference(rnn, x, h0)
    assert out.shape == (3, 11, D * 6) and h_n.shape == (layers * D, 3, 6)  # nn.GRU's shapes
    torch.testing.assert_close(out, expected_out, **TOL)
    torch.testing.assert_close(h_n, expected_h, **TOL)


@pytest.mark.parametrize("name", CELLS)
def test_fused_module_equals_the_stepwise_rnn_with_the_same_weights(name):
    """`model.stepwise: true` and the fused scan are the same model, given the same weights."""
    torch.manual_seed(0)
    fused = cells.get(name).fused(4, 5, 2, False, 0.0)
    stepwise = StepwiseRNN(name, 4, 5, layers=2)
    for k, cell in enumerate(stepwise.cells):
        cell.load_state_dict(fused.layers[k][0].state_dict())
    x, h0 = torch.randn(2, 9, 4), torch.rand(2, 2, 5)
    with torch.no_grad():
        for state in (None, h0):
            out, h_n = fused(x, state)
            expected_out, expected_h = stepwise(x, state)
            torch.testing.assert_close(out, expected_out, **TOL)
            torch.testing.assert_close(h_n, expected_h, **TOL)


@pytest.mark.parametrize("name", CELLS)
def test_state_carried_across_chunks_equals_one_long_sequence(name):
    """Truncated BPTT (charlm, sincos): chunk 2 starts from chunk 1's final state."""
    torch.manual_seed(1)
    rnn = cells.get(name).fused(3, 8, 2, False, 0.0)
    x = torch.randn(4, 30, 3)
    with torch.no_grad():
        whole, h_whole = rnn(x)
        first, h1 = rnn(x[:, :17])
        second, h2 = rnn(x[:, 17:], h1)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, **TOL)
    torch.testing.assert_close(h2, h_whole, **TOL)


@pytest.mark.parametrize("name", CELLS)
def test_one_step_at_a_time_through_the_fused_module_equals_the_step_cell(name):
    """What `rnnctl sample` does: (x of length 1, state) calls, one after another."""
    torch.manual_seed(2)
    rnn = cells.get(name).fused(3, 5, 2, False, 0.0)
    x = torch.randn(2, 12, 3)
    with torch.no_grad():
        whole, h_whole = rnn(x)
        _, state = rnn(x[:, :4])  # warm up on a seed, then step
        outs = []
        for t in range(4, 12):
            out, state = rnn(x[:, t : t + 1], state)
            outs.append(out)
        h = [torch.zeros(2, 5), torch.zeros(2, 5)]
        for t in range(12):  # the step cells, by hand
            h[0] = rnn.layers[0][0](x[:, t], h[0])
            h[1] = rnn.layers[1][0](h[0], h[1])
    torch.testing.assert_close(torch.cat(outs, dim=1), whole[:, 4:], **TOL)
    torch.testing.assert_close(state, h_whole, **TOL)
    torch.testing.assert_close(state, torch.stack(h), **TOL)


@pytest.mark.parametrize("name", CELLS)
def test_a_zero_initial_state_is_no_state(name):
    """h_0 = 0 needs no log(0): outputs equal the h0=None ones, and the gradient at h_0 = 0 is finite."""
    torch.manual_seed(3)
    rnn = cells.get(name).fused(3, 4, 1, True, 0.0)
    x = torch.randn(2, 6, 3)
    h0 = torch.zeros(2, 2, 4, requires_grad=True)
    out, h_n = rnn(x, h0)
    torch.testing.assert_close(out, rnn(x)[0])
    (out.sum() + h_n.sum()).backward()
    assert torch.isfinite(h0.grad).all() and (h0.grad > 0).all()  # the state leaks into every later step


@pytest.mark.parametrize("name", CELLS)
def test_gradcheck(name):
    """Analytic gradients of the scan (inputs, initial state, weights) equal finite differences, float64."""
    torch.manual_seed(4)
    rnn = cells.get(name).fused(2, 3, 2, True, 0.0).double()
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in rnn.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in rnn.parameters()]

    def f(x, h0, *params):
        return torch.func.functional_call(rnn, dict(zip(names, params)), (x, h0))  # (out, h_n)

    assert torch.autograd.gradcheck(f, (x, h0, *weights))
    assert torch.autograd.gradcheck(lambda x: rnn(x)[0], (x,))  # no initial state


@pytest.mark.parametrize("name", CELLS)
def test_every_parameter_gets_a_gradient(name):
    rnn = cells.get(name).fused(3, 4, 2, True, 0.1)
    out, h_n = rnn(torch.randn(2, 7, 3))
    (out.square().mean() + h_n.mean()).backward()
    for n, p in rnn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", CELLS)
def test_padding_does_not_change_a_bidirectional_classifier(name):
    """PaddedRNN runs each direction as a single-layer fused module: a padded row classifies as it does alone."""
    from rnnctl.models import RecurrentClassifier
    from rnnctl.tasks.classification import ClassifierConfig, pad

    torch.manual_seed(6)
    m = ClassifierConfig(cell=name, embedding_size=6, hidden_size=7, layers=2, bidirectional=True, pooling="last+max")
    model = RecurrentClassifier(m, vocab_size=12, num_classes=5).eval()
    short, long = [3, 4, 5], [2, 9, 8, 7, 6, 5, 4, 3]
    with torch.no_grad():
        alone = model(*pad([short])).logits
        beside = model(*pad([long, short])).logits
    torch.testing.assert_close(beside[1:], alone, **TOL)


# -- through the CLI -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_trains_a_bidirectional_names_classifier(name, cli, names_files, isolated):
    tiny = CONFIGS / "smoke" / "names_tiny.yaml"
    sets = ["--set", f"model.cell={name}", "--set", "model.bidirectional=true", "--set", "model.layers=2"]
    result = cli("train", tiny, *names_files.set_args(), *sets)
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert "rnn.layers.1.1.layers.0.0.linear.weight" in ckpt["model"]  # layer 2's backward scan
    assert cli("predict", "latest", "McKenzie").exit_code == 0
    assert cli("eval", "latest").exit_code == 0


@pytest.mark.parametrize("name", CELLS)
def test_trains_a_language_model_and_samples(name, cli, tmp_path, isolated):
    assert_lm_trains_and_samples(cli, tmp_path, name)


def test_sampling_through_the_fused_module_equals_the_stepwise_model():
    """CharLM.generate steps the fused module one character at a time; the stepwise cells give the same text."""
    from rnnctl.models import CharLM
    from rnnctl.tasks.charlm import CharLMModel

    torch.manual_seed(5)
    fused = CharLM(CharLMModel(cell="minlstm", layers=2, embedding_size=8, hidden_size=16), vocab_size=11)
    stepwise = CharLM(CharLMModel(cell="minlstm", layers=2, embedding_size=8, hidden_size=16, stepwise=True), 11)
    state = {k.replace("layers.", "cells.").replace(".0.linear", ".linear"): v for k, v in fused.state_dict().items()}
    stepwise.load_state_dict(state)
    a = list(fused.generate([1, 2, 3], 40, generator=torch.Generator().manual_seed(0)))
    b = list(stepwise.generate([1, 2, 3], 40, generator=torch.Generator().manual_seed(0)))
    assert a == b


def test_a_carried_state_trains_sincos(cli, isolated):
    result = cli(
        "train", CONFIGS / "smoke" / "sincos_tiny.yaml", "--set", "model.cell=mingru", "--set", "model.layers=2"
    )
    assert result.exit_code == 0, result.output

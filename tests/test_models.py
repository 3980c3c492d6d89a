"""RecurrentClassifier: shapes for every configuration; padding and batching never change logits, and the
padded encoder computes exactly what packed sequences through the fused module compute."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnctl import cells
from rnnctl.models import PaddedRNN, RecurrentClassifier
from rnnctl.tasks.classification import ClassifierConfig, pad

VOCAB, CLASSES, EMB, HID = 12, 5, 6, 7
CONFIGS = list(
    itertools.product(["rnn", "lstm", "gru"], [False, True], [1, 2], ["last", "max", "mean", "last+max", "mean+max"])
)
IDS = [f"{c}-{'bi' if b else 'uni'}-L{n}-{p}" for c, b, n, p in CONFIGS]


def model_for(cell, bidirectional, layers, pooling, seed=0) -> RecurrentClassifier:
    torch.manual_seed(seed)
    section = ClassifierConfig(
        cell=cell, embedding_size=EMB, hidden_size=HID, layers=layers, bidirectional=bidirectional, pooling=pooling
    )
    m = RecurrentClassifier(section, VOCAB, CLASSES)
    return m.eval()


def seqs(*lengths: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (n,), generator=g).tolist() for n in lengths]


def logits(model, sequences):
    x, lengths = pad(sequences)
    with torch.no_grad():
        return model(x, lengths).logits


@pytest.mark.parametrize("cell,bidirectional,layers,pooling", CONFIGS, ids=IDS)
def test_shapes_and_loss(cell, bidirectional, layers, pooling):
    model = model_for(cell, bidirectional, layers, pooling)
    x, lengths = pad(seqs(3, 5, 5, 1))
    out = model(x, lengths)
    assert out.logits.shape == (4, CLASSES)
    assert out.loss is None
    assert torch.isfinite(out.logits).all()
    targets = torch.tensor([0, 1, 2, 4])
    out = model(x, lengths, targets=targets)
    assert out.loss.shape == () and out.loss.item() > 0
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, targets).item())
    out.loss.backward()
    assert model.embedding.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.embedding.weight.grad[0].abs().sum() == 0  # padding id 0 gets no gradient
    factor = 2 if "+" in pooling else 1
    assert model.head.in_features == HID * (2 if bidirectional else 1) * factor
    assert len(model.rnn.layers) == layers and model.rnn.directions == (2 if bidirectional else 1)


@pytest.mark.parametrize("cell,bidirectional,layers,pooling", CONFIGS, ids=IDS)
def test_equal_and_mixed_length_batches_agree(cell, bidirectional, layers, pooling):
    """An equal-length batch has no padding; the same rows beside longer or shorter ones give the same logits."""
    model = model_for(cell, bidirectional, layers, pooling)
    equal = seqs(5, 5, 5, seed=1)
    unpacked = logits(model, equal)  # lengths all equal: the unpacked path
    longer = seqs(8, seed=2)
    shorter = seqs(2, seed=3)
    with_longer = logits(model, [*equal, *longer])  # padded rows: the packed path
    with_shorter = logits(model, [*shorter, *equal])  # packed, the rows themselves unpadded
    torch.testing.assert_close(with_longer[:3], unpacked, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(with_shorter[1:], unpacked, atol=1e-6, rtol=1e-5)
    # and each row alone (batch of one: unpacked) is the same again
    for i, s in enumerate(equal):
        torch.testing.assert_close(logits(model, [s])[0], unpacked[i], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell,bidirectional,layers,pooling", CONFIGS, ids=IDS)
def test_padding_does_not_change_logits(cell, bidirectional, layers, pooling):
    model = model_for(cell, bidirectional, layers, pooling)
    name, long_name = seqs(3, 11, seed=4)
    alone = logits(model, [name])[0]
    in_batch = logits(model, [name, long_name])
    torch.testing.assert_close(in_batch[0], alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(in_batch[1], logits(model, [long_name])[0], atol=1e-6, rtol=1e-5)
    # order in the batch does not matter either (enforce_sorted=False)
    torch.testing.assert_close(logits(model, [long_name, name])[1], alone, atol=1e-6, rtol=1e-5)
    # the padding value is 0 and never leaks: different content in a neighbour changes nothing for `name`
    other = logits(model, [name, seqs(11, seed=5)[0]])
    torch.testing.assert_close(other[0], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "max", "mean", "last+max", "mean+max"])
def test_different_inputs_give_different_logits(pooling):
    """The checks above would pass for a model that ignores its input: make sure it does not."""
    model = model_for("gru", True, 1, pooling)
    a, b = logits(model, seqs(4, seed=6)), logits(model, seqs(4, seed=7))
    assert not torch.allclose(a, b)
    # and the last token matters (a model that dropped the tail of each sequence would fail this)
    s = seqs(6, seed=8)[0]
    t = [*s[:-1], (s[-1] + 1 - 2) % (VOCAB - 2) + 2]
    assert not torch.allclose(logits(model, [s, s[:2]])[0], logits(model, [t, t[:2]])[0])


def test_mean_pooling_divides_by_true_length():
    model = model_for("rnn", False, 1, "mean")
    s = seqs(4, seed=9)[0]
    x, lengths = pad([s])
    with torch.no_grad():
        out = model.rnn(model.embedding(x), lengths)
        expected = model.head(out.mean(dim=1))
    torch.testing.assert_close(logits(model, [s, seqs(9, seed=10)[0]])[0], expected[0], atol=1e-6, rtol=1e-5)


def test_mean_plus_max_pooling_is_the_mean_then_the_max_over_the_true_length():
    model = model_for("gru", True, 1, "mean+max")
    s, longer = seqs(4, 9, seed=12)
    x, lengths = pad([s])
    with torch.no_grad():
        out = model.rnn(model.embedding(x), lengths)[0]  # (T, 2H): no padding in a batch of one
        expected = model.head(torch.cat([out.mean(dim=0), out.max(dim=0).values]))
    torch.testing.assert_close(logits(model, [s, longer])[0], expected, atol=1e-6, rtol=1e-5)


def test_dropout_only_between_layers_and_inactive_in_eval():
    section = ClassifierConfig(cell="gru", embedding_size=EMB, hidden_size=HID, dropout=0.5)
    m1 = RecurrentClassifier(section.model_copy(update={"layers": 1}), VOCAB, CLASSES)
    m2 = RecurrentClassifier(section.model_copy(update={"layers": 2}), VOCAB, CLASSES)
    assert m1.rnn.drop.p == 0.0 and m2.rnn.drop.p == 0.5
    m2.eval()
    x, lengths = pad(seqs(3, 6, seed=11))
    with torch.no_grad():
        assert torch.equal(m2(x, lengths).logits, m2(x, lengths).logits)


def test_label_smoothing_trains_on_smoothed_loss_but_meter_reports_plain_nll():
    from rnnctl.tasks.classification import ClassificationMeter, SequenceBatch

    torch.manual_seed(0)
    model = RecurrentClassifier(ClassifierConfig(hidden_size=8, embedding_size=4, label_smoothing=0.2), 12, 3)
    x = torch.randint(1, 12, (5, 6))
    lengths = torch.tensor([6, 5, 4, 6, 2])
    targets = torch.tensor([0, 1, 2, 1, 0])
    out = model(x, lengths, targets)
    plain = torch.nn.functional.cross_entropy(out.logits, targets)
    smoothed = torch.nn.functional.cross_entropy(out.logits, targets, label_smoothing=0.2)
    assert out.loss.item() == pytest.approx(smoothed.item())
    assert abs(smoothed.item() - plain.item()) > 1e-3
    meter = ClassificationMeter(["a", "b", "c"])
    meter.update(SequenceBatch(x, lengths, targets), out)
    assert meter.compute()["loss"] == pytest.approx(plain.item())


def test_word_dropout_reads_a_share_of_real_tokens_as_unk_in_training_only():
    torch.manual_seed(0)
    model = RecurrentClassifier(ClassifierConfig(hidden_size=8, embedding_size=4, word_dropout=0.3), 50, 2)
    seen = []
    model.embedding.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    x = torch.randint(2, 50, (40, 30))
    lengths = torch.randint(5, 31, (40,))
    x[torch.arange(30) >= lengths.unsqueeze(1)] = 0
    model(x, lengths)
    read = seen[-1]
    real = x > 0
    assert torch.equal(read == 0, ~real)  # padding stays padding
    changed = read != x
    assert torch.all(read[changed] == 1)  # a dropped token reads as <unk>
    assert 0.25 < changed.sum().item() / real.sum().item() < 0.35
    model.eval()
    model(x, lengths)
    assert torch.equal(seen[-1], x)  # evaluation reads every token


@pytest.mark.parametrize("cell,bidirectional,layers", [(c, b, n) for c, b, n, p in CONFIGS if p == "last"])
def test_padded_rnn_equals_packed_fused_module(cell, bidirectional, layers):
    """Same weights (a fused module's state dict, loaded through the old key names): the padded encoder's
    outputs at real positions and its final states equal pack_padded_sequence through the fused module."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(3)
    fused = cells.get(cell).fused(EMB, HID, layers, bidirectional, 0.0)
    padded = PaddedRNN(cell, EMB, HID, layers, bidirectional, dropout=0.0)
    padded.load_state_dict(fused.state_dict())  # `weight_ih_l1_reverse` -> `layers.1.1.weight_ih_l0`
    lengths = torch.tensor([7, 3, 5, 1, 7])
    x = torch.randn(5, 7, EMB)
    with torch.no_grad():
        packed, h = fused(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        expected, _ = pad_packed_sequence(packed, batch_first=True)
        got = padded(x, lengths)
        final = padded.final(got, lengths)
    real = torch.arange(7) < lengths.unsqueeze(1)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    h_n = h[0] if isinstance(h, tuple) else h
    D = 2 if bidirectional else 1
    torch.testing.assert_close(final, h_n[-D:].transpose(0, 1).reshape(5, -1), atol=1e-5, rtol=1e-4)


def test_old_checkpoint_of_a_fused_classifier_loads():
    """A state dict saved when the classifier held one fused nn.GRU loads into the padded encoder."""
    model = model_for("gru", True, 2, "max")
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("rnn.")}
    fused = torch.nn.GRU(EMB, HID, num_layers=2, bidirectional=True, batch_first=True)
    old.update({f"rnn.{k}": v for k, v in fused.state_dict().items()})
    fresh = model_for("gru", True, 2, "max", seed=1)
    fresh.load_state_dict(old)  # strict: every key mapped, none missing
    torch.testing.assert_close(fresh.rnn.layers[1][1].weight_hh_l0, fused.weight_hh_l1_reverse)

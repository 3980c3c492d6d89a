"""model.ngrams: hashed n-gram bags beside the RNN. The ids (stable, one bag per text whatever the batch), the
model (shapes, padding, dropout), and the option through the real CLI: train, eval, predict, --resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY, assert_one_line_error, run_dirs, tiny_config

from rnnctl.errors import RunError
from rnnctl.models import RecurrentClassifier
from rnnctl.runs import RunFolder
from rnnctl.tasks import get_task
from rnnctl.tasks.classification import ClassifierConfig, NgramConfig, pad
from rnnctl.tasks import text
from rnnctl.tasks.text import NGRAM_HASH, ngram_bags, token_codes

VOCAB = ["<pad>", "<unk>", "A", "b", "a"]
SMALL = ["model.ngrams.buckets=1024", "model.ngrams.dim=8"]  # the tiny config with a bag


def settings(n=3, buckets=1000, whole=True, lowercase=True):
    return {"n": n, "buckets": buckets, "whole": whole, "lowercase": lowercase, "hash": NGRAM_HASH}


def bags(seqs, vocab=VOCAB, **kw):
    x, lengths = pad(seqs)
    s = settings(**kw)
    return ngram_bags(x, lengths, token_codes(vocab, s), s)


# -- the ids -------------------------------------------------------------------------------------


def test_ids_are_what_checkpoints_hold():
    """Fixed values: a change of the hashing would make every saved model read other rows than it learned."""
    ids, counts = bags([[2, 3], [4, 3, 4]])
    assert counts.tolist() == [10, 13]  # "Ab": <,a,b,> + <a,ab,b> + <ab,ab> + the whole; "aba": 5 + 4 + 3 + 1
    assert ids.dtype == torch.int32 and ids.shape == (2, 13)
    assert ids[0].tolist() == [400, 164, 608, 190, 971, 580, 942, 622, 204, 824, 0, 0, 0]
    assert ids[1].tolist() == [400, 164, 608, 164, 190, 971, 580, 344, 976, 622, 77, 413, 741]


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("whole", [True, False])
def test_counts_layout_and_range(n, whole):
    seqs = [[2], [3, 4, 3, 4, 3, 4, 2], [4, 4]]
    ids, counts = bags(seqs, n=n, whole=whole, buckets=7)
    for row, seq, count in zip(ids, seqs, counts.tolist()):
        span = len(seq) + 2  # with the start and end markers
        assert count == sum(span - k + 1 for k in range(1, min(n, span) + 1)) + whole
        assert (row[:count] >= 1).all() and (row[:count] <= 7).all()  # 0 is padding, never an n-gram
        assert (row[count:] == 0).all()
    assert ids.size(1) == max(counts)


def test_a_bag_depends_on_its_text_alone():
    """Not on the batch's padding width, the row, or the vocabulary's order; case only when asked."""
    alone, _ = bags([[4, 3]])
    ids, counts = bags([[3, 3, 3, 3, 3, 3], [4, 3]])
    assert ids[1, : counts[1]].tolist() == alone[0].tolist()
    reordered = ["<pad>", "<unk>", "a", "b", "A"]  # "ab" is now [2, 3]
    assert bags([[2, 3]], vocab=reordered)[0].tolist() == alone.tolist()
    upper, _ = bags([[2, 3]])  # "Ab" and "ab" share every n-gram when lowercased
    assert upper.tolist() == alone.tolist()
    assert bags([[2, 3]], lowercase=False)[0].tolist() != bags([[4, 3]], lowercase=False)[0].tolist()


def test_hashing_in_chunks_changes_nothing(monkeypatch):
    seqs = [[4, 3], [2, 2, 3, 4, 3], [3]] * 3
    whole, counts = bags(seqs)
    monkeypatch.setattr(text, "NGRAM_CHUNK", 8)  # one text at a time
    chunked, chunk_counts = bags(seqs)
    assert torch.equal(chunked, whole) and torch.equal(chunk_counts, counts)


def test_whole_text_tells_apart_texts_with_the_same_ngrams():
    """With n=1, "aba" and "aab" have the same n-grams; the whole text is the one feature that differs."""
    aba, _ = bags([[4, 3, 4]], n=1)
    aab, _ = bags([[4, 4, 3]], n=1)
    assert sorted(aba[0, :-1].tolist()) == sorted(aab[0, :-1].tolist()) and aba[0, -1] != aab[0, -1]


def test_a_checkpoint_hashed_otherwise_is_a_run_error():
    with pytest.raises(RunError, match="hashed with 'md5'"):
        token_codes(VOCAB, {**settings(), "hash": "md5"})


# -- the model -----------------------------------------------------------------------------------


def model(dropout=0.0, **ngrams) -> RecurrentClassifier:
    torch.manual_seed(0)
    section = ClassifierConfig(
        embedding_size=6, hidden_size=7, bidirectional=True, pooling="max",
        ngrams=NgramConfig(buckets=50, dim=4, dropout=dropout, **ngrams),
    )  # fmt: skip
    return RecurrentClassifier(section, len(VOCAB), 3)


def test_model_shapes_zero_start_and_gradients():
    m = model()
    assert m.head.in_features == 2 * 7 + 4 and m.ngrams.weight.shape == (51, 4)
    assert (m.ngrams.weight == 0).all()  # buckets no training n-gram reaches add nothing
    x, lengths = pad([[2, 3], [4, 3, 4]])
    ids, _ = bags([[2, 3], [4, 3, 4]], buckets=50)
    out = m(x, lengths, targets=torch.tensor([0, 2]), ngrams=ids)
    assert out.logits.shape == (2, 3) and out.loss.item() > 0
    out.loss.backward()
    grad = m.ngrams.weight.grad
    assert grad[ids[1, :13].long()].abs().sum() > 0 and grad[0].abs().sum() == 0  # padding learns nothing
    with pytest.raises(ValueError, match="ngrams"):
        m(x, lengths)


def test_padding_of_the_bag_never_changes_logits():
    m = model().eval()
    with torch.no_grad():
        m.ngrams.weight.normal_()
    seqs = [[2, 3], [4, 3, 4, 3, 4, 3]]
    ids, counts = bags(seqs, buckets=50)
    x, lengths = pad(seqs)
    with torch.no_grad():
        both = m(x, lengths, ngrams=ids).logits
        first = m(*pad(seqs[:1]), ngrams=ids[:1, : counts[0]]).logits
    torch.testing.assert_close(both[:1], first)


def test_ngram_dropout_acts_in_training_only():
    m = model(dropout=0.5)
    with torch.no_grad():
        m.ngrams.weight.normal_()
    x, lengths = pad([[4, 3, 4, 3, 4]] * 8)
    ids, _ = bags([[4, 3, 4, 3, 4]] * 8, buckets=50)
    m.eval()
    with torch.no_grad():
        ev = m(x, lengths, ngrams=ids).logits
        torch.manual_seed(1)
        m.train()
        m.drop.p = 0.0  # only the bag's dropout left
        tr = m(x, lengths, ngrams=ids).logits
    assert torch.allclose(ev[0], ev[1]) and not torch.allclose(tr[0], tr[1])  # same text, other n-grams kept


def test_a_bag_with_its_own_head_is_an_ensemble_of_two_classifiers():
    """head: own: the RNN's classifier reads no bag; each branch has its own loss (their sum trains both); the
    logits are the log of the branches' mean probability; the bag learns at lr_scale times the rate."""
    m = model(head="own", lr_scale=5.0).eval()
    assert m.head.in_features == 2 * 7 and m.ngram_head.in_features == 4
    with torch.no_grad():
        m.ngrams.weight.normal_()
    seen = {}
    for name in ("head", "ngram_head"):
        getattr(m, name).register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out))
    seqs = [[2, 3], [4, 3, 4]]
    ids, _ = bags(seqs, buckets=50)
    y = torch.tensor([0, 2])
    out = m(*pad(seqs), targets=y, ngrams=ids)
    rnn, bag = seen["head"], seen["ngram_head"]
    assert not torch.allclose(rnn.softmax(-1), bag.softmax(-1))
    torch.testing.assert_close(out.logits.softmax(-1), (rnn.softmax(-1) + bag.softmax(-1)) / 2)
    torch.testing.assert_close(out.loss, F.cross_entropy(rnn, y) + F.cross_entropy(bag, y))
    out.loss.backward()
    assert m.ngrams.weight.grad.abs().sum() > 0 and m.embedding.weight.grad.abs().sum() > 0
    groups = m.optimizer_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 5.0]
    bag_params = {id(p) for p in (*m.ngrams.parameters(), *m.ngram_head.parameters())}
    assert {id(p) for p in groups[1]["params"]} == bag_params
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert len(model().optimizer_groups()) == 1  # lr_scale 1: one group, as before


# -- through the task and the CLI ----------------------------------------------------------------


def test_prepare_tensorizes_the_bags_once_and_batches_carry_them(names_files):
    cfg = tiny_config(names_files, *SMALL)
    data = get_task("names").prepare(cfg)
    assert data.meta["ngrams"] == {"n": 5, "buckets": 1024, "whole": True, "lowercase": True, "hash": NGRAM_HASH}
    split = data.splits["train"]
    ids, counts = split.ngrams
    assert ids.shape[0] == len(split) and (counts == (split.lengths + 2) * 5 - 10 + 1).all()  # n=5, names >= 3
    batch = next(split.batches(16, torch.Generator().manual_seed(0)))
    assert batch.inputs["ngrams"].shape[1] == int(((batch.lengths + 2) * 5 - 9).max())
    part = batch.select(2, 5)
    assert part.ngrams.shape[0] == 3 and part.inputs["ngrams"] is part.ngrams
    facts = data.derived["ngrams"]
    assert facts["coverage"]["train"] == 1.0 and 0 < facts["coverage"]["test"] <= 1
    assert 0 < facts["buckets_trained"] <= 1024
    assert "ngrams" not in get_task("names").prepare(tiny_config(names_files)).meta  # off by default


@pytest.mark.slow
def test_train_eval_predict_and_resume_through_the_cli(cli, names_files, isolated):
    """The option end to end; a 1-epoch run resumed to 2 equals a 2-epoch run (weights, Adam's moments and
    the RNG of the n-gram dropout all come back from the checkpoint)."""
    sets = [*SMALL, "model.ngrams.dropout=0.3", "train.epochs=2"]
    for more in (["name=ref"], ["name=cut", "train.epochs=1"]):
        result = cli("train", TINY, *names_files.set_args(), *[a for o in (*sets, *more) for a in ("--set", o)])
        assert result.exit_code == 0, result.output
    ref, cut = (next(d for d in run_dirs(isolated) if d.name.endswith(s)) for s in ("-ref", "-cut"))
    derived = yaml.safe_load((ref / "config.yaml").read_text())["derived"]
    assert derived["ngrams"]["per_example"] > 10
    ckpt = RunFolder(ref).load_checkpoint("last")
    assert ckpt["meta"]["ngrams"]["buckets"] == 1024 and ckpt["model"]["ngrams.weight"].shape == (1025, 8)

    trained = json.loads((ref / "run.json").read_text())["test"]
    result = cli("eval", ref.name)
    assert result.exit_code == 0, result.output
    report = json.loads((ref / "eval" / "test-best.json").read_text())
    assert report["acc"] == trained["acc"] and report["loss"] == pytest.approx(trained["loss"], abs=1e-6)

    result = cli("predict", ref.name, "McKolan", "Petrovski", "--top", "1")
    assert result.exit_code == 0, result.output
    assert "McKolan" in result.stdout and "Petrovski" in result.stdout

    result = cli("train", "--resume", cut.name, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert RunFolder(cut).rows()[-1]["val_loss"] == RunFolder(ref).rows()[-1]["val_loss"]
    assert json.loads((cut / "run.json").read_text())["test"] == trained


def test_own_head_with_its_learning_rate_and_fused_adam_through_the_cli(cli, names_files, isolated):
    """head: own, lr_scale and optim.fused end to end: the checkpoint holds the bag's classifier and two optimizer
    groups whose rates keep their ratio down the cosine schedule, and eval scores what training scored."""
    sets = [*SMALL, "model.ngrams.head=own", "model.ngrams.lr_scale=4", "optim.fused=true", "train.epochs=2",
            "train.schedule.name=cosine", "train.schedule.min_lr=0.001"]  # fmt: skip
    result = cli("train", TINY, *names_files.set_args(), *[a for o in sets for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    ckpt = RunFolder(run).load_checkpoint("last")
    assert ckpt["model"]["ngram_head.weight"].shape == (len(ckpt["meta"]["classes"]), 8)
    rest, bag = ckpt["optimizer"]["param_groups"]
    assert rest["fused"] and 0 < rest["lr"] < 0.01 and bag["lr"] == pytest.approx(4 * rest["lr"])
    trained = json.loads((run / "run.json").read_text())["test"]
    result = cli("eval", run.name)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval" / "test-best.json").read_text())["acc"] == trained["acc"]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.ngrams.n=0", "model.ngrams.n: Input should be greater than or equal to 1"),
        ("model.ngrams.buckets=0", "model.ngrams.buckets: Input should be greater than or equal to 1"),
        ("model.ngrams.dropout=1", "model.ngrams.dropout: Input should be less than 1"),
        ("model.ngrams.dim=wide", "model.ngrams.dim: Input should be a valid integer"),
        ("model.ngrams.size=3", "unknown key 'model.ngrams.size'"),
        ("model.ngrams=5", "model.ngrams: Input should be a valid dictionary"),
        ("model.ngrams.head=both", "model.ngrams.head: Input should be 'shared' or 'own'"),
        ("model.ngrams.lr_scale=0", "model.ngrams.lr_scale: Input should be greater than 0"),
    ],
)
def test_bad_values_are_one_line_config_errors(cli, names_files, isolated, override, needle):
    assert_one_line_error(cli("train", TINY, *names_files.set_args(), "--set", override), needle)
    assert not run_dirs(isolated)


def test_tasks_without_text_have_no_ngrams(cli, isolated):
    tiny = TINY.parent / "charlm_tiny.yaml"
    assert_one_line_error(cli("train", tiny, "--set", "model.ngrams.n=3"), "unknown key 'model.ngrams'")


def test_sentiment_words_get_bags_too(tmp_path, cli, isolated):
    rows = [("a great film, great cast", "pos"), ("an awful plot and awful acting", "neg")] * 20
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    smoke = TINY.parent / "sentiment_tiny.yaml"
    sets = [f"data.path={csv}", "data.test_fraction=0.25", "model.ngrams.n=2", *SMALL]
    result = cli("train", smoke, *[a for o in sets for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    assert RunFolder(run).load_checkpoint("best")["meta"]["ngrams"]["n"] == 2
    result = cli("predict", run.name, "great great film")
    assert result.exit_code == 0 and "pos" in result.stdout

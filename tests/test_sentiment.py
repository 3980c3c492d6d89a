"""The sentiment task: tokenizer, vocabulary, data layouts (CSV, aclImdb folder and archive), the download,
pretrained vectors, and train -> eval -> predict through the real CLI on a generated corpus.

No test touches the network: conftest closes torch.hub.download_url_to_file, and the tests that exercise
`download` replace it with a fake that writes bytes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError

import numpy as np
import pytest
import torch
import torch.hub
import yaml
from conftest import CONFIGS, Spy, _isolate, assert_one_line_error, pairs, run_dirs
from typer.testing import CliRunner

from rnnctl.cli import app
from rnnctl.config import load_config
from rnnctl.data import download, packaged, stratified_split
from rnnctl.errors import DataError
from rnnctl.runs import load_checkpoint
from rnnctl.tasks import get_task, sentiment
from rnnctl.tasks.sentiment import ARCHIVE, read_archive, read_folder
from rnnctl.tasks.text import WordTokenizer as Tokenizer
from rnnctl.tasks.text import build_vocab, truncate

SMOKE = CONFIGS / "smoke" / "sentiment_tiny.yaml"  # as shipped it reads the packaged generated reviews
IMDB = "data.path=null"  # the smoke config on IMDb: $RNNCTL_DATA/imdb, else downloaded
TASK = get_task("sentiment")
URL_IMDB = sentiment.URL

# -- the download helper -------------------------------------------------------------------------

URL = "https://example.org/archive.tar.gz"


def fake_download(payload: bytes, calls: list | None = None):
    def fetch(url, dst, hash_prefix=None, progress=True):
        if calls is not None:
            calls.append((url, dst, progress))
        Path(dst).write_bytes(payload)

    return fetch


def test_download_checks_md5_and_renames(tmp_path, monkeypatch):
    payload = b"not really an archive"
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download(payload, calls))
    dest = tmp_path / "cache" / "x" / "archive.tar.gz"
    assert download(URL, dest, hashlib.md5(payload).hexdigest()) == dest
    assert dest.read_bytes() == payload
    ((url, dst, progress),) = calls
    assert url == URL and progress and Path(dst) != dest and Path(dst).parent == dest.parent  # a temp file first
    assert sorted(p.name for p in dest.parent.iterdir()) == ["archive.tar.gz"]  # the temp file is gone


def test_download_md5_mismatch_deletes_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download(b"damaged"))
    dest = tmp_path / "cache" / "archive.tar.gz"
    with pytest.raises(DataError) as info:
        download(URL, dest, "0" * 32)
    got = hashlib.md5(b"damaged").hexdigest()
    assert (
        str(info.value) == f"{URL}: md5 mismatch: expected {'0' * 32}, got {got} (a damaged download; it was deleted)"
    )
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize(
    "error, reason",
    [
        (URLError("[Errno -3] Temporary failure in name resolution"), "Temporary failure in name resolution"),
        (HTTPError(URL, 404, "Not Found", None, None), "HTTP 404 Not Found"),
        (TimeoutError("timed out"), "timed out"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
    ],
    ids=["dns", "http", "timeout", "refused"],
)
def test_download_network_failures_are_one_line(tmp_path, monkeypatch, error, reason):
    def fail(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(b"partial")  # a failure mid-way leaves nothing behind either
        raise error

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(DataError) as info:
        download(URL, tmp_path / "cache" / "a.tar.gz", "0" * 32, hint="put a.tar.gz in HERE")
    msg = str(info.value)
    assert msg.startswith(f"cannot download {URL} (") and msg.endswith("): put a.tar.gz in HERE")
    assert reason in msg and "\n" not in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_tests_cannot_reach_the_network(tmp_path):
    with pytest.raises(DataError, match="tests never use the network"):
        download(URL, tmp_path / "a.tar.gz", "0" * 32)


# -- a generated corpus in every layout ------------------------------------------------------------

CUES = {
    "pos": ["great", "wonderful", "moving", "superb", "loved", "brilliant"],
    "neg": ["awful", "boring", "terrible", "dull", "hated", "waste"],
    "mixed": ["okay", "uneven", "average", "mediocre"],
}
FILLER = ["the", "film", "movie", "plot", "actor", "scene", "was", "and", "a", "it", "story", "director", "of", "cast"]


def gen_reviews(n: int, seed: int, labels=("neg", "pos")) -> list[tuple[str, str]]:
    """n (text, label) rows whose cue words give the label away, with filler, punctuation and <br />."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rnd.choice(FILLER) for _ in range(rnd.randint(4, 30))]
        for _ in range(rnd.randint(1, 3)):
            words.insert(rnd.randrange(len(words) + 1), rnd.choice(CUES[label]))
        cut = rnd.randrange(len(words) + 1)
        text = " ".join(words[:cut]).capitalize() + rnd.choice([". <br /><br />", "! ", ", "]) + " ".join(words[cut:])
        rows.append((text.strip() + rnd.choice([".", "!", "..."]), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label"), gz: bool = False) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_acl_tree(root: Path, train, test) -> Path:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, plus what a reader must skip: unsup/ and side files."""
    for split, rows in (("train", train), ("test", test)):
        ids = {"pos": 0, "neg": 0}
        for text, label in rows:
            rating = 8 if label == "pos" else 2
            f = root / split / label / f"{ids[label]}_{rating}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text, encoding="utf-8")
            ids[label] += 1
        (root / split / "labeledBow.feat").write_text("0 0:1\n")
        (root / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000000/\n")
    for i in range(5):  # unlabelled reviews: never read
        (root / "train" / "unsup").mkdir(parents=True, exist_ok=True)
        (root / "train" / "unsup" / f"{i}_0.txt").write_text("unlabelled zebra review", encoding="utf-8")
    (root / "imdb.vocab").write_text("the\nfilm\n")
    (root / "README").write_text("Large Movie Review Dataset v1.0\n")
    return root


def write_archive(path: Path, tree: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname="aclImdb")
    return path


@dataclass
class Corpus:
    train: Path  # CSV
    test: Path  # CSV
    acl: Path  # aclImdb/ folder
    archive: Path  # aclImdb_v1.tar.gz of that folder
    rows: list
    test_rows: list

    def set_args(self, *more: str) -> list[str]:
        return [a for o in (f"data.path={self.train}", f"data.test_path={self.test}", *more) for a in ("--set", o)]


def make_corpus(folder: Path, n: int = 400, n_test: int = 100) -> Corpus:
    rows, test_rows = gen_reviews(n, seed=1), gen_reviews(n_test, seed=2)
    acl = write_acl_tree(folder / "tree" / "aclImdb", rows, test_rows)
    return Corpus(
        train=write_csv(folder / "reviews_train.csv", rows),
        test=write_csv(folder / "reviews_test.csv.gz", test_rows, gz=True),
        acl=acl,
        archive=write_archive(folder / ARCHIVE, acl),
        rows=rows,
        test_rows=test_rows,
    )


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    return make_corpus(tmp_path / "corpus", n=120, n_test=40)


def config(*overrides: str):
    return load_config(SMOKE, list(overrides))


def prepare(*overrides: str, meta=None):
    return TASK.prepare(config(*overrides), meta)


def texts_of(split, vocab) -> list[list[str]]:
    return [[vocab[i] for i in split.x[r, : int(split.lengths[r])].tolist()] for r in range(len(split))]


# -- tokenizer and vocabulary --------------------------------------------------------------------


def test_tokenizer_lowercases_drops_line_breaks_and_splits_punctuation():
    tokenize = Tokenizer()
    text = "A GREAT film!<br /><br />It's 10/10, isn't it?<BR>Don’t miss it...<br/>"
    assert tokenize(text) == [
        "a", "great", "film", "!", "it's", "10", "/", "10", ",", "isn't", "it", "?",
        "don’t", "miss", "it", ".", ".", ".",
    ]  # fmt: skip
    assert Tokenizer(lowercase=False)("Great<br />Film") == ["Great", "Film"]
    assert tokenize("<br /><br />  ") == []
    assert tokenize("café naïve") == ["café", "naïve"]  # letters beyond ASCII are word characters


def test_build_vocab_min_freq_max_size_and_order():
    words = ["film", "great", "rare", "awful", "zebra"]
    counts = np.array([0, 5, 3, 1, 3, 0])  # counts[i + 1] is words[i]'s count in train; zebra: not in train
    assert build_vocab(words, counts, 1, None) == ["<pad>", "<unk>", "film", "awful", "great", "rare"]
    assert build_vocab(words, counts, 2, None) == ["<pad>", "<unk>", "film", "awful", "great"]  # ties: a-z
    assert build_vocab(words, counts, 1, 2) == ["<pad>", "<unk>", "film", "awful"]
    assert build_vocab(words, counts, 9, None) == ["<pad>", "<unk>"]


def test_vocabulary_comes_from_the_training_split_only(tmp_path):
    # every row carries a word of its own: the vocabulary holds exactly those of the rows left in train
    rows = [(f"{text} only{i}", label) for i, (text, label) in enumerate(gen_reviews(40, seed=3))]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [("a great zebra film", "pos"), ("awful", "neg")])
    p = prepare(f"data.path={train}", f"data.test_path={test}", "data.val_fraction=0.25")
    vocab = p.meta["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"]
    labels = torch.tensor([0 if label == "neg" else 1 for _, label in rows])
    keep, held = stratified_split(labels, 0.25, 0)  # the carve prepare makes (data.split_seed 0)
    assert {w for w in vocab if w.startswith("only")} == {f"only{i}" for i in keep.tolist()}
    assert len(p.splits["val"]) == len(held) == 10
    # a word seen only in test (or only in val) is <unk> there
    test_words = sorted(texts_of(p.splits["test"], vocab), key=len)
    assert test_words == [["awful"], ["a", "great", "<unk>", "film"]]
    val_words = [w for text in texts_of(p.splits["val"], vocab) for w in text]
    assert val_words.count("<unk>") == 10  # each val row's own word
    # min_freq 2 drops the once-seen words; max_size caps the rest
    p2 = prepare(f"data.path={train}", f"data.test_path={test}", "data.val_fraction=0.25", "data.min_freq=2")
    assert not [w for w in p2.meta["vocab"] if w.startswith("only")]
    p3 = prepare(f"data.path={train}", f"data.test_path={test}", "data.max_size=5")
    assert len(p3.meta["vocab"]) == 7 and p3.derived["vocab_size"] == 7
    assert p3.derived["vocab_coverage"]["train"] < p2.derived["vocab_coverage"]["train"] < 1.0
    assert p.derived["vocab_coverage"]["train"] == 1.0


def test_meta_is_what_predict_needs_and_reloads_the_same_tensors(corpus):
    p = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}")
    assert set(p.meta) == {"vocab", "classes", "tokenizer", "max_len", "truncate"}
    assert p.meta["classes"] == ["neg", "pos"] and p.meta["max_len"] == 40 and p.meta["truncate"] == "head"
    assert p.meta["tokenizer"]["lowercase"] is True
    # plain data only: a checkpoint loads it with weights_only=True
    assert isinstance(p.meta["vocab"], list) and all(isinstance(w, str) for w in p.meta["vocab"])
    again = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}", meta=p.meta)
    for k in ("train", "val", "test"):
        assert torch.equal(p.splits[k].x, again.splits[k].x) and torch.equal(p.splits[k].labels, again.splits[k].labels)
    assert p.splits["train"].x.dtype == torch.int32
    d = p.derived
    assert d["examples"] == {"train": 108, "val": 12, "test": 40}
    assert d["classes"] == ["neg", "pos"] and d["num_classes"] == 2
    assert 0 < d["padding"]["bucketed"] < d["padding"]["unbucketed"] < 1


# -- bucketing and truncation --------------------------------------------------------------------


def test_bucketing_serves_every_example_once_per_epoch_and_cuts_padding(corpus):
    p = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}", "data.max_len=null")
    split = p.splits["train"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        served = [i for idx in split.order(16, gen) for i in idx.tolist()]
        assert sorted(served) == list(range(len(split)))
        rows = []
        for batch in split.batches(16, gen):
            assert batch.x.size(1) == int(batch.lengths.max())
            rows += [tuple(row[: int(n)].tolist()) for row, n in zip(batch.x, batch.lengths)]
        every = [tuple(split.x[i, : int(split.lengths[i])].tolist()) for i in range(len(split))]
        assert sorted(rows) == sorted(every)  # each example once, with its own words
    bucketed, plain = p.derived["padding"]["bucketed"], p.derived["padding"]["unbucketed"]
    assert bucketed < plain / 2, (bucketed, plain)  # 108 examples in 4 batches of 32: real data gains more


def test_truncate_modes():
    ids = list(range(10))
    assert truncate(ids, None, "head") == ids and truncate(ids, 10, "tail") == ids
    assert truncate(ids, 4, "head") == [0, 1, 2, 3]
    assert truncate(ids, 4, "tail") == [6, 7, 8, 9]
    assert truncate(ids, 5, "head+tail") == [0, 1, 2, 8, 9]
    assert truncate(ids, 1, "head+tail") == [0]


def test_max_len_cuts_the_texts_and_predict_alike(corpus):
    p = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}", "data.max_len=6")
    for split in p.splits.values():
        assert int(split.lengths.max()) == 6 and split.x.size(1) == 6
    assert p.derived["truncated"] > 0.5 and p.derived["words_per_example"]["max"] > 6
    full = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}", "data.max_len=null")
    assert full.derived["truncated"] == 0 and int(full.splits["train"].lengths.max()) > 6
    # the kept words are the first six
    tail = prepare(f"data.path={corpus.train}", f"data.test_path={corpus.test}", "data.max_len=6", "data.truncate=tail")
    i = int(full.splits["test"].lengths.argmax())
    n = int(full.splits["test"].lengths[i])
    words = full.splits["test"].x[i, :n].tolist()
    assert p.meta["vocab"] == full.meta["vocab"] == tail.meta["vocab"]  # the cut comes after the vocabulary
    assert p.splits["test"].x[i].tolist() == words[:6]
    assert tail.splits["test"].x[i].tolist() == words[-6:]

    spy = Spy(2)
    out = TASK.predict(spy, p.meta, ["great " * 20, "awful film zebrafish"], top=1)
    assert [lengths.tolist() for _, lengths in spy.seen] == [[6, 3]]
    assert out[0]["words"] == 20 and out[1]["unknown_words"] == 1
    assert out[0]["top"][0][1] == pytest.approx(0.5)


# -- data layouts --------------------------------------------------------------------------------


def test_acl_folder_and_archive_read_the_same_reviews(corpus):
    def by_label(rows):  # neg files, then pos, each by id: the order the rows were written in
        return sorted(rows, key=lambda r: r[1])

    train, test = read_folder(corpus.acl)
    assert pairs(train) == by_label(corpus.rows) and pairs(test) == by_label(corpus.test_rows)
    a_train, a_test = read_archive(corpus.archive)
    assert pairs(a_train) == pairs(train) and pairs(a_test) == pairs(test)
    assert "zebra" not in " ".join(e.text for e in a_train)  # unsup/ is skipped
    assert a_train[0].where.endswith("aclImdb/train/neg/0_2.txt")


def test_half_extracted_folder_is_one_line(corpus, tmp_path):
    partial = tmp_path / "partial" / "aclImdb"
    shutil.copytree(corpus.acl / "train", partial / "train")  # an extraction stopped before test/
    with pytest.raises(DataError, match=r"no test/ folder"):
        read_folder(partial)


def test_every_layout_prepares_the_same_splits(corpus, tmp_path):
    holder = tmp_path / "holder"  # a folder holding aclImdb/
    holder.mkdir()
    shutil.copytree(corpus.acl, holder / "aclImdb")
    csv_folder = tmp_path / "csvs"
    write_csv(csv_folder / "train.csv.gz", sorted(corpus.rows, key=lambda r: r[1]), gz=True)
    write_csv(csv_folder / "test.csv.gz", sorted(corpus.test_rows, key=lambda r: r[1]), gz=True)
    results = [prepare(f"data.path={path}") for path in (corpus.acl, holder, corpus.archive, csv_folder)]
    first = results[0]
    assert first.derived["examples"] == {"train": 108, "val": 12, "test": 40}
    for other in results[1:]:
        assert other.meta == first.meta
        for k in ("train", "val", "test"):
            assert torch.equal(other.splits[k].x, first.splits[k].x)


def test_rnnctl_data_folder_is_searched(corpus, monkeypatch, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(corpus.acl, root / "imdb" / "aclImdb")
    monkeypatch.setenv("RNNCTL_DATA", str(root))
    assert prepare(IMDB).derived["examples"]["test"] == 40
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(corpus.archive, other / "imdb")  # a file where the folder should be: no download into it
    monkeypatch.setenv("RNNCTL_DATA", str(other))
    with pytest.raises(DataError, match=r"other/imdb is not a folder"):
        prepare(IMDB)


def test_csv_with_three_classes_and_a_carved_test_split(tmp_path):
    rows = gen_reviews(90, seed=4, labels=("pos", "mixed", "neg"))
    only = write_csv(tmp_path / "three.csv", rows, header=None)  # no header, no test file: test is carved
    p = prepare(f"data.path={only}")
    assert p.meta["classes"] == ["mixed", "neg", "pos"]
    assert p.derived["examples"] == {"train": 66, "val": 6, "test": 18}  # 20% test, then 10% val, per class
    for split in p.splits.values():
        assert set(split.labels.tolist()) == {0, 1, 2}


def test_packaged_reviews_are_the_generated_ones(tmp_path):
    """rnnctl/datasets/reviews is what its README says: this file's generator, byte for byte."""
    shipped = packaged("reviews")
    made = [write_csv(tmp_path / f"reviews_{k}.csv.gz", gen_reviews(n, seed), gz=True) for k, n, seed in
            (("train", 400, 1), ("test", 100, 2))]  # fmt: skip
    for f in made:
        assert (shipped / f.name).read_bytes() == f.read_bytes(), f.name


def test_the_smoke_config_as_shipped_reads_the_packaged_reviews():
    p = prepare()
    assert p.meta["classes"] == ["neg", "pos"]
    assert p.derived["examples"] == {"train": 360, "val": 40, "test": 100}
    with pytest.raises(
        DataError, match=r"data\.path: no packaged data 'packaged:nope' \(packaged data sets: .*reviews"
    ):
        prepare("data.path=packaged:nope")


# -- the download, offline -----------------------------------------------------------------------


def test_offline_error_says_where_to_put_the_files(cli, tmp_path, isolated):
    result = cli("train", SMOKE, "--set", IMDB)
    folder = tmp_path / "empty-data" / "imdb"
    assert_one_line_error(
        result,
        f"cannot download {URL_IMDB} (tests never use the network): put aclImdb_v1.tar.gz or the extracted aclImdb/"
        f" folder in {folder}, or set data.path",
    )
    assert run_dirs(isolated) == []
    assert list(folder.iterdir()) == []  # no partial archive


def test_without_rnnctl_data_the_cache_is_data_in_the_current_folder(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("RNNCTL_DATA")
    assert_one_line_error(
        cli("train", SMOKE, "--set", IMDB), f"folder in {tmp_path / 'data' / 'imdb'}, or set data.path"
    )


def test_download_once_then_read_from_the_cache(corpus, tmp_path, monkeypatch):
    payload = corpus.archive.read_bytes()
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download(payload, calls))
    monkeypatch.setattr(sentiment, "MD5", hashlib.md5(payload).hexdigest())
    p = prepare(IMDB)
    assert p.derived["examples"] == {"train": 108, "val": 12, "test": 40}
    assert (tmp_path / "empty-data" / "imdb" / ARCHIVE).read_bytes() == payload
    prepare(IMDB)
    assert len(calls) == 1 and calls[0][0] == URL_IMDB


def test_damaged_download_is_deleted(cli, corpus, tmp_path, monkeypatch, isolated):
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download(corpus.archive.read_bytes()))
    line = assert_one_line_error(
        cli("train", SMOKE, "--set", IMDB), "md5 mismatch: expected 7c2ac02c03563afcf9b574c7e56c153a, got "
    )
    assert URL_IMDB in line
    assert list((tmp_path / "empty-data" / "imdb").iterdir()) == [] and run_dirs(isolated) == []


# -- bad data: one line naming the file and row, no run folder -----------------------------------


def bad_train(tmp_path, rows, **kw) -> list[str]:
    train = write_csv(tmp_path / "bad.csv", rows, **kw)
    test = write_csv(tmp_path / "ok_test.csv", gen_reviews(10, seed=7))
    return ["--set", f"data.path={train}", "--set", f"data.test_path={test}"]


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([("good film", "pos", "extra")], "bad.csv: row 3: expected 2 fields (text,label), got 3"),
        ([("  ", "pos")], "bad.csv: row 3: empty text"),
        ([("good film", "")], "bad.csv: row 3: empty label"),
        ([("<br /><br />", "pos")], "bad.csv: row 3: no words in the text"),
    ],
    ids=["fields", "empty-text", "empty-label", "no-words"],
)
def test_bad_rows(cli, tmp_path, isolated, rows, needle):
    rows = [("a fine film", "pos"), *rows, *gen_reviews(20, seed=8)]  # the header is row 1
    assert_one_line_error(cli("train", SMOKE, *bad_train(tmp_path, rows)), needle)
    assert run_dirs(isolated) == []


def test_label_in_test_not_in_train(cli, tmp_path, isolated):
    train = write_csv(tmp_path / "train.csv", gen_reviews(20, seed=1))
    test = write_csv(tmp_path / "test.csv", [("great", "pos"), ("so so", "mixed")])
    result = cli("train", SMOKE, "--set", f"data.path={train}", "--set", f"data.test_path={test}")
    assert_one_line_error(
        result, "test.csv: row 3: label 'mixed' does not occur in the training data (known: neg, pos)"
    )
    assert run_dirs(isolated) == []


@pytest.mark.parametrize("key", ["data.path", "data.test_path", "model.embeddings.path"])
def test_missing_files(cli, corpus, tmp_path, key):
    args = {"data.path": corpus.train, "data.test_path": corpus.test, key: tmp_path / "nope.csv"}
    result = cli("train", SMOKE, *[a for k, v in args.items() for a in ("--set", f"{k}={v}")])
    assert_one_line_error(result, f"{key}: {tmp_path / 'nope.csv'} does not exist")


def test_damaged_archive(cli, tmp_path):
    bad = tmp_path / ARCHIVE
    bad.write_bytes(gzip.compress(b"not a tar file" * 100))
    assert_one_line_error(cli("train", SMOKE, "--set", f"data.path={bad}"), f"{bad}: cannot read the archive")
    raw = write_archive(
        tmp_path / "whole.tar.gz", write_acl_tree(tmp_path / "t" / "aclImdb", [("good", "pos")], [("bad", "neg")])
    )
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw.read_bytes()[:200])  # an interrupted copy
    assert_one_line_error(cli("train", SMOKE, "--set", f"data.path={cut}"), f"{cut}: cannot read the archive: ")
    empty = tmp_path / "folder"
    empty.mkdir()
    assert_one_line_error(cli("train", SMOKE, "--set", f"data.path={empty}"), "expected an aclImdb/ folder")


# -- pretrained vectors --------------------------------------------------------------------------


def write_vectors(path: Path, words: list[str], dim: int, seed: int = 0, header: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    vectors = {w: torch.randn(dim, generator=g) for w in words}
    lines = [f"{len(words)} {dim}"] if header else []
    lines += [w + " " + " ".join(f"{v:.6f}" for v in vec.tolist()) for w, vec in vectors.items()]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return {w: torch.tensor([float(f"{v:.6f}") for v in vec.tolist()]) for w, vec in vectors.items()}


GLOVE_WORDS = ["great", "awful", "film", "the", "notinthecorpus", "boring"]


@pytest.mark.parametrize("name, header", [("vectors.txt", False), ("vectors.txt.gz", False), ("w2v.txt", True)])
def test_pretrained_vectors_fill_their_rows(corpus, tmp_path, name, header):
    vectors = write_vectors(tmp_path / name, GLOVE_WORDS, 16, header=header)
    cfg = config(
        f"data.path={corpus.train}", f"data.test_path={corpus.test}", f"model.embeddings.path={tmp_path / name}"
    )
    p = TASK.prepare(cfg)
    vocab = p.meta["vocab"]
    emb = p.derived["embeddings"]
    assert emb["found"] == 5 and emb["words"] == round(5 / (len(vocab) - 2), 4) and 0 < emb["tokens"] < 1
    model = TASK.build_model(cfg, p.meta, p.init)
    assert not any(isinstance(v, torch.Tensor) for v in p.meta.values())  # the vectors never reach a checkpoint
    for w in GLOVE_WORDS[:4] + ["boring"]:
        assert torch.equal(model.embedding.weight[vocab.index(w)].detach(), vectors[w])
    assert model.embedding.weight.requires_grad  # freeze: false


def test_pretrained_vectors_of_the_wrong_size(cli, corpus, tmp_path, isolated):
    write_vectors(tmp_path / "v8.txt", GLOVE_WORDS, 8)
    result = cli("train", SMOKE, *corpus.set_args(f"model.embeddings.path={tmp_path / 'v8.txt'}"))
    assert_one_line_error(
        result, f"{tmp_path / 'v8.txt'}: vectors of size 8, but model.embedding_size is 16 (set model.embedding_size=8)"
    )
    assert run_dirs(isolated) == []


@pytest.mark.slow
def test_frozen_vectors_stay_and_the_run_needs_no_file_afterwards(cli, corpus, tmp_path, isolated):
    vectors = write_vectors(tmp_path / "glove.txt", GLOVE_WORDS, 16)
    args = corpus.set_args(f"model.embeddings.path={tmp_path / 'glove.txt'}", "model.embeddings.freeze=true")
    result = cli("train", SMOKE, *args, "--set", "train.epochs=2", "-q")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
    assert derived["embeddings"]["found"] == 5
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    vocab = ckpt["meta"]["vocab"]
    assert "init_embedding" not in ckpt["meta"]
    weight = ckpt["model"]["embedding.weight"]
    for w in ("great", "awful", "film", "the", "boring"):
        assert torch.equal(weight[vocab.index(w)], vectors[w])
    before = TASK.build_model(load_config(SMOKE, args[1::2]), {"vocab": vocab, "classes": ["neg", "pos"]})
    assert not before.embedding.weight.requires_grad
    assert ckpt["epoch"] == 2 and weight.abs().sum() > 0
    (tmp_path / "glove.txt").unlink()  # eval, predict and resume read the checkpoint only
    assert cli("eval", run.name).exit_code == 0
    assert cli("predict", run.name, "great film").exit_code == 0
    resumed = cli("train", "--resume", run.name, "--epochs", "3", "-q")
    assert resumed.exit_code == 0, resumed.output
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and torch.equal(last["model"]["embedding.weight"], weight)  # still frozen
    assert yaml.safe_load((run / "config.yaml").read_text())["derived"]["embeddings"]["found"] == 5


# -- through the real CLI: train -> eval -> predict ----------------------------------------------


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    """`rnnctl train` on the smoke config and a generated corpus, once per module. Read it only."""
    base = tmp_path_factory.mktemp("sentiment-run")
    corpus = make_corpus(base / "data")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, base)
        mp.chdir(base)
        result = CliRunner().invoke(app, ["train", str(SMOKE), *corpus.set_args()])
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(base / "runs")
    return run, corpus, result.stdout


def test_train_learns_the_generated_corpus(sentiment_run):
    run, _, stdout = sentiment_run
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["task"] == "sentiment"
    assert info["test"]["acc"] >= 0.85, info["test"]  # chance is 0.5: the cue words give the label away
    derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
    assert derived["examples"] == {"train": 360, "val": 40, "test": 100}
    assert derived["classes"] == ["neg", "pos"]
    for key in ("vocab_size", "vocab_coverage", "padding", "truncated", "words_per_example"):
        assert key in derived, key
    assert "completed" in stdout


def test_eval_reproduces_the_test_accuracy(cli, sentiment_run, isolated):
    run, _, _ = sentiment_run
    copy = Path(shutil.copytree(run, isolated / run.name))
    result = cli("eval", copy.name)
    assert result.exit_code == 0, result.output
    report = json.loads((copy / "eval" / "test-best.json").read_text())
    assert report["acc"] == json.loads((run / "run.json").read_text())["test"]["acc"]
    assert report["n"] == 100 and {c["label"] for c in report["per_class"]} == {"neg", "pos"}


def test_predict_prints_the_label_and_its_probability(cli, sentiment_run):
    run, _, _ = sentiment_run
    result = cli("predict", run, "A wonderful, moving film!", "Boring and awful.<br />A waste.", "--top", "1")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert re.search(r"A wonderful, moving film!\s+pos \d+\.\d%", lines["A"]), lines["A"]
    assert re.search(r"Boring and awful\.<br />A waste\.\s+neg \d+\.\d%", lines["Boring"]), lines["Boring"]
    assert float(re.search(r"pos (\d+\.\d)%", lines["A"]).group(1)) > 50


def test_predict_rejects_text_without_words(cli, sentiment_run):
    run, _, _ = sentiment_run
    assert_one_line_error(cli("predict", run, "great", "<br />"), "predict: input 2 has no words")


def test_predict_file_one_review_per_line(cli, sentiment_run, tmp_path):
    run, _, _ = sentiment_run
    long_review = "A wonderful film. " * 20  # whole: a pipe keeps every row on one line
    reviews = tmp_path / "reviews.txt"
    reviews.write_text(f"Awful, boring plot.\n\n   \n{long_review}\nsuperb zebrafish\n", encoding="utf-8")
    result = cli("predict", run, "--file", reviews, "--top", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == 3  # blank lines skipped
    assert lines[0].lstrip().startswith("Awful, boring plot.") and " neg " in lines[0]
    assert long_review.strip() in lines[1] and "…" not in result.stdout and " pos " in lines[1]
    assert "superb zebrafish (1 of 2 words unknown)" in lines[2]
    # arguments and --file together: arguments first
    both = cli("predict", run, "great", "--file", reviews)
    assert both.exit_code == 0 and both.stdout.splitlines()[1].split()[0] == "great"


def test_predict_on_an_80_column_terminal_wraps_a_review_and_cuts_nothing(cli, sentiment_run, monkeypatch):
    from rich.console import Console

    from rnnctl import cli as cli_module

    run, _, _ = sentiment_run
    monkeypatch.setattr(cli_module, "out", Console(width=80, force_terminal=True, color_system=None, highlight=False))
    review = "An awful, boring zebrafish plot and a waste of a quixotic evening, with nothing good in it at all."
    result = cli("predict", run, review)
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip().splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in result.stdout, result.stdout
    assert re.fullmatch(r"input\s+#1\s+#2", lines[0].strip()), lines[0]
    assert re.search(r"  (neg|pos) \d+\.\d%  (neg|pos) \d+\.\d%$", lines[1]), lines[1]  # every number whole
    shown = " ".join(line[: lines[0].index("#1")].strip() for line in lines[1:])  # the input column, wrapped
    assert re.fullmatch(re.escape(review) + r" \(\d+ of \d+ words unknown\)", shown), shown


def test_predict_input_is_not_rich_markup(cli, sentiment_run):
    run, _, _ = sentiment_run
    result = cli("predict", run, "[bold]great[/bold] [spoiler] film")
    assert result.exit_code == 0, result.output
    assert "[bold]great[/bold] [spoiler] film" in result.stdout


def test_tokenizer_settings_of_checkpoints_from_before_the_text_pipeline_still_load():
    """Sentiment checkpoints saved before names and sentiment shared one pipeline name no tokenizer kind."""
    from rnnctl.tasks.text import CharTokenizer, WordTokenizer, tokenizer_from

    old = {"lowercase": False, "breaks": r"<br\s*/?>", "words": r"\w+"}
    tok = tokenizer_from(old)
    assert isinstance(tok, WordTokenizer) and tok("Good<br />film!") == ["Good", "film"]
    assert tokenizer_from(WordTokenizer(True).settings())("A B") == ["a", "b"]
    assert isinstance(tokenizer_from({"kind": "chars"}), CharTokenizer)

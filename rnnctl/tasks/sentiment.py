"""sentiment: a text -> its label (seed 003: IMDb movie reviews, pos/neg), as a word-level sequence classifier.

Data (`data.path`), any number of classes (the labels of the training data, sorted):
- a CSV of `text,label` (gzip or plain, header or not); the test split from `data.test_path`, else carved;
- a folder holding one `*train*.csv(.gz)` and one `*test*.csv(.gz)` (like ../shared/datasets/imdb);
- the extracted `aclImdb/` folder or the `aclImdb_v1.tar.gz` archive, read in place (`unsup/` ignored);
- `packaged:reviews`: a small generated corpus shipped with rnnctl, for smoke runs;
- null: $RNNCTL_DATA/imdb if set, else ./data/imdb, holding any of the above; when it holds nothing,
  the archive is downloaded there once (md5-checked) and read from then on.

Words: `<br />` line breaks dropped, lowercased, words (inner apostrophes kept) and single punctuation
marks by one regex. The vocabulary comes from the training split only (`min_freq`, `max_size`);
<pad> = 0, <unk> = 1. Each text is tokenized once and encoded once into padded int32 tensors, cut at
`max_len` words; batches are slices of them, bucketed by length.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from rnnctl.config import Config, Section
from rnnctl.data import cache_dir, download, user_path
from rnnctl.errors import DataError, clip, first_line
from rnnctl.models import RecurrentClassifier
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.classification import ClassifierConfig
from rnnctl.tasks.text import (
    Encoded,
    Example,
    TextClassificationTask,
    TextData,
    WordTokenizer,
    epoch_padding,
    ngram_facts,
    read_examples,
)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"  # Maas et al. 2011
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ARCHIVE = "aclImdb_v1.tar.gz"
DATASET = "imdb"  # the folder under $RNNCTL_DATA or ./data
UNLABELLED = "unsup"  # aclImdb/train/unsup: 50,000 reviews without a label
HEADER_WORDS = {"text", "review", "sentence", "document", "label", "sentiment", "class", "category", "polarity"}


class SentimentData(TextData):
    lowercase: bool = True  # lowercase the text before splitting it into words
    min_freq: int = Field(1, ge=1)  # a word enters the vocabulary if it occurs this often in train
    max_size: int | None = Field(None, ge=1)  # keep the most frequent words (<pad> and <unk> not counted)
    max_len: int | None = Field(None, ge=1)  # cut longer texts to this many words; null: keep every word
    truncate: Literal["head", "tail", "head+tail"] = "head"  # which words a cut text keeps


class EmbeddingsConfig(Section):
    path: str  # GloVe text format: `word v1 ... vd` per line, gzip or plain; read when a run starts
    freeze: bool = False  # keep the vectors as they are (words not in the file keep random rows)


class SentimentModel(ClassifierConfig):
    embeddings: EmbeddingsConfig | None = None  # pretrained word vectors; d must equal embedding_size


class SentimentTask(TextClassificationTask):
    name = "sentiment"
    unit = "reviews"  # a batch's size counts examples
    data_config = SentimentData
    model_config = SentimentModel

    def load(self, data: SentimentData) -> tuple[list[Example], None, list[Example] | None]:
        train, test = load_examples(data)
        return train, None, test

    def new_tokenizer(self, data: SentimentData) -> WordTokenizer:
        return WordTokenizer(data.lowercase)

    def vocab_limits(self, data: SentimentData) -> tuple[int, int | None]:
        return data.min_freq, data.max_size

    def cut(self, data: SentimentData) -> tuple[int | None, str]:
        return data.max_len, data.truncate

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        enc = self.encode(cfg, meta)
        init = None
        if meta is None and cfg.model.embeddings is not None:  # read once; the checkpoints hold the trained rows
            init = self.pretrained(cfg, enc)
        return Prepared(meta=enc.meta, splits=enc.splits, derived=self.derived(cfg, enc), init=init)

    def pretrained(self, cfg: Config, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The vocabulary rows a vector file has and their vectors; how much it covers goes into meta."""
        emb = cfg.model.embeddings
        vocab = enc.meta["vocab"]
        rows, vectors = read_vectors(Path(emb.path).expanduser(), vocab, cfg.model.embedding_size)
        vocab_counts = np.bincount(enc.remap.numpy(), weights=enc.counts["train"], minlength=len(vocab))
        enc.meta["embeddings"] = {
            "path": emb.path,
            "found": len(rows),
            "words": round(len(rows) / max(len(vocab) - 2, 1), 4),  # share of vocabulary words
            "tokens": round(float(vocab_counts[rows.numpy()].sum() / max(enc.counts["train"][1:].sum(), 1)), 4),
        }
        return rows, vectors

    def derived(self, cfg: Config, enc: Encoded) -> dict[str, Any]:
        known = (enc.remap != 1).numpy()
        counts, lengths, meta = enc.counts, enc.lengths, enc.meta
        derived = {
            "vocab_size": len(meta["vocab"]),
            "num_classes": len(meta["classes"]),
            "classes": meta["classes"],
            "examples": {k: len(v) for k, v in enc.splits.items()},
            "words_per_example": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},  # train
            "truncated": round(float((lengths > (meta["max_len"] or np.inf)).mean()), 4),  # share of train texts
            "words_per_example_kept": {"mean": round(float(enc.splits["train"].lengths.double().mean()), 1)},
            # share of the words (before truncation) that the vocabulary knows
            "vocab_coverage": {k: round(float(c[known].sum() / max(c[1:].sum(), 1)), 4) for k, c in counts.items()},
            "padding": epoch_padding(enc.splits["train"], cfg.train.batch_size, cfg.train.seed),
        }
        if "embeddings" in meta:
            derived["embeddings"] = meta["embeddings"]
        return {**derived, **ngram_facts(enc.splits, meta)}

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        m: SentimentModel = cfg.model  # type: ignore[assignment]
        frozen = m.embeddings is not None and m.embeddings.freeze
        model = RecurrentClassifier(m, len(meta["vocab"]), len(meta["classes"]), freeze_embedding=frozen)
        if init is not None:  # a new run's pretrained vectors; a loaded run gets its checkpoint's weights
            rows, vectors = init
            with torch.no_grad():
                model.embedding.weight[rows] = vectors
        return model

    def describe(self, shown: str, tokens: list[str], ids: list[int], stoi: dict[str, int]) -> dict[str, Any]:
        return {"input": shown, "words": len(ids), "unknown_words": ids.count(1)}


# -- finding and reading the data ----------------------------------------------------------------


def load_examples(data: SentimentData) -> tuple[list[Example], list[Example] | None]:
    """(train, test) examples from whichever layout the data has; test is None when it must be carved."""
    source = find_source(data.path)
    test_file = None
    if data.test_path is not None:
        test_file = user_path(data.test_path, "data.test_path")
        if not test_file.is_file():
            raise DataError(f"data.test_path: {test_file} is not a file")
    train, test = read_source(source, data.header)
    if test_file is not None:
        test = _read_csv(test_file, data.header)
    for where, examples in ((source, train), (test_file or source, test)):
        if examples is not None and not examples:
            raise DataError(f"{where}: no examples (expected rows of text,label)")
    return train, test


def find_source(path: str | None) -> Path:
    """data.path if given; else the imdb folder of $RNNCTL_DATA or ./data, downloading the archive into it."""
    if path is not None:
        return user_path(path, "data.path")
    folder = cache_dir(DATASET)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected the data folder of imdb, or set data.path)")
    if folder.is_dir() and _holds_data(folder):
        return folder
    hint = f"put {ARCHIVE} or the extracted aclImdb/ folder in {folder.absolute()}, or set data.path"
    return download(URL, folder / ARCHIVE, MD5, hint)


def _holds_data(folder: Path) -> bool:
    return (
        (folder / "aclImdb").is_dir()
        or ((folder / "train").is_dir() and (folder / "test").is_dir())
        or any(_is_archive(p) or ".csv" in p.name for p in folder.iterdir())
    )


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar"))


def read_source(p: Path, header: str) -> tuple[list[Example], list[Example] | None]:
    if p.is_file():
        return read_archive(p) if _is_archive(p) else (_read_csv(p, header), None)
    if (p / "train").is_dir() and (p / "test").is_dir():
        return read_folder(p)
    if (p / "aclImdb").is_dir():
        return read_folder(p / "aclImdb")
    archives = sorted(x for x in p.iterdir() if _is_archive(x))
    csvs = sorted(x for x in p.iterdir() if ".csv" in x.name and x.is_file())
    trains = [x for x in csvs if "train" in x.name]
    tests = [x for x in csvs if "test" in x.name]
    if len(trains) == 1 and len(tests) <= 1:
        return _read_csv(trains[0], header), (_read_csv(tests[0], header) if tests else None)
    if len(archives) == 1 and not csvs:
        return read_archive(archives[0])
    raise DataError(
        f"{p}: expected an aclImdb/ folder, {ARCHIVE}, or one *train*.csv and one *test*.csv "
        f"(found {len(archives)} archives, {len(trains)} train and {len(tests)} test CSV files)"
    )


def _read_csv(path: Path, header: str) -> list[Example]:
    return read_examples(path, header, HEADER_WORDS, "text,label", strip=False)


def read_folder(root: Path) -> tuple[list[Example], list[Example]]:
    """aclImdb/{train,test}/<label>/<id>_<rating>.txt, one review per file; `unsup` has no label."""
    out = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root}: no {split}/ folder (expected aclImdb/train and aclImdb/test; a partial extraction?)"
            )
        examples = []
        for label_dir in sorted(d for d in (root / split).iterdir() if d.is_dir() and d.name != UNLABELLED):
            for f in sorted(label_dir.glob("*.txt"), key=lambda f: _review_key(f.name)):
                examples.append(Example(_decode(f.read_bytes(), f), label_dir.name, str(f)))
        if not examples:
            raise DataError(f"{root / split}: no reviews (expected <label>/*.txt files, e.g. pos/0_9.txt)")
        out.append(examples)
    return out[0], out[1]


def read_archive(path: Path) -> tuple[list[Example], list[Example]]:
    """The reviews of an aclImdb tar.gz, read in one pass over its members, without extracting anything.

    Nothing is written to disk, so no member path can escape the cache folder, and the 100,000 files
    (half of them the unlabelled `unsup`, skipped) never land on the disk as files.
    """
    found: dict[str, list[tuple[str, tuple, bytes, str]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:" if path.name.endswith(".tar") else "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or not parts[-1].endswith(".txt"):
                    continue
                split, label, name = parts[-3:]
                if split in found and label != UNLABELLED:
                    found[split].append((label, _review_key(name), tar.extractfile(member).read(), member.name))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        reason = first_line(e)
        raise DataError(f"{path}: cannot read the archive: {reason} (damaged or incomplete?)") from None
    out = []
    for split, reviews in found.items():
        if not reviews:
            raise DataError(f"{path}: no {split} reviews (expected aclImdb/{split}/<label>/*.txt members)")
        reviews.sort(key=lambda r: r[:2])
        out.append(
            [Example(_decode(raw, f"{path}:{name}"), label, f"{path}: {name}") for label, _, raw, name in reviews]
        )
    return out[0], out[1]


def _review_key(name: str) -> tuple:
    """aclImdb file names are <id>_<rating>.txt: order by id, as the dataset numbers them."""
    head = name.split("_", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def _decode(raw: bytes, where) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None


# -- pretrained word vectors ---------------------------------------------------------------------


def read_vectors(path: Path, vocab: list[str], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary rows found in a GloVe-format file and their vectors: (K,) int64 and (K, dim) float32.

    Only the lines of vocabulary words are parsed (a 400,000-line file reads in about a second); a
    word2vec-style first line `<count> <dim>` is allowed. <pad> and <unk> are never looked up.
    """
    if not path.is_file():
        raise DataError(f"model.embeddings.path: {path} does not exist")
    stoi = {w: i for i, w in enumerate(vocab) if i >= 2}
    rows: list[int] = []
    vectors: list[list[float]] = []
    checked = False
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                word, _, rest = line.rstrip().partition(" ")
                if not checked:
                    values = rest.split()
                    header = n == 1 and len(values) == 1 and word.isdigit() and values[0].isdigit()  # word2vec's
                    size = int(values[0]) if header else len(values)
                    if size != dim:
                        raise DataError(
                            f"{path}: vectors of size {size}, but model.embedding_size is {dim} "
                            f"(set model.embedding_size={size})"
                        )
                    checked = True
                    if header:
                        continue
                i = stoi.pop(word, None)  # the first line of a word wins
                if i is None:
                    continue
                values = rest.split()
                if len(values) != dim:
                    raise DataError(f"{path}: line {n}: expected {dim} numbers after {clip(word)}, got {len(values)}")
                try:
                    vectors.append([float(v) for v in values])
                except ValueError:
                    raise DataError(f"{path}: line {n}: not a number among the values of {clip(word)}") from None
                rows.append(i)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file of word vectors (byte {e.start}: {e.reason})") from None
    if not checked:
        raise DataError(f"{path}: no vectors (expected lines of `word v1 ... v{dim}`)")
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(vectors, dtype=torch.float32).reshape(-1, dim)


def _open_text(path: Path):
    """A UTF-8 text stream over a gzip or plain file; the caller closes it."""
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    return opener(path, "rt", encoding="utf-8")

"""sentiment: a text -> its label (seed 003: IMDb movie reviews, pos/neg), as a word-level sequence classifier.

Data (`data.path`), any number of classes (the labels of the training data, sorted):
- a CSV of `text,label` (gzip or plain, header or not); the test split from `data.test_path`, else carved;
- a folder holding one `*train*.csv(.gz)` and one `*test*.csv(.gz)` (like ../shared/datasets/imdb);
- the extracted `aclImdb/` folder or the `aclImdb_v1.tar.gz` archive, read in place (`unsup/` ignored);
- null: $RNNCTL_DATA/imdb if set, else ./data/imdb, holding any of the above; when it holds nothing,
  the archive is downloaded there once (md5-checked) and read from then on.

Words: `<br />` line breaks dropped, lowercased, words (inner apostrophes kept) and single punctuation
marks by one regex. The vocabulary comes from the training split only (`min_freq`, `max_size`);
<pad> = 0, <unk> = 1. Each text is tokenized once and encoded once into padded int32 tensors, cut at
`max_len` words; batches are slices of them, bucketed by length.
"""

from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from rnnctl.config import Config, DataConfig, Section
from rnnctl.data import cache_dir, download, read_csv, stratified_split
from rnnctl.errors import DataError
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.classification import (
    ClassificationMeter,
    ClassifierConfig,
    SequenceSplit,
    build_classifier,
    pad,
    top_k,
)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"  # Maas et al. 2011
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ARCHIVE = "aclImdb_v1.tar.gz"
DATASET = "imdb"  # the folder under $RNNCTL_DATA or ./data
UNLABELLED = "unsup"  # aclImdb/train/unsup: 50,000 reviews without a label
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1
HEADER_WORDS = {"text", "review", "sentence", "document", "label", "sentiment", "class", "category", "polarity"}
BREAKS = r"<br\s*/?>"  # IMDb's HTML line breaks
WORDS = r"\w+(?:['’]\w+)*|[^\w\s]"  # words (don't, it's) and every punctuation mark on its own
PREDICT_BATCH = 256


class SentimentData(DataConfig):
    test_path: str | None = None  # explicit test CSV; otherwise the layout's test split, or carved
    test_fraction: float = Field(0.2, gt=0, lt=1)  # carved (stratified) when the data has no test split
    split_seed: int = 0  # the val/test carve, fixed apart from train.seed so runs compare on equal splits
    header: Literal["auto", "yes", "no"] = "auto"  # auto: the first CSV row is a header if it reads like one
    lowercase: bool = True
    min_freq: int = Field(1, ge=1)  # a word enters the vocabulary if it occurs this often in train
    max_size: int | None = Field(None, ge=1)  # keep the most frequent words (<pad> and <unk> not counted)
    max_len: int | None = Field(None, ge=1)  # cut longer texts to this many words; null: keep every word
    truncate: Literal["head", "tail", "head+tail"] = "head"  # which words a cut text keeps
    bucket: bool = True  # batch texts of similar length together: little padding, faster epochs


class EmbeddingsConfig(Section):
    path: str  # GloVe text format: `word v1 ... vd` per line, gzip or plain; read when a run starts
    freeze: bool = False  # keep the vectors as they are (words not in the file keep random rows)


class SentimentModel(ClassifierConfig):
    embeddings: EmbeddingsConfig | None = None  # pretrained word vectors; d must equal embedding_size


@dataclass
class Example:
    text: str
    label: str
    where: str  # "file: row N" or the review's file, for error messages


class Tokenizer:
    """Text -> words: line breaks dropped, optionally lowercased, then one regex pass."""

    def __init__(self, lowercase: bool = True, breaks: str = BREAKS, words: str = WORDS):
        self.lowercase = lowercase
        self.breaks = re.compile(breaks, re.IGNORECASE)
        self.words = re.compile(words)

    def __call__(self, text: str) -> list[str]:
        text = self.breaks.sub(" ", text)
        return self.words.findall(text.lower() if self.lowercase else text)

    def settings(self) -> dict[str, Any]:
        """What a checkpoint keeps, so `predict` splits text exactly as training did."""
        return {"lowercase": self.lowercase, "breaks": self.breaks.pattern, "words": self.words.pattern}


class SentimentTask:
    name = "sentiment"
    data_config = SentimentData
    model_config = SentimentModel
    monitor, monitor_mode = "acc", "max"
    report_splits = ("test",)

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: SentimentData = cfg.data  # type: ignore[assignment]
        new_run = meta is None  # a loaded or resumed run brings its vocabulary, classes and tokenizer
        train_ex, test_ex = load_examples(data)
        classes = meta["classes"] if meta else sorted({e.label for e in train_ex})
        class_id = {c: i for i, c in enumerate(classes)}
        for e in [*(train_ex if meta else []), *(test_ex or [])]:
            if e.label not in class_id:
                raise DataError(f"{e.where}: label {e.label!r} does not occur in the training data ({_few(classes)})")
        if test_ex is None:
            train_ex, test_ex = _carve(train_ex, class_id, data.test_fraction, data.split_seed)
        train_ex, val_ex = _carve(train_ex, class_id, data.val_fraction, data.split_seed)
        parts = {"train": train_ex, "val": val_ex, "test": test_ex}

        tokenize = Tokenizer(**meta["tokenizer"]) if meta else Tokenizer(data.lowercase)
        index = WordIndex()  # every split's words; the vocabulary then picks among the training split's
        encoded = {k: encode(ex, tokenize, index) for k, ex in parts.items()}
        words = list(index)  # provisional id i + 1 is words[i]
        counts = {k: np.bincount(_flat(seqs), minlength=len(words) + 1) for k, seqs in encoded.items()}
        if meta is None:
            meta = {
                "vocab": build_vocab(words, counts["train"], data.min_freq, data.max_size),
                "classes": classes,
                "tokenizer": tokenize.settings(),
                "max_len": data.max_len,
                "truncate": data.truncate,
            }
        stoi = {w: i for i, w in enumerate(meta["vocab"])}
        remap = torch.tensor([0] + [stoi.get(w, 1) for w in words], dtype=torch.int32)  # provisional -> vocabulary
        init = None  # a new run's pretrained rows, handed to build_model (never checkpointed)
        if new_run and cfg.model.embeddings is not None:  # read once; the checkpoints hold the trained rows
            emb = cfg.model.embeddings
            rows, vectors = read_vectors(Path(emb.path).expanduser(), meta["vocab"], cfg.model.embedding_size)
            vocab_counts = np.bincount(remap.numpy(), weights=counts["train"], minlength=len(meta["vocab"]))
            meta["embeddings"] = {
                "path": emb.path,
                "found": len(rows),
                "words": round(len(rows) / max(len(meta["vocab"]) - 2, 1), 4),  # share of vocabulary words
                "tokens": round(float(vocab_counts[rows.numpy()].sum() / max(counts["train"][1:].sum(), 1)), 4),
            }
            init = (rows, vectors)

        splits = {}
        for k, seqs in encoded.items():
            x, lengths = pad([truncate(s, meta["max_len"], meta["truncate"]) for s in seqs], dtype=torch.int32)
            labels = torch.tensor([class_id[e.label] for e in parts[k]], dtype=torch.int64)
            splits[k] = SequenceSplit(remap[x], lengths, labels, data.bucket)

        known = (remap != 1).numpy()
        lengths = np.array([len(s) for s in encoded["train"]])
        derived = {
            "vocab_size": len(meta["vocab"]),
            "num_classes": len(classes),
            "classes": classes,
            "examples": {k: len(v) for k, v in splits.items()},
            "words_per_example": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},  # train
            "truncated": round(float((lengths > (meta["max_len"] or np.inf)).mean()), 4),  # share of train texts
            "words_per_example_kept": {"mean": round(float(splits["train"].lengths.double().mean()), 1)},  # after it
            # share of the words (before truncation) that the vocabulary knows
            "vocab_coverage": {k: round(float(counts[k][known].sum() / max(counts[k][1:].sum(), 1)), 4) for k in parts},
            "padding": epoch_padding(splits["train"], cfg.train.batch_size, cfg.train.seed),
        }
        if "embeddings" in meta:
            derived["embeddings"] = meta["embeddings"]
        return Prepared(meta=meta, splits=splits, derived=derived, init=init)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        m: SentimentModel = cfg.model  # type: ignore[assignment]
        model = build_classifier(
            m,
            len(meta["vocab"]),
            len(meta["classes"]),
            freeze_embedding=m.embeddings is not None and m.embeddings.freeze,
        )
        if init is not None:  # a new run's pretrained vectors; a loaded run gets its checkpoint's weights
            rows, vectors = init
            with torch.no_grad():
                model.embedding.weight[rows] = vectors
        return model

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> ClassificationMeter:
        return ClassificationMeter(meta["classes"], detailed)

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, meta: dict[str, Any], inputs: list[str], top: int = 3
    ) -> list[dict[str, Any]]:
        tokenize = Tokenizer(**meta["tokenizer"])
        stoi = {w: i for i, w in enumerate(meta["vocab"])}
        seqs, info = [], []
        for n, text in enumerate(inputs, 1):
            words = tokenize(text)
            if not words:
                raise DataError(f"predict: input {n} has no words ({text[:40]!r})")
            ids = [stoi.get(w, 1) for w in words]
            seqs.append(truncate(ids, meta["max_len"], meta["truncate"]))
            info.append({"input": " ".join(text.split()), "words": len(ids), "unknown_words": ids.count(1)})
        device = next(model.parameters()).device
        model.eval()
        ranked = []
        for start in range(0, len(seqs), PREDICT_BATCH):
            x, lengths = pad(seqs[start : start + PREDICT_BATCH])
            ranked += top_k(model(x.to(device), lengths).logits, meta["classes"], top)
        return [{**i, "top": r} for i, r in zip(info, ranked)]


# -- text -> ids -------------------------------------------------------------------------------


class WordIndex(dict):
    """word -> provisional id from 1, in order of first appearance; a lookup adds a new word."""

    def __missing__(self, word: str) -> int:
        self[word] = len(self) + 1
        return self[word]


def encode(examples: list[Example], tokenize: Tokenizer, index: WordIndex) -> list[array]:
    """Each text's words as provisional ids (4 bytes a word); the lookups run in C but for new words."""
    out = []
    lookup = index.__getitem__
    for e in examples:
        words = tokenize(e.text)
        if not words:
            raise DataError(f"{e.where}: no words in the text")
        out.append(array("i", map(lookup, words)))
    return out


def build_vocab(words: list[str], counts: np.ndarray, min_freq: int, max_size: int | None) -> list[str]:
    """[<pad>, <unk>, the words with count >= min_freq, most frequent first (ties alphabetical)][: max_size + 2].

    `counts[i + 1]` is how often words[i] occurs in the training split (0 for words seen only elsewhere).
    """
    kept = [(-int(c), w) for w, c in zip(words, counts[1:].tolist()) if c >= min_freq]
    kept.sort()
    return [PAD, UNK, *(w for _, w in kept[:max_size])]


def truncate(ids, max_len: int | None, mode: str):
    """The first (head), last (tail) or first and last halves (head+tail) of max_len ids."""
    if max_len is None or len(ids) <= max_len:
        return ids
    if mode == "head":
        return ids[:max_len]
    if mode == "tail":
        return ids[len(ids) - max_len :]
    head = (max_len + 1) // 2
    return ids[:head] + ids[len(ids) - (max_len - head) :]


def epoch_padding(split: SequenceSplit, batch_size: int, seed: int) -> dict[str, float]:
    """The share of padded positions in one training epoch's batches, with and without length bucketing."""
    out = {}
    for name, bucket in (("bucketed", True), ("unbucketed", False)):
        same = SequenceSplit(split.x, split.lengths, split.labels, bucket)
        out[name] = round(same.padding(batch_size, torch.Generator().manual_seed(seed)), 4)
    return out


def _flat(seqs: list[array]) -> np.ndarray:
    return np.frombuffer(b"".join(seqs), dtype=np.intc)


def _carve(examples: list[Example], class_id: dict[str, int], fraction: float, seed: int):
    labels = torch.tensor([class_id[e.label] for e in examples])
    keep, held = stratified_split(labels, fraction, seed)
    return [examples[i] for i in keep.tolist()], [examples[i] for i in held.tolist()]


# -- finding and reading the data ----------------------------------------------------------------


def load_examples(data: SentimentData) -> tuple[list[Example], list[Example] | None]:
    """(train, test) examples from whichever layout the data has; test is None when it must be carved."""
    source = find_source(data.path)
    test_file = None
    if data.test_path is not None:
        test_file = Path(data.test_path).expanduser()
        if not test_file.is_file():
            raise DataError(f"data.test_path: {test_file} does not exist")
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
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data.path: {p} does not exist")
        return p
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
    rows = read_csv(path)
    if rows and (header == "yes" or (header == "auto" and {f.strip().lower() for f in rows[0][1]} <= HEADER_WORDS)):
        rows = rows[1:]
    out = []
    for line, fields in rows:
        if len(fields) != 2:
            raise DataError(f"{path}: row {line}: expected 2 fields (text,label), got {len(fields)}")
        text, label = fields[0], fields[1].strip()
        if not text.strip() or not label:
            raise DataError(f"{path}: row {line}: empty {'text' if not text.strip() else 'label'}")
        out.append(Example(text, label, f"{path}: row {line}"))
    return out


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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
                    raise DataError(f"{path}: line {n}: expected {dim} numbers after {word!r}, got {len(values)}")
                try:
                    vectors.append([float(v) for v in values])
                except ValueError:
                    raise DataError(f"{path}: line {n}: not a number among the values of {word!r}") from None
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


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"known: {shown}{', ...' if len(items) > n else ''}"

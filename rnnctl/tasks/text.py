"""Text classification: one pipeline under names (characters) and sentiment (words).

text,label examples from the task's layouts -> classes from the training split -> a sample of each split when
`data.max_examples` asks for one (stratified, seeded; quick runs on big data) -> a test and a validation
split carved (stratified, seeded) where the data has none -> tokens (characters or words) -> a vocabulary
from the training split -> padded id tensors, bucketed by length -> a recurrent classifier. A task says
where its examples come from, how it tokenizes, and which facts it reports; the rest is here.
"""

from __future__ import annotations

import re
import zlib
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from rnnctl.config import Config, DataConfig
from rnnctl.data import read_csv, stratified_split
from rnnctl.errors import DataError, RunError, clip
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.classification import (
    ClassificationMeter,
    ClassifierConfig,
    NgramConfig,
    SequenceSplit,
    pad,
    top_k,
)
from rnnctl.models import RecurrentClassifier

PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1
BREAKS = r"<br\s*/?>"  # IMDb's HTML line breaks
WORDS = r"\w+(?:['’]\w+)*|[^\w\s]"  # words (don't, it's) and every punctuation mark on its own
PREDICT_BATCH = 256


class TextData(DataConfig):
    """The `data` keys every text-classification task has."""

    test_path: str | None = None  # explicit test CSV; otherwise the layout's test split, or carved
    test_fraction: float = Field(0.2, gt=0, lt=1)  # carved (stratified) when the data has no test split
    split_seed: int = 0  # the val/test carve, fixed apart from train.seed so runs compare on equal splits
    header: Literal["auto", "yes", "no"] = "auto"  # auto: the first CSV row is a header if it reads like one
    bucket: bool = True  # batch texts of similar length together: little padding, faster epochs
    max_examples: int | None = Field(None, ge=1)  # at most this many of each split: a stratified sample (split_seed)


@dataclass
class Example:
    text: str
    label: str
    where: str  # "file: row N", or a review's file, for error messages


# -- tokenizers: what a checkpoint keeps (`settings`), so predict splits text exactly as training did --


class CharTokenizer:
    """A text is its characters."""

    unit = "chars"

    def __call__(self, text: str) -> list[str]:
        return list(text)

    def settings(self) -> dict[str, Any]:
        return {"kind": "chars"}


class WordTokenizer:
    """Text -> words: line breaks dropped, optionally lowercased, then one regex pass."""

    unit = "words"

    def __init__(self, lowercase: bool = True, breaks: str = BREAKS, words: str = WORDS):
        self.lowercase = lowercase
        self.breaks = re.compile(breaks, re.IGNORECASE)
        self.words = re.compile(words)

    def __call__(self, text: str) -> list[str]:
        text = self.breaks.sub(" ", text)
        return self.words.findall(text.lower() if self.lowercase else text)

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "words",
            "lowercase": self.lowercase,
            "breaks": self.breaks.pattern,
            "words": self.words.pattern,
        }


Tokenizer = CharTokenizer | WordTokenizer


def tokenizer_from(settings: dict[str, Any]) -> Tokenizer:
    settings = dict(settings)
    if settings.pop("kind", "words") == "chars":  # sentiment checkpoints from before the merge name no kind
        return CharTokenizer()
    return WordTokenizer(**settings)


# -- reading examples ----------------------------------------------------------------------------


def read_examples(path: Path, header: str, header_words: set[str], fields: str, strip: bool) -> list[Example]:
    """`text,label` rows of a CSV (gzip or plain); `fields` names the two columns in errors ("name,label")."""
    rows = read_csv(path)
    if rows and (header == "yes" or (header == "auto" and {f.strip().lower() for f in rows[0][1]} <= header_words)):
        rows = rows[1:]
    first = fields.split(",")[0]
    out = []
    for line, row in rows:
        if len(row) != 2:
            raise DataError(f"{path}: row {line}: expected 2 fields ({fields}), got {len(row)}")
        text, label = (row[0].strip() if strip else row[0]), row[1].strip()
        if not text.strip() or not label:
            raise DataError(f"{path}: row {line}: empty {first if not text.strip() else 'label'}")
        out.append(Example(text, label, f"{path}: row {line}"))
    return out


def carve(examples: list[Example], class_id: dict[str, int], fraction: float, seed: int):
    """(kept, held out): a stratified, seeded share of the examples held out."""
    labels = torch.tensor([class_id[e.label] for e in examples])
    keep, held = stratified_split(labels, fraction, seed)
    return [examples[i] for i in keep.tolist()], [examples[i] for i in held.tolist()]


def sample(examples: list[Example] | None, class_id: dict[str, int], n: int, seed: int) -> list[Example] | None:
    """`n` of the examples, in their order, seeded: one of each class (when n allows), the rest in proportion to
    the classes' sizes, rounded by largest remainders. `n` or fewer (or None) come back as they are."""
    if examples is None or len(examples) <= n:
        return examples
    labels = np.array([class_id[e.label] for e in examples])
    counts = np.bincount(labels, minlength=len(class_id))
    quota = (counts > 0).astype(np.int64) if n >= (counts > 0).sum() else np.zeros_like(counts)
    share = (counts - quota) * (n - quota.sum()) / (counts - quota).sum()
    rounded = np.floor(share).astype(np.int64)
    rounded[np.argsort(rounded - share, kind="stable")[: n - quota.sum() - rounded.sum()]] += 1
    quota += rounded
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in enumerate(quota.tolist())]
    return [examples[i] for i in np.sort(np.concatenate(picked)).tolist()]


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"known: {shown}{', ...' if len(items) > n else ''}"


# -- text -> ids ---------------------------------------------------------------------------------


class TokenIndex(dict):
    """token -> provisional id from 1, in order of first appearance; a lookup adds a new token."""

    def __missing__(self, token: str) -> int:
        self[token] = len(self) + 1
        return self[token]


def encode(examples: list[Example], tokenize: Tokenizer, index: TokenIndex) -> list[array]:
    """Each text's tokens as provisional ids (4 bytes a token); the lookups run in C but for new tokens."""
    out = []
    lookup = index.__getitem__
    for e in examples:
        tokens = tokenize(e.text)
        if not tokens:
            raise DataError(f"{e.where}: no {tokenize.unit} in the text")
        out.append(array("i", map(lookup, tokens)))
    return out


def build_vocab(
    tokens: list[str], counts: np.ndarray, min_freq: int, max_size: int | None, order: str = "frequency"
) -> list[str]:
    """[<pad>, <unk>, the tokens with count >= min_freq][: max_size + 2]: most frequent first (ties
    alphabetical), or in sorted order (`order="sorted"`). `counts[i + 1]` counts tokens[i] in the training split."""
    kept = [(-int(c), t) for t, c in zip(tokens, counts[1:].tolist()) if c >= min_freq]
    kept.sort(key=(lambda k: k[1]) if order == "sorted" else None)
    return [PAD, UNK, *(t for _, t in kept[:max_size])]


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


# -- hashed n-grams (model.ngrams): from the vocabulary ids, once per split -----------------------

NGRAM_HASH = "crc32-splitmix64"  # in a checkpoint's meta: how its n-gram ids were made
START, END, WHOLE = 0x3C, 0x3E, 0x57484F4C45  # the markers around a text, and the whole text's salt
NGRAM_CHUNK = 2**20  # uint64 values per array (8 MB) while hashing, whatever the texts' length


def ngram_settings(section: NgramConfig) -> dict[str, Any]:
    """What a checkpoint's meta keeps of `model.ngrams`, so that eval and predict hash texts as training did."""
    return {"n": section.n, "buckets": section.buckets, "whole": section.whole, "lowercase": section.lowercase,
            "hash": NGRAM_HASH}  # fmt: skip


def token_codes(vocab: list[str], settings: dict[str, Any]) -> np.ndarray:
    """A stable code per vocabulary id: the CRC-32 of the (lowercased) token. Hashes then depend neither on
    the vocabulary's order nor on Python's per-process string hashing, and `A` and `a` share their n-grams."""
    if settings.get("hash") != NGRAM_HASH:  # a checkpoint from an rnnctl that hashed otherwise
        raise RunError(
            f"model.ngrams: hashed with {clip(settings.get('hash'))}; this rnnctl hashes with {NGRAM_HASH!r}"
        )
    lowercase = settings["lowercase"]
    return np.array([zlib.crc32((t.lower() if lowercase else t).encode("utf-8")) for t in vocab], dtype=np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64, wrapping): each input bit flips about half the output bits."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def ngram_bags(
    x: torch.Tensor, lengths: torch.Tensor, codes: np.ndarray, settings: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded vocabulary ids (N, T) -> each text's hashed n-gram ids in 1..buckets, left-aligned and 0-padded
    (N, G) int32, and how many each text has (N,). The n-grams run over `<start> tokens <end>` (1 to n tokens
    long; `<s>`, `s`, `m`, ..., `<sm` ... for a name), plus the whole text when `whole`. Vectorized over rows,
    a loop over the few n-gram sizes: no Python per text."""
    n, buckets = settings["n"], settings["buckets"]
    rows = max(1, NGRAM_CHUNK // (x.size(1) + 2))  # texts at a time
    ids, counts = [], []
    for start in range(0, len(x), rows):
        xs, ls = x[start : start + rows].numpy(), lengths[start : start + rows].numpy()
        B, T = xs.shape
        c = codes[xs]  # (B, T)
        seq = np.concatenate([np.full((B, 1), START, np.uint64), c, np.zeros((B, 1), np.uint64)], axis=1)
        seq[np.arange(B), ls + 1] = END  # (B, T + 2): <start> tokens <end>, then padding
        hashes, valid = [], []
        for k in range(1, min(n, T + 2) + 1):
            W = T + 3 - k  # windows that start at 0 .. T + 2 - k
            h = np.full((B, W), k, np.uint64)
            for j in range(k):
                h = _mix(h ^ seq[:, j : j + W])
            hashes.append(h)
            valid.append(np.arange(W)[None, :] <= (ls + 2 - k)[:, None])  # the window ends by <end>
        if settings["whole"]:
            h = np.full(B, WHOLE, np.uint64)
            for j in range(T):
                h = np.where(j < ls, _mix(h ^ c[:, j]), h)
            hashes.append(h[:, None])
            valid.append(np.ones((B, 1), bool))
        h, ok = np.concatenate(hashes, axis=1), np.concatenate(valid, axis=1)
        bag = np.where(ok, (h % np.uint64(buckets)).astype(np.int64) + 1, 0)
        order = np.argsort(~ok, axis=1, kind="stable")  # the valid ids first, in their order
        ids.append(torch.from_numpy(np.take_along_axis(bag, order, axis=1).astype(np.int32)))
        counts.append(torch.from_numpy(ok.sum(axis=1)))
    width = max((int(c.max()) for c in counts if len(c)), default=0)
    out = torch.zeros(len(x), width, dtype=torch.int32)
    row = 0
    for part, count in zip(ids, counts):
        out[row : row + len(part), : int(count.max())] = part[:, : int(count.max())]
        row += len(part)
    return out, (torch.cat(counts) if counts else torch.zeros(0)).to(torch.int64)


def ngram_facts(splits: dict[str, SequenceSplit], meta: dict[str, Any]) -> dict[str, Any]:
    """For `derived:` with model.ngrams: n-grams per training text, the buckets training fills, and the share of
    each split's n-grams that land in a bucket some training n-gram trained."""
    if "ngrams" not in meta:
        return {}
    ids, counts = splits["train"].ngrams
    trained = torch.zeros(meta["ngrams"]["buckets"] + 1, dtype=torch.bool)
    trained[ids.long()] = True
    trained[0] = False
    coverage = {}
    for k, split in splits.items():
        kept = split.ngrams[0][split.ngrams[0] > 0].long()
        coverage[k] = round(float(trained[kept].float().mean()) if len(kept) else 0.0, 4)
    return {"ngrams": {"per_example": round(float(counts.double().mean()), 1), "buckets_trained": int(trained.sum()),
                       "coverage": coverage}}  # fmt: skip


@dataclass
class Encoded:
    """What the pipeline learned on the way, for a task's `derived` facts and pretrained vectors."""

    meta: dict[str, Any]
    splits: dict[str, SequenceSplit]
    counts: dict[str, np.ndarray]  # per split, how often each provisional id occurs
    remap: torch.Tensor  # provisional id -> vocabulary id
    lengths: np.ndarray  # tokens per training text, before truncation


# -- the task ------------------------------------------------------------------------------------


class TextClassificationTask(ABC):
    """The shared pipeline; a subclass gives `name`, its config sections, `load` and `new_tokenizer`, and may
    override the other hooks."""

    model_config: type[ClassifierConfig] = ClassifierConfig
    monitor, monitor_mode = "acc", "max"
    averages = "probabilities"  # in an ensemble of its runs
    report_splits = ("test",)
    vocab_key = "vocab"  # the meta key of the vocabulary (names checkpoints say "alphabet")
    vocab_order = "frequency"  # or "sorted"

    # hooks ---------------------------------------------------------------------------------------

    @abstractmethod
    def load(self, data: Any) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
        """(train, val, test) examples from the task's layouts; None where the split is to be carved."""

    @abstractmethod
    def new_tokenizer(self, data: Any) -> Tokenizer:
        """The tokenizer of a new run (a loaded run's comes from its checkpoint)."""

    def vocab_limits(self, data: Any) -> tuple[int, int | None]:
        """(min_freq, max_size) of a new vocabulary."""
        return 1, None

    def cut(self, data: Any) -> tuple[int | None, str]:
        """(max_len, truncate): texts longer than max_len tokens keep their head, tail or head+tail."""
        return None, "head"

    def derived(self, cfg: Config, enc: Encoded) -> dict[str, Any]:
        """The facts of the data written under `derived:` in the run's config.yaml."""
        return {}

    def read_input(self, n: int, text: str, tokenize: Tokenizer) -> tuple[str, list[str]]:
        """(the input as shown, its tokens) for `predict`; raise DataError for an input with none."""
        tokens = tokenize(text)
        if not tokens:
            raise DataError(f"predict: input {n} has no {tokenize.unit} ({text[:40]!r})")
        return " ".join(text.split()), tokens

    def describe(self, shown: str, tokens: list[str], ids: list[int], stoi: dict[str, int]) -> dict[str, Any]:
        return {"input": shown}

    # the pipeline --------------------------------------------------------------------------------

    def vocab(self, meta: dict[str, Any]) -> list[str]:
        return meta[self.vocab_key]

    def tokenizer(self, meta: dict[str, Any] | None, data: Any = None) -> Tokenizer:
        """A run's tokenizer from its checkpoint's settings, else a new one from the data section."""
        if meta is not None and "tokenizer" in meta:
            return tokenizer_from(meta["tokenizer"])
        return self.new_tokenizer(data)  # a new run, or a names checkpoint from before the merge

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        enc = self.encode(cfg, meta)
        return Prepared(meta=enc.meta, splits=enc.splits, derived=self.derived(cfg, enc))

    def encode(self, cfg: Config, meta: dict[str, Any] | None) -> Encoded:
        data = cfg.data
        train, val, test = self.load(data)
        classes = meta["classes"] if meta else sorted({e.label for e in train})
        class_id = {c: i for i, c in enumerate(classes)}
        for e in [*(train if meta else []), *(val or []), *(test or [])]:
            if e.label not in class_id:
                raise DataError(
                    f"{e.where}: label {clip(e.label)} does not occur in the training data ({_few(classes)})"
                )
        if data.max_examples is not None:  # quick runs on big data: a sample of each split the data has
            train, val, test = (sample(x, class_id, data.max_examples, data.split_seed) for x in (train, val, test))
        if test is None:
            train, test = carve(train, class_id, data.test_fraction, data.split_seed)
        if val is None:
            train, val = carve(train, class_id, data.val_fraction, data.split_seed)
        parts = {"train": train, "val": val, "test": test}

        tokenize = self.tokenizer(meta, data)
        index = TokenIndex()  # every split's tokens; the vocabulary then picks among the training split's
        encoded = {k: encode(ex, tokenize, index) for k, ex in parts.items()}
        tokens = list(index)  # provisional id i + 1 is tokens[i]
        counts = {k: np.bincount(_flat(seqs), minlength=len(tokens) + 1) for k, seqs in encoded.items()}
        if meta is None:
            min_freq, max_size = self.vocab_limits(data)
            max_len, mode = self.cut(data)
            meta = {
                self.vocab_key: build_vocab(tokens, counts["train"], min_freq, max_size, self.vocab_order),
                "classes": classes,
                "tokenizer": tokenize.settings(),
                "max_len": max_len,
                "truncate": mode,
            }
            if cfg.model.ngrams is not None:
                meta["ngrams"] = ngram_settings(cfg.model.ngrams)
        stoi = {t: i for i, t in enumerate(self.vocab(meta))}
        remap = torch.tensor([0] + [stoi.get(t, 1) for t in tokens], dtype=torch.int32)  # provisional -> vocab
        codes = token_codes(self.vocab(meta), meta["ngrams"]) if "ngrams" in meta else None
        splits = {}
        for k, seqs in encoded.items():
            x, lengths = pad(
                [truncate(s, meta.get("max_len"), meta.get("truncate", "head")) for s in seqs], torch.int32
            )
            x = remap[x]
            labels = torch.tensor([class_id[e.label] for e in parts[k]], dtype=torch.int64)
            bags = None if codes is None else ngram_bags(x, lengths, codes, meta["ngrams"])
            splits[k] = SequenceSplit(x, lengths, labels, data.bucket, bags)
        lengths = np.array([len(s) for s in encoded["train"]])
        return Encoded(meta, splits, counts, remap, lengths)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        return RecurrentClassifier(cfg.model, len(self.vocab(meta)), len(meta["classes"]))

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> ClassificationMeter:
        return ClassificationMeter(meta["classes"], detailed)

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, meta: dict[str, Any], inputs: list[str], top: int = 3
    ) -> list[dict[str, Any]]:
        tokenize = self.tokenizer(meta)
        stoi = {t: i for i, t in enumerate(self.vocab(meta))}
        seqs, info = [], []
        for n, text in enumerate(inputs, 1):
            shown, tokens = self.read_input(n, text, tokenize)
            ids = [stoi.get(t, 1) for t in tokens]
            seqs.append(truncate(ids, meta.get("max_len"), meta.get("truncate", "head")))
            info.append(self.describe(shown, tokens, ids, stoi))
        codes = token_codes(self.vocab(meta), meta["ngrams"]) if "ngrams" in meta else None
        device = next(model.parameters()).device
        model.eval()
        ranked = []
        for start in range(0, len(seqs), PREDICT_BATCH):
            x, lengths = pad(seqs[start : start + PREDICT_BATCH])
            inputs = {"x": x.to(device), "lengths": lengths}
            if codes is not None:
                inputs["ngrams"] = ngram_bags(x, lengths, codes, meta["ngrams"])[0].to(device)
            ranked += top_k(model(**inputs).logits, meta["classes"], top)
        return [{**i, "top": r} for i, r in zip(info, ranked)]

"""names: a surname -> its language (seed 001), as a character-level sequence classifier.

Data: a CSV of `name,label` (gzip or plain, header or not, CRLF or LF), a folder holding one
`*train*.csv` and one `*test*.csv`, or a folder of `<Label>.txt` files with one name per line (the
PyTorch tutorial's layout). The alphabet and the classes come from the training data; characters
never seen in training map to <unk> at predict time. Everything past reading is the text pipeline
(tasks/text.py) that sentiment shares, with characters for tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnctl.config import Config
from rnnctl.data import locate, read_text, user_path
from rnnctl.errors import DataError
from rnnctl.tasks.text import (
    CharTokenizer,
    Encoded,
    Example,
    TextClassificationTask,
    TextData,
    ngram_facts,
    read_examples,
)

HEADER_WORDS = {"name", "names", "surname", "label", "language", "country", "class", "category", "lang"}


class NamesData(TextData):
    val_path: str | None = None  # explicit validation CSV; otherwise `val_fraction` of train is carved


class NamesTask(TextClassificationTask):
    name = "names"
    unit = "names"  # a batch's size counts examples
    data_config = NamesData
    vocab_key = "alphabet"
    vocab_order = "sorted"

    def load(self, data: NamesData) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
        return load_examples(data)

    def new_tokenizer(self, data: Any) -> CharTokenizer:
        return CharTokenizer()

    def derived(self, cfg: Config, enc: Encoded) -> dict[str, Any]:
        return {
            "alphabet_size": len(enc.meta["alphabet"]),
            "num_classes": len(enc.meta["classes"]),
            "classes": enc.meta["classes"],
            "examples": {k: len(v) for k, v in enc.splits.items()},
            **ngram_facts(enc.splits, enc.meta),
        }

    def read_input(self, n: int, text: str, tokenize: CharTokenizer) -> tuple[str, list[str]]:
        name = text.strip()
        if not name:
            raise DataError("predict: an empty name (expected at least one character)")
        return name, tokenize(name)

    def describe(self, shown: str, tokens: list[str], ids: list[int], stoi: dict[str, int]) -> dict[str, Any]:
        return {"input": shown, "unknown_chars": sorted({ch for ch in tokens if ch not in stoi})}


def load_examples(data: NamesData) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
    """(train, val or None, test or None) examples from whichever layout `data.path` has."""
    root = locate("names", data.path)
    test_file = _optional_file("data.test_path", data.test_path)
    val_file = _optional_file("data.val_path", data.val_path)
    if root.is_dir():
        txts = sorted(root.glob("*.txt"))
        csvs = sorted(p for p in root.iterdir() if ".csv" in p.name)
        trains = [p for p in csvs if "train" in p.name]
        tests = [p for p in csvs if "test" in p.name]
        if txts:
            examples = [e for p in txts for e in _read_txt(p)]
        elif len(trains) == 1 and (len(tests) == 1 or test_file):
            examples = _read_csv(trains[0], data.header)
            test_file = test_file or tests[0]
        else:
            raise DataError(
                f"data.path: {root}: expected <Label>.txt files, or one *train*.csv and one *test*.csv "
                f"(found {len(txts)} .txt, {len(trains)} train and {len(tests)} test CSV files)"
            )
    else:
        examples = _read_csv(root, data.header)
    _nonempty(examples, root)
    val = _nonempty(_read_csv(val_file, data.header), val_file) if val_file else None
    test = _nonempty(_read_csv(test_file, data.header), test_file) if test_file else None
    return examples, val, test  # a missing test split is carved by the pipeline


def _optional_file(key: str, path: str | None) -> Path | None:
    if path is None:
        return None
    p = user_path(path, key)
    if not p.is_file():
        raise DataError(f"{key}: {p} is not a file")
    return p


def _nonempty(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataError(f"{path}: no examples (expected lines of name,label)")
    return examples


def _read_csv(path: Path, header: str) -> list[Example]:
    return read_examples(path, header, HEADER_WORDS, "name,label", strip=True)


def _read_txt(path: Path) -> list[Example]:
    label = path.stem
    return [
        Example(line.strip(), label, f"{path}: row {i}")
        for i, line in enumerate(read_text(path).split("\n"), 1)
        if line.strip()
    ]

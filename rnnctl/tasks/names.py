"""names: a surname -> its language (seed 001), as a character-level sequence classifier.

Data: a CSV of `name,label` (gzip or plain, header or not, CRLF or LF), a folder holding one
`*train*.csv` and one `*test*.csv`, or a folder of `<Label>.txt` files with one name per line (the
PyTorch tutorial's layout). The alphabet and the classes come from the training data; characters
never seen in training map to <unk> at predict time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from rnnctl.config import Config, DataConfig
from rnnctl.data import locate, read_csv, read_text, stratified_split
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

PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1
HEADER_WORDS = {"name", "names", "surname", "label", "language", "country", "class", "category", "lang"}


class NamesData(DataConfig):
    test_path: str | None = None  # explicit test CSV; otherwise found beside `path` or carved from it
    val_path: str | None = None  # explicit validation CSV; otherwise `val_fraction` of train is carved
    test_fraction: float = Field(0.2, gt=0, lt=1)  # carved (stratified) when the data has no test file
    split_seed: int = 0  # the val/test carve, fixed apart from train.seed so runs compare on equal splits
    header: Literal["auto", "yes", "no"] = "auto"  # auto: the first row is a header if it reads like one
    bucket: bool = True  # batch names of similar length together: less padding, faster epochs


@dataclass
class Example:
    name: str
    label: str
    where: str  # "file: row N", for error messages


class NamesTask:
    name = "names"
    data_config = NamesData
    model_config = ClassifierConfig
    monitor, monitor_mode = "acc", "max"
    report_splits = ("test",)

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: NamesData = cfg.data  # type: ignore[assignment]
        train_ex, val_ex, test_ex = load_examples(data)
        classes = meta["classes"] if meta else sorted({e.label for e in train_ex})
        class_id = {c: i for i, c in enumerate(classes)}
        for e in [*(val_ex or []), *test_ex]:
            if e.label not in class_id:
                raise DataError(f"{e.where}: label {e.label!r} does not occur in the training data ({_few(classes)})")
        if val_ex is None:  # carve validation from train, stratified and seeded
            labels = torch.tensor([class_id[e.label] for e in train_ex])
            keep, held = stratified_split(labels, data.val_fraction, data.split_seed)
            train_ex, val_ex = [train_ex[i] for i in keep.tolist()], [train_ex[i] for i in held.tolist()]
        if meta is None:
            chars = sorted({ch for e in train_ex for ch in e.name})
            meta = {"alphabet": [PAD, UNK, *chars], "classes": classes}
        stoi = {ch: i for i, ch in enumerate(meta["alphabet"])}
        parts = {"train": train_ex, "val": val_ex, "test": test_ex}
        splits = {k: _tensorize(ex, class_id, stoi, data.bucket) for k, ex in parts.items()}
        derived = {
            "alphabet_size": len(meta["alphabet"]),
            "num_classes": len(classes),
            "classes": classes,
            "examples": {k: len(v) for k, v in splits.items()},
        }
        return Prepared(meta=meta, splits=splits, derived=derived)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        m: ClassifierConfig = cfg.model  # type: ignore[assignment]
        return build_classifier(m, len(meta["alphabet"]), len(meta["classes"]))

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> ClassificationMeter:
        return ClassificationMeter(meta["classes"], detailed)

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, meta: dict[str, Any], inputs: list[str], top: int = 3
    ) -> list[dict[str, Any]]:
        stoi = {ch: i for i, ch in enumerate(meta["alphabet"])}
        names = [s.strip() for s in inputs]
        for s in names:
            if not s:
                raise DataError("predict: an empty name (expected at least one character)")
        x, lengths = pad([[stoi.get(ch, 1) for ch in s] for s in names])
        device = next(model.parameters()).device
        model.eval()
        logits = model(x.to(device), lengths).logits
        return [
            {"input": s, "top": ranked, "unknown_chars": sorted({ch for ch in s if ch not in stoi})}
            for s, ranked in zip(names, top_k(logits, meta["classes"], top))
        ]


def load_examples(data: NamesData) -> tuple[list[Example], list[Example] | None, list[Example]]:
    """(train, val or None, test) examples from whichever layout `data.path` has."""
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
    if test_file is not None:
        return examples, val, _nonempty(_read_csv(test_file, data.header), test_file)
    classes = sorted({e.label for e in examples})
    labels = torch.tensor([classes.index(e.label) for e in examples])
    keep, held = stratified_split(labels, data.test_fraction, data.split_seed)
    return [examples[i] for i in keep.tolist()], val, [examples[i] for i in held.tolist()]


def _optional_file(key: str, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{key}: {p} does not exist")
    return p


def _nonempty(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataError(f"{path}: no examples (expected lines of name,label)")
    return examples


def _read_csv(path: Path, header: str) -> list[Example]:
    rows = read_csv(path)
    if rows and (header == "yes" or (header == "auto" and {f.strip().lower() for f in rows[0][1]} <= HEADER_WORDS)):
        rows = rows[1:]
    out = []
    for line, fields in rows:
        if len(fields) != 2:
            raise DataError(f"{path}: row {line}: expected 2 fields (name,label), got {len(fields)}")
        name, label = fields[0].strip(), fields[1].strip()
        if not name or not label:
            raise DataError(f"{path}: row {line}: empty {'name' if not name else 'label'}")
        out.append(Example(name, label, f"{path}: row {line}"))
    return out


def _read_txt(path: Path) -> list[Example]:
    label = path.stem
    return [
        Example(line.strip(), label, f"{path}: row {i}")
        for i, line in enumerate(read_text(path).split("\n"), 1)
        if line.strip()
    ]


def _tensorize(examples: list[Example], class_id: dict[str, int], stoi: dict[str, int], bucket: bool) -> SequenceSplit:
    """Encode every example once; batches are slices of these tensors."""
    labels = torch.tensor([class_id[e.label] for e in examples], dtype=torch.int64)
    ids = [[stoi.get(ch, 1) for ch in e.name] for e in examples]
    x, lengths = pad(ids)
    return SequenceSplit(x, lengths, labels, bucket)


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"known: {shown}{', ...' if len(items) > n else ''}"

"""Locate and read data files: explicit paths, $RNNCTL_DATA, or the copies packaged with rnnctl.

Readers here know file formats, not tasks: they return rows with their line numbers so that a
task's error can name the row. Nothing here touches the network yet (the first data set that needs
a download brings that, with a checksum).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from importlib import resources
from pathlib import Path

import torch

from rnnctl.errors import DataError

DATA_ENV = "RNNCTL_DATA"


def packaged(dataset: str) -> Path:
    """The folder of a data set shipped inside the package (rnnctl/datasets/<dataset>)."""
    return Path(str(resources.files("rnnctl") / "datasets" / dataset))


def locate(dataset: str, path: str | None) -> Path:
    """Where a task reads its data: `data.path` if given, else $RNNCTL_DATA/<dataset>, else the packaged copy."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data.path: {p} does not exist")
        return p
    root = os.environ.get(DATA_ENV)
    if root:
        p = Path(root).expanduser() / dataset
        if not p.exists():
            raise DataError(f"${DATA_ENV}/{dataset}: {p} does not exist (unset {DATA_ENV} to use the packaged copy)")
        return p
    p = packaged(dataset)
    if not p.exists():
        raise DataError(f"no packaged copy of the {dataset!r} data set: set data.path or ${DATA_ENV}")
    return p


def read_text(path: Path) -> str:
    """A whole UTF-8 text file, gzip or plain; universal newlines (CRLF and LF alike)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """CSV rows as (line number, fields), skipping blank lines."""
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        return [(reader.line_num, row) for row in reader if row and any(f.strip() for f in row)]
    except csv.Error as e:
        raise DataError(f"{path}: row {reader.line_num}: malformed CSV: {e}") from None


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): `fraction` of each class held out at random, seeded.

    A class with n >= 2 examples gives round(fraction * n) of them, at least 1 and at most n - 1, so
    every class stays in both parts; a class of one example stays in `keep`.
    """
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = len(idx)
        k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values

"""Locate and read data files: explicit paths, $RNNCTL_DATA, or the copies packaged with rnnctl.

Readers here know file formats, not tasks: they return rows with their line numbers so that a
task's error can name the row. `download` is the one place that touches the network: a data set too
big to ship is fetched once into the cache folder, checked against its md5, and never half-written.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import socket
import sys
import zlib
from http.client import HTTPException
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError

import torch
import torch.hub

from rnnctl.errors import DataError, clip

DATA_ENV = "RNNCTL_DATA"
CACHE = Path("data")  # the download cache, relative to the current folder, when $RNNCTL_DATA is not set
TIMEOUT_S = 30  # a silent network fails after this long instead of hanging


PACKAGED = "packaged:"  # a config's path `packaged:NAME[/FILE]`: a data set shipped inside rnnctl


def packaged(dataset: str) -> Path:
    """The folder of a data set shipped inside the package (rnnctl/datasets/<dataset>)."""
    return Path(str(resources.files("rnnctl") / "datasets" / dataset))


def packaged_sets() -> list[str]:
    return sorted(p.name for p in packaged("").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def user_path(path: str, key: str) -> Path:
    """A path from a config (`key` names it in errors): a file or folder that must exist, or `packaged:NAME`
    (`packaged:NAME/FILE`), a data set shipped inside rnnctl, wherever it is installed."""
    if not path.startswith(PACKAGED):
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{key}: {p} does not exist")
        return p
    name, _, rest = path.removeprefix(PACKAGED).partition("/")
    inside = PurePosixPath(rest)
    if (
        name not in packaged_sets()
        or inside.is_absolute()
        or ".." in inside.parts
        or not (packaged(name) / rest).exists()
    ):
        raise DataError(f"{key}: no packaged data {clip(path)} (packaged data sets: {', '.join(packaged_sets())})")
    return packaged(name) / rest


def locate(dataset: str, path: str | None) -> Path:
    """Where a task reads its data: `data.path` if given, else $RNNCTL_DATA/<dataset>, else the packaged copy."""
    if path is not None:
        return user_path(path, "data.path")
    root = os.environ.get(DATA_ENV)
    if root:
        if not Path(root).expanduser().is_dir():  # a typo: never a silent fall back to the packaged copy
            raise DataError(
                f"${DATA_ENV}: {root} is not a folder (unset it to read the packaged data, or set data.path)"
            )
        p = Path(root).expanduser() / dataset
        if p.exists() or not packaged(dataset).exists():
            if not p.exists():
                raise DataError(f"${DATA_ENV}/{dataset}: {p} does not exist (or set data.path)")
            return p  # else: $RNNCTL_DATA holds other data sets (say imdb); this one ships with rnnctl
    p = packaged(dataset)
    if not p.exists():
        raise DataError(f"no packaged copy of the {dataset!r} data set: set data.path or ${DATA_ENV}")
    return p


def cache_dir(dataset: str) -> Path:
    """Where a downloaded data set lives: $RNNCTL_DATA/<dataset> if set, else ./data/<dataset>."""
    root = os.environ.get(DATA_ENV)
    return (Path(root).expanduser() if root else CACHE) / dataset


def download(url: str, dest: Path, md5: str, hint: str = "") -> Path:
    """Fetch `url` to `dest` with a progress bar: into a temporary file, md5-checked, then renamed.

    `dest` is either absent or complete: a failed, interrupted or damaged download leaves nothing
    behind. Network failures are one-line DataErrors ending with `hint` (where to put the file by hand).
    """
    tmp = dest.with_name(dest.name + ".part")
    previous = socket.getdefaulttimeout()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {dest.parent}: {e.strerror or e}") from None
    try:
        try:
            if sys.stderr.isatty():  # label the progress bar; a log or a pipe gets only the error, if any
                print(f"downloading {url} to {dest}", file=sys.stderr, flush=True)
            socket.setdefaulttimeout(TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
        except (OSError, HTTPException) as e:  # URLError, HTTPError, timeouts and refused connections are OSErrors
            raise DataError(f"cannot download {url} ({_reason(e)}){': ' + hint if hint else ''}") from None
        finally:
            socket.setdefaulttimeout(previous)
        got = file_md5(tmp)
        if got != md5:
            raise DataError(f"{url}: md5 mismatch: expected {md5}, got {got} (a damaged download; it was deleted)")
        os.replace(tmp, dest)  # atomic: readers never see a partial archive
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _reason(e: BaseException) -> str:
    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: Path) -> str:
    """A whole UTF-8 text file, gzip or plain; universal newlines (CRLF and LF alike)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; damaged data is a zlib.error
        raise DataError(f"{path}: cannot read: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a text file (gzip or plain), stripped; `what` names it in errors (--file)."""
    if not path.is_file():
        raise DataError(f"{what} {path}: file not found")
    return [line.strip() for line in read_text(path).split("\n") if line.strip()]


def read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """CSV rows as (line number, fields), skipping blank lines. A field may be as long as the file (a review
    longer than csv's default limit of 131,072 characters is still one field)."""
    text = read_text(path)
    _field_limit(len(text))
    reader = csv.reader(io.StringIO(text))
    try:
        return [(reader.line_num, row) for row in reader if row and any(f.strip() for f in row)]
    except csv.Error as e:
        raise DataError(f"{path}: row {reader.line_num}: malformed CSV: {e}") from None


def _field_limit(n: int) -> None:
    """Let csv read fields of up to `n` characters: it is process-wide, so only ever raised. A C long
    bounds it (32 bits on some platforms): halve until it fits."""
    if n <= csv.field_size_limit():
        return
    while True:
        try:
            csv.field_size_limit(n)
            return
        except OverflowError:
            n //= 2


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

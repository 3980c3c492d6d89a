"""The sentiment task: tokenizer, vocabulary, data layouts (CSV, aclImdb folder and archive), the download,
pretrained vectors, and train -> eval -> predict through the real CLI on a generated corpus.

No test touches the network: conftest closes torch.hub.download_url_to_file, and the tests that exercise
`download` replace it with a fake that writes bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest
import torch.hub

from rnnctl.data import download
from rnnctl.errors import DataError

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

"""The folder lock: one writer per run or group folder, across processes and machines that share the file
system. The folder's owner (runs.py, groups/folder.py) names the lock's file; this module knows only its
record (host, pid, token, heartbeat) and whether a holder still lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from rnnctl.errors import RunError, RunFileWarning, StorageError

HOST = socket.gethostname()
HEARTBEAT_S = 10.0  # a lock's holder rewrites its heartbeat this often
STALE_S = 120.0  # a lock whose heartbeat is older than this may be taken over with --force


class FolderLock:
    """One writer per run (or sweep) folder, across processes and machines that share the file system.

    The lock is a file (`path`, inside the folder it guards) created atomically before anything else is
    written. It names its holder (host, pid) and carries a heartbeat that a background thread refreshes every
    HEARTBEAT_S. A lock whose holder is provably gone (this host, no such process) is taken over quietly; one
    held by another host whose heartbeat is older than STALE_S is taken over only with `force`; a live one
    never.
    """

    def __init__(self, path: Path, what: str = "run"):
        self.path, self.what = path, what
        self.folder = path.parent
        self.token = uuid.uuid4().hex
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"host": HOST, "pid": os.getpid(), "token": self.token, "heartbeat": time.time()}

    def _write(self, place: Any) -> None:
        """Write this holder's record to a file of its own, then `place` it at the lock's name: os.link to
        take the lock (refused when the name exists), os.replace for a heartbeat. The lock file appears whole
        or not at all: a reader never sees an empty lock that a taker created but had not yet written."""
        mine = self.path.with_name(f"{self.path.name}.{self.token}")
        try:
            fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self._record()))
            place(mine, self.path)
        finally:
            with contextlib.suppress(OSError):
                mine.unlink()

    def _create(self) -> bool:
        try:
            self._write(os.link)
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"{self.path}: cannot create the lock: {e.strerror or e}") from None
        return True

    def holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            data = None  # a lock torn while written: its holder died before the first heartbeat
        return data if isinstance(data, dict) else {}

    def acquire(self, force: bool = False) -> FolderLock:
        for _ in range(3):  # a race with another taker: look again
            if self._create():
                self._start_heartbeat()
                return self
            holder = self.holder()
            if holder is None:
                continue
            age = time.time() - _number(holder.get("heartbeat"))
            gone = holder.get("host") == HOST and not alive(holder.get("pid"), HOST)  # provably dead
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "a damaged lock file"
            if not gone and age < STALE_S:
                raise RunError(
                    f"{self.folder.name}: another process writes this {self.what} ({who}, heartbeat {age:.0f} s ago); "
                    "wait for it to end"
                )
            if not gone and not force:
                raise RunError(
                    f"{self.folder.name}: the {self.what} is locked ({who}), last heartbeat {age / 60:.0f} min ago; "
                    f"if that process is gone, pass --force to take the {self.what} over"
                )
            stale = self.path.with_name(f"{self.path.name}.stale-{self.token}")
            try:
                os.rename(self.path, stale)  # only one taker wins the rename
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
            if not gone:
                message = (
                    f"{self.folder.name}: took the {self.what} over from {who} (--force; its last heartbeat was "
                    f"{age / 60:.0f} min ago)"
                )
                warnings.warn(RunFileWarning(message), stacklevel=2)
        raise RunError(f"{self.path}: could not take the lock (other processes keep taking it)")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self.stop.wait(HEARTBEAT_S):
                holder = self.holder()
                if not holder or holder.get("token") != self.token:
                    return  # taken over (with --force) by another process: stop touching it
                with contextlib.suppress(OSError):
                    self._write(os.replace)

        self.thread = threading.Thread(target=beat, name=f"rnnctl-lock-{self.folder.name}", daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.stop.set()
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self if self.thread is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoLock:
    """What ranks other than 0 hold under torchrun: rank 0 alone has the run's lock and writes."""

    def release(self) -> None:
        pass


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def alive(pid: int | None, host: str | None) -> bool:
    """Whether the process `pid` on `host` may still run: False only when it is provably gone (this host, no
    such process)."""
    if not pid or host != HOST:
        return True  # cannot tell from here: trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

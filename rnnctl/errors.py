"""Errors a user can cause. The CLI prints them as one line and exits 1; anything else is a bug."""

import reprlib


class RnnctlError(Exception):
    """A user-facing error: the message names the file, key or row and what was expected."""


class ConfigError(RnnctlError):
    """The experiment config (file, YAML, keys, values or --set overrides) is invalid."""


class DataError(RnnctlError):
    """A data file is missing, malformed or empty."""


class RunError(RnnctlError):
    """A run folder or checkpoint cannot be found or read."""


class DivergedError(RnnctlError):
    """The training loss became NaN or infinite: the run stops, its last good checkpoint kept."""

    def __init__(self, message: str, step: int = 0):
        super().__init__(message)
        self.step = step  # the step within the epoch where it happened


class StorageError(RnnctlError):
    """A file could not be written or read for a reason of the machine (full disk, read-only, permissions)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM, Kubernetes, `timeout`): handled like Ctrl-C, exit code 143."""


class RunFileWarning(UserWarning):
    """A run file was damaged in a way rnnctl works around (a torn last line), or a stale lock was taken over:
    said in one line, then the work goes on."""


class PeerFailed(RnnctlError):
    """Under torchrun: rank 0 failed in a step every rank waits for; rank 0 says why, the others exit quietly."""


def first_line(error: BaseException) -> str:
    """An exception as a one-line message shows it: the first line of its text, or its type's name when it
    has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def clip(value: object, limit: int = 60) -> str:
    """`value` as an error message shows it: its repr, cut to about `limit` characters with an ellipsis
    (and, for a long string, its length), so a huge value still gives a short, one-line message."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlevel, short.maxlist, short.maxdict = 2, 6, 6
    try:
        text = short.repr(value)
    except ValueError:  # an int of more digits than Python prints (sys.get_int_max_str_digits)
        return f"an {type(value).__name__} too long to show"
    return text if len(text) <= limit + 10 else text[:limit] + "..."

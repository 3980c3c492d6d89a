"""How the `rnnctl` command reads and fails, so that cli.py holds only its commands: help without typer's type
column, a newcomer's command words mapped to commands, usage errors and user errors as one line with exit
codes (1; 130 for Ctrl-C, 143 for SIGTERM), rank-aware under torchrun; the consoles."""

from __future__ import annotations

import difflib
import math
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from rnnctl.errors import RnnctlError, RunFileWarning, first_line

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import NoSuchOption, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoSuchOption, UsageError


# -- how --help reads ----------------------------------------------------------------------------------------
# typer gives every parameter a type column (`<bool>` for a flag, `<str>` or `<path>` beside an argument's
# METAVAR) and offers no setting that leaves it out; these two subclasses change that column alone.


class Option(TyperOption):
    def display_type_rich(self, ctx):  # a flag takes no value: no `<bool>`
        return None if self.is_flag and self.metavar is None else super().display_type_rich(ctx)


class Argument(TyperArgument):
    def display_type_rich(self, ctx):  # the METAVAR says it; `...` after one that repeats
        return "..." if self.nargs != 1 and self.metavar is not None else None


def readable(params: list) -> list:
    """The parameters of a command or group, the options typer adds (--help, the completion options)
    included, shown as the two kinds above."""
    for p in params:
        p.__class__ = {TyperOption: Option, TyperArgument: Argument}.get(type(p), type(p))
    return params


class Command(TyperCommand):
    def get_params(self, ctx):
        return readable(super().get_params(ctx))


COMMAND_HINTS = {  # words a newcomer tries for a command, and what does it
    "": {
        "ls": "runs", "list": "runs", "status": "runs", "resume": "train --resume RUN",
        "continue": "train --resume RUN", "forecast": "predict RUN --horizon N", "evaluate": "eval",
        "test": "eval", "generate": "sample", "show": "config show CONFIG", "configs": "config list",
        "cp": "config cp NAME", "copy": "config cp NAME", "html": "report",
    },
    "config": {"ls": "list", "copy": "cp", "cat": "show", "print": "show"},
}  # fmt: skip


class App(TyperGroup):
    """The command group: a usage error (a bad option value, an unknown option or command, a missing
    argument) is one line `error: ...` and exit code 1, like every other user mistake. Parsing happens in
    `make_context` (the group's own options) and in `invoke` (the command's, and any subgroup's)."""

    def make_context(self, info_name, args, parent=None, **extra):
        with usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with usage_errors():
            return super().invoke(ctx)

    def get_params(self, ctx):
        return readable(super().get_params(ctx))

    def resolve_command(self, ctx, args):
        """An unknown command: the command that does what its word says (`ls` -> `runs`), else typer's guess."""
        try:
            return super().resolve_command(ctx, args)
        except UsageError as e:
            hints = COMMAND_HINTS.get("" if ctx.parent is None else ctx.info_name or "", {})
            if args and args[0] in hints:
                path = " ".join(["rnnctl", *([] if ctx.parent is None else [ctx.info_name]), hints[args[0]]])
                e.message = f"No such command {args[0]!r}. Did you mean '{path}'?"
            raise


out = Console(highlight=False)
if not out.is_terminal:
    out.width = max(out.width, 160)  # a pipe or a log file has no width to fit: keep table rows on one line
err = Console(stderr=True, highlight=False)


def say(text: str, console: Console | None = None) -> None:
    """One line as it is (no markup), however narrow the terminal; on stderr unless told: stdout may be data."""
    (err if console is None else console).print(text, markup=False, soft_wrap=True)


# -- errors --------------------------------------------------------------------------------------------------


def finite(text: str) -> float:
    """The parser of every float option: nan and inf are usage errors, not values to compute with."""
    value = float(text)  # a ValueError becomes typer's "Invalid value for '--option'"
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text.strip()!r}")
    return value


@contextmanager
def usage_errors() -> Iterator[None]:
    """click's usage errors as one line on stderr and exit code 1; help for no arguments stays click's."""
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `rnnctl`, `rnnctl config`: the help text
            raise
        if isinstance(e, NoSuchOption):
            _option_hint(e)
        message = " ".join(e.format_message().replace("Value error, ", "").split())  # one line
        message = message if message.endswith("...") else message.rstrip(".")
        message = re.sub(r"[^\s'\"()]{81,}", lambda m: f"{m[0][:60]}... ({len(m[0]):,} characters)", message)
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        say(f"error: {message[:1].lower()}{message[1:]}{where}")
        raise typer.Exit(1) from None


def _option_hint(e: NoSuchOption) -> None:
    """An unknown option: a config key of that name is set with --set (`--lr` -> `--set optim.lr=VALUE`);
    else the command's visible option closest to it, if one is close (click's guess offers `--help` for
    `--lr`)."""
    from rnnctl.config import closest_key

    command = e.ctx.command if e.ctx is not None else None
    params = [p for p in (command.params if command else []) if not getattr(p, "hidden", False)]
    options = [o for p in params for o in p.opts if o.startswith("--")]
    word = e.option_name.lstrip("-").replace("-", "_")
    key = closest_key(word) if "--set" in options else None
    close = difflib.get_close_matches(e.option_name, [o for o in options if o != "--help"], 1, 0.75)
    e.possibilities = []  # the hint goes into the message
    if key and (key.rsplit(".", 1)[-1] == word or not close):
        e.message = f"No such option: {e.option_name} (a config key: --set {key}=VALUE)"
    elif close:
        e.message = f"No such option: {e.option_name}. Did you mean {close[0]}?"


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake or a fault of the machine is one line on stderr and exit code 1; Ctrl-C is exit code
    130, SIGTERM 143. Warnings about damaged run files that rnnctl worked around are one line each.

    Under torchrun rank 0 speaks for all: another rank stays silent about what every rank hits alike (a
    config or data error, Ctrl-C) and names itself when it alone fails; a rank exits at once (see
    distributed.leave)."""
    from rnnctl import distributed, views
    from rnnctl.errors import PeerFailed, Terminated

    rank = distributed.launched_rank()

    def fail(message: str, code: int, shared: bool = False) -> typer.Exit:
        if message and not rank:  # no message: said already (the summary of a stopped run)
            say(message)
        elif message and not shared:
            say(message.replace("error: ", f"error: rank {rank}: ", 1))
        if rank is not None:
            distributed.leave(code)
        return typer.Exit(code)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RunFileWarning)
        warnings.showwarning = _one_line_warning
        try:
            yield
        except PeerFailed:
            distributed.leave(1)  # rank 0 said why
        except RnnctlError as e:
            shared = not distributed.world().distributed  # before training every rank reads the same config and data
            raise fail("\n".join(f"error: {line}" for line in str(e).splitlines()), 1, shared) from None
        except OSError as e:  # a disk or permission fault outside rnnctl's own writers
            where = f"{e.filename}: " if e.filename else ""
            raise fail(f"error: {where}{e.strerror or e}", 1) from None
        except Terminated as e:
            shown = views.stopped(out, e, rank, "SIGTERM")
            raise fail("" if shown else "terminated (SIGTERM)", 143, shared=True) from None
        except KeyboardInterrupt as e:
            shown = views.stopped(out, e, rank)
            raise fail("" if shown else "interrupted", 130, shared=True) from None
        except Exception as e:
            if rank is None:
                raise  # a bug: the traceback is what a report needs
            if distributed.peer_gone(e):  # a collective broke because another rank failed: that rank names itself
                distributed.leave(1)
            raise fail(f"error: {type(e).__name__}: {first_line(e)}", 1) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, RunFileWarning):
        say(f"warning: {message}")
    else:
        warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, filename, lineno, file, line))

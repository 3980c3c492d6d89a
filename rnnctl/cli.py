"""The `rnnctl` command: parse arguments, call one function, turn RnnctlError into a one-line error."""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from rnnctl.errors import RnnctlError, RunFileWarning

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import NoSuchOption, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoSuchOption, UsageError


class Option(TyperOption):
    """An option as `--help` shows it: its METAVAR, none for a flag (typer writes `<bool>`), and a default that
    would break the line (a newline) escaped as Python writes it: '\\n'."""

    def display_type_rich(self, ctx):
        return None if self.is_flag and self.metavar is None else super().display_type_rich(ctx)

    def _get_default_string(self, *, ctx, show_default_is_str, default_value):
        if isinstance(default_value, str) and not default_value.isprintable():
            return repr(default_value)
        return super()._get_default_string(
            ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value
        )


class Argument(TyperArgument):
    """An argument as `--help` shows it: its METAVAR alone (typer adds `<path>`, `<list[str]>`), `...` after
    one that repeats."""

    def display_type_rich(self, ctx):
        return "..." if self.nargs != 1 and self.metavar is not None else None


def readable(params: list) -> list:
    """typer's own parameters as the readable kinds above: every command's, and the options typer adds
    (--help, --install-completion, --show-completion), which no declaration reaches."""
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = Option  # a subclass that only changes how help shows it
        elif type(p) is TyperArgument:
            p.__class__ = Argument
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


HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=App,
    help="Train, evaluate and sample recurrent neural networks from YAML experiment configs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings=HELP,
)
config_app = typer.Typer(
    cls=App, help="List, copy and inspect experiment configs.", no_args_is_help=True, context_settings=HELP
)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        from rnnctl import __version__

        print(f"rnnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print rnnctl's version and exit.")
    ] = False,
) -> None:
    """Train, evaluate and sample recurrent neural networks from YAML experiment configs."""


out = Console(highlight=False)
if not out.is_terminal:
    out.width = max(out.width, 160)  # a pipe or a log file has no width to fit: keep table rows on one line
err = Console(stderr=True, highlight=False)

Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key: --set model.cell=lstm (repeatable)."),
]
RunRef = Annotated[str, typer.Argument(metavar="RUN", help="Run id, run folder path, or 'latest'.")]
ConfigArg = Annotated[
    Path, typer.Argument(metavar="CONFIG", help="Experiment config: a YAML file, or a shipped config's name.")
]
Checkpoint = Annotated[str, typer.Option(metavar="best|last", help="Which checkpoint of the run.")]
Target = Annotated[
    str,
    typer.Argument(
        metavar="RUN|SWEEP|STUDY",
        help="Run id, run folder path or 'latest'; or a sweep or study: its completed members as an ensemble.",
    ),
]
TopMembers = Annotated[
    Optional[int],
    typer.Option(
        "--top-members", min=1, metavar="K",
        help="A sweep or study: ensemble only its K members best on the validation metric; default: all.",
    ),
]  # fmt: skip
Device = Annotated[
    str, typer.Option(metavar="DEVICE", help="Where the model runs: auto (the best here), cpu, cuda, cuda:N or mps.")
]


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
        err.print(f"error: {message[:1].lower()}{message[1:]}{where}", markup=False, soft_wrap=True)
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
    config or data error, Ctrl-C) and names itself when it alone fails."""
    from rnnctl.errors import PeerFailed, Terminated

    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None

    def fail(message: str, code: int, shared: bool = False) -> typer.Exit:
        if not message:  # said already (the summary of a stopped run)
            pass
        elif rank is None or rank == 0:
            err.print(message, markup=False, soft_wrap=True)  # one line, however narrow the terminal
        elif not shared:
            err.print(message.replace("error: ", f"error: rank {rank}: ", 1), markup=False, soft_wrap=True)
        if rank is not None:
            _leave(code)
        return typer.Exit(code)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RunFileWarning)
        warnings.showwarning = _one_line_warning
        try:
            yield
        except PeerFailed:
            _leave(1)  # rank 0 said why
        except RnnctlError as e:
            shared = not _training_started()  # before training every rank reads the same config and data
            raise fail("\n".join(f"error: {line}" for line in str(e).splitlines()), 1, shared) from None
        except OSError as e:  # a disk or permission fault outside rnnctl's own writers
            where = f"{e.filename}: " if e.filename else ""
            raise fail(f"error: {where}{e.strerror or e}", 1) from None
        except Terminated as e:
            shown = _stopped_summary(e, rank, "SIGTERM")
            raise fail("" if shown else "terminated (SIGTERM)", 143, shared=True) from None
        except KeyboardInterrupt as e:
            shown = _stopped_summary(e, rank)
            raise fail("" if shown else "interrupted", 130, shared=True) from None
        except Exception as e:
            if rank is None:
                raise  # a bug: the traceback is what a report needs
            if _peer_gone(e):  # a collective broke because another rank failed: that rank names itself
                _leave(1)
            raise fail(
                f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", 1
            ) from None


def _leave(code: int) -> None:
    """A torchrun rank that stops on a failure or a signal exits now, its record already written: a process
    group torn down with a collective still pending (the peer is gone) can deadlock in its destructor
    (gloo's thread waits for the GIL that the joining thread holds), and torchrun would wait on it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stopped_summary(e: BaseException, rank: int | None, signal: str | None = None) -> bool:
    """A run stopped by Ctrl-C or SIGTERM: the same summary as a finished one (its first line says it was
    interrupted), and how to go on; a sweep or search: the command that continues it. False when there is
    no run to sum up (a group, or a run stopped before it began)."""
    summary, resume = getattr(e, "summary", None), getattr(e, "resume", None)
    if resume and not rank:
        out.print(f"continue with: {resume}", soft_wrap=True)
        return False
    if not summary:
        return False
    if not rank:
        from rnnctl import views

        views.summary(out, summary, signal)
        out.print(f"continue with: rnnctl train --resume {summary['id']}", soft_wrap=True)
    return True


def _peer_gone(e: Exception) -> bool:
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(e, backend_error) or "closed by peer" in str(e) or "Connection reset by peer" in str(e)


def _is_main() -> bool:
    from rnnctl import distributed

    return distributed.world().main


def _training_started() -> bool:
    from rnnctl import distributed

    return distributed.world().distributed


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, RunFileWarning):
        err.print(f"warning: {message}", markup=False, soft_wrap=True)
    else:
        warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, filename, lineno, file, line))


@app.command(cls=Command)
def train(
    config: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CONFIG", help="Experiment config: a YAML file or a shipped config's name; not with --resume."
        ),
    ] = None,
    overrides: Overrides = None,
    name: Annotated[
        Optional[str],
        typer.Option(metavar="NAME", help="Run name (folder suffix); default: the config's name or file stem."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch output; only the final summary.")] = False,
    resume: Annotated[
        Optional[str],
        typer.Option(metavar="RUN", help="Continue this run (id, path or 'latest') from its last checkpoint."),
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(
            min=1, metavar="N", help="Train this many epochs in all (the config's train.epochs; with --resume: more)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: take over a run whose lock holder stopped its heartbeat.")
    ] = False,
    nproc: Annotated[
        Optional[int],
        typer.Option(
            min=1, metavar="N", help="Train on this many processes of this machine (torchrun); one GPU each on CUDA."
        ),
    ] = None,
) -> None:
    """Train a model from a config and write a run folder under runs/, or continue one with --resume."""
    from rnnctl import loop, views
    from rnnctl.config import load_config, validate
    from rnnctl.errors import ConfigError
    from rnnctl.live import LiveTable, PlainLines

    if nproc is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        with user_errors():
            raise typer.Exit(launch(nproc, sys.argv[1:]))
    with user_errors():
        loggers = [] if quiet else [LiveTable(out) if out.is_terminal else PlainLines(sys.stdout)]
        command = shlex.join(["rnnctl", *sys.argv[1:]])
        if resume is not None:
            if config is not None or overrides or name:
                raise ConfigError("--resume continues a run with its own config: give no CONFIG, --set or --name")
            using = lambda run, ckpt, epoch: views.using(err, run, ckpt, epoch)  # noqa: E731
            result = loop.resume(resume, epochs, command=command, loggers=loggers, force=force, using=using)
        else:
            if config is None:
                raise ConfigError("give a CONFIG file to train, or --resume RUN to continue a run")
            if force:
                raise ConfigError("--force takes over the lock of a run to resume: use it with --resume RUN")
            if epochs is not None:
                overrides = [*(overrides or []), f"train.epochs={epochs}"]
            cfg = load_config(config, overrides or [])
            if name:
                cfg = validate({**cfg.to_dict(), "name": name}, source="--name")  # checked like the config's
            result = loop.train(cfg, command=command, loggers=loggers, overrides=overrides or [])
        if _is_main():  # under torchrun, rank 0 alone shows the outcome
            views.summary(out, result)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave(0)  # a torchrun rank ends here: no teardown of its process group (see distributed.hold)


@app.command("eval", cls=Command)
def eval_(
    run: Target = "latest",
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    split: Annotated[
        Optional[str],
        typer.Option(metavar="test|val", help="The split; default: test, or val for a task without a test split."),
    ] = None,
    top_members: TopMembers = None,
) -> None:
    """Re-evaluate a saved run on a split and save the result in its folder.

    A sweep or study: its members and their ensemble (mean probabilities, or mean predictions of a regressor)."""
    from rnnctl import views
    from rnnctl.ensemble import Ensemble, load

    with user_errors():
        loaded = load(run, top_members, checkpoint, device)
        report, saved = loaded.evaluate(split)
        if isinstance(loaded, Ensemble):
            err.print(loaded.used(), markup=False, soft_wrap=True)
            views.ensemble_report(out, loaded.folder, report, saved)
            return
        views.using(err, *loaded.used)
        views.eval_report(out, loaded.dir, report, saved)


@app.command(cls=Command)
def predict(
    run: Target,
    inputs: Annotated[
        Optional[list[str]], typer.Argument(metavar="INPUT", help="Inputs to classify, e.g. surnames or reviews.")
    ] = None,
    file: Annotated[
        Optional[Path], typer.Option("--file", metavar="PATH", help="Also classify each non-blank line of this file.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="How many classes to show per input.")] = 3,
    horizon: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="Series runs: forecast this many steps past the end of the data."),
    ] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    top_members: TopMembers = None,
) -> None:
    """Predict with a saved run: the top classes of each input, or a series' next values (--horizon).

    A sweep or study predicts as the ensemble of its members."""
    from rnnctl import views
    from rnnctl.data import read_lines
    from rnnctl.ensemble import Ensemble, load
    from rnnctl.errors import RunError

    def using(loaded) -> None:
        if isinstance(loaded, Ensemble):
            err.print(loaded.used(), markup=False, soft_wrap=True)
        else:
            views.using(err, *loaded.used)

    with user_errors():
        if horizon is not None:
            if inputs or file is not None:
                raise RunError("--horizon forecasts from the end of the run's series: give no INPUTS or --file with it")
            loaded = load(run, top_members, checkpoint, device)
            result = loaded.forecast(horizon)
            using(loaded)
            views.forecast(out, result)
            return
        inputs = [*(inputs or []), *(read_lines(file, "--file") if file is not None else [])]
        loaded = load(run, top_members, checkpoint, device)
        rows = loaded.predict(inputs, top)  # no inputs: what the run can do instead, or what to give it
        using(loaded)
        views.predictions(out, rows)


@app.command(cls=Command)
def sample(
    ctx: typer.Context,
    run: Annotated[
        Optional[str],
        typer.Argument(
            metavar="RUN", help="Run id, path or 'latest'; default: the newest completed language-model run."
        ),
    ] = None,
    prompt: Annotated[
        str, typer.Option("--prompt", metavar="TEXT", help="Text to start from; the model reads it before generating.")
    ] = "\n",
    old_prompt: Annotated[
        Optional[str], typer.Option("--seed", metavar="TEXT", hidden=True, help="The old name of --prompt.")
    ] = None,
    length: Annotated[int, typer.Option(min=0, metavar="N", help="Characters to generate per sample.")] = 500,
    temperature: Annotated[
        float, typer.Option(parser=finite, metavar="T", help="Softmax temperature (> 0): lower is more conservative.")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option(min=0, metavar="K", help="Sample among the k most likely characters only; 0: all.")
    ] = 0,
    num: Annotated[int, typer.Option(min=1, metavar="N", help="How many samples.")] = 1,
    rng_seed: Annotated[
        Optional[int],
        typer.Option(
            min=0, max=2**32 - 1, metavar="N", help="Seed for the sampler: the same seed gives the same text."
        ),
    ] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
) -> None:
    """Generate text from a character language model, streaming it to the terminal."""
    from rnnctl import views
    from rnnctl.errors import RunError
    from rnnctl.inference import LoadedRun, latest_language_model_run

    with user_errors():
        if old_prompt is not None:  # `--seed` was the prompt's name; it read like --rng-seed
            if ctx.get_parameter_source("prompt").name != "DEFAULT":
                raise RunError("--seed is the old name of --prompt: give --prompt alone")
            err.print(
                "note: --seed is now --prompt (the text to start from); --rng-seed seeds the sampler",
                markup=False,
                soft_wrap=True,
            )
            prompt = old_prompt
        loaded = LoadedRun(run or latest_language_model_run(), checkpoint, device)
        samples = loaded.samples(prompt, length, temperature, top_k, num, rng_seed)
        views.stream_samples(sys.stdout, prompt, samples, num, before=lambda: views.using(err, *loaded.used))


@app.command(cls=Command)
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN", help="Two or more run ids, paths, or 'latest'.")],
    metric: Annotated[
        Optional[str],
        typer.Option(metavar="COLUMN", help="A metrics column, e.g. val_acc; default: the first run's."),
    ] = None,
) -> None:
    """Overlay several runs' curves (by epoch and by training time) and tabulate best and final values."""
    from rnnctl import views
    from rnnctl.inference import compare_runs

    with user_errors():
        metric, rows, folder = compare_runs(runs, metric)
        err.print(f"using runs {', '.join(r['id'] for r in rows)}", markup=False, soft_wrap=True)
        views.comparison(out, metric, rows, folder)


Jobs = Annotated[int, typer.Option(min=1, metavar="N", help="Members trained at once here (worker processes).")]
Devices = Annotated[
    Optional[str],
    typer.Option(metavar="DEVICES", help="cuda:0,cuda:1,... or auto (every GPU): one worker per device."),
]
Storage = Annotated[
    Optional[str],
    typer.Option(
        metavar="URL|FILE",
        help="An Optuna storage: postgresql://..., mysql://..., sqlite:///... or a journal file on a shared file "
        "system; every machine given the same --storage and --study joins the group. Default: SQLite in its folder.",
    ),
]
StudyName = Annotated[
    Optional[str], typer.Option(metavar="NAME", help="The group's name (its folder's); the same name joins it.")
]


def _group_start(group, jobs: int, slots: list[str] | None) -> None:
    here = len(slots or [None] * jobs)
    out.print(f"{group.kind} {group.name}: {here} at once here; folder:", soft_wrap=True)
    out.print(f"  {group.path}", soft_wrap=True)


@app.command(cls=Command)
def sweep(
    config: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CONFIG", help="Experiment config: a YAML file or a shipped config's name; not with --resume."
        ),
    ] = None,
    grid: Annotated[
        Optional[list[str]],
        typer.Option("--grid", metavar="KEY=V1,V2", help="A swept config key and its values (repeatable)."),
    ] = None,
    overrides: Overrides = None,
    jobs: Jobs = 1,
    resume: Annotated[
        Optional[str],
        typer.Option(metavar="SWEEP", help="Continue a sweep: interrupted members from their checkpoints, the rest."),
    ] = None,
    devices: Devices = None,
    metric: Annotated[
        Optional[str],
        typer.Option(metavar="METRIC", help="The validation metric that ranks the groups; default: the task's."),
    ] = None,
    storage: Storage = None,
    study: StudyName = None,
) -> None:
    """Train every combination of --grid values as its own run, then summarize (mean +- std over seeds)."""
    from rnnctl.groups import engine as groups
    from rnnctl import views
    from rnnctl.errors import ConfigError
    from rnnctl.runtime import parse_devices

    with user_errors():
        slots = parse_devices(devices)  # before any sweep folder exists
        if metric is not None and not metric.startswith("val_"):
            raise ConfigError(f"--metric {metric}: a sweep ranks its groups on validation: give a val_* metric")
        if resume is not None:
            if config is not None or grid or storage or study or overrides:
                raise ConfigError("--resume continues a sweep as it was declared: give no CONFIG, --grid, --set, "
                                  "--storage or --study")  # fmt: skip
            group = groups.resolve(resume, "sweep")
        else:
            if config is None:
                raise ConfigError("give a CONFIG and --grid key=v1,v2 to sweep, or --resume SWEEP")
            group = groups.create("sweep", config, grid or [], overrides or [], study, storage)
        _group_start(group, jobs, slots)
        summary = groups.run(group, jobs, slots, None, lambda e: views.group_event(out, e), metric)
        if summary["nothing_left"]:
            out.print(f"sweep {group.name}: every member has completed; nothing to train", soft_wrap=True)
        views.sweep_summary(out, summary)
        if summary["counts"].get("failed"):
            raise typer.Exit(1)


@app.command(cls=Command)
def search(
    config: Annotated[
        Optional[Path],
        typer.Argument(metavar="CONFIG", help="Experiment config: a YAML file or a shipped config's name."),
    ] = None,
    space: Annotated[
        Optional[list[str]],
        typer.Option(
            "--space",
            metavar="KEY=RANGE",
            help="A searched key: choice(a,b,..), uniform(lo,hi), loguniform(lo,hi), int(lo,hi[,log]) (repeatable; "
            "also a search: section of the config).",
        ),
    ] = None,
    trials: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="The study's total number of trials, over all its workers; default 20."),
    ] = None,
    jobs: Jobs = 1,
    metric: Annotated[
        Optional[str],
        typer.Option(metavar="METRIC", help="The validation metric to optimize, e.g. val_acc; default: the task's."),
    ] = None,
    pruner: Annotated[
        str, typer.Option(metavar="median|hyperband|none", help="Stop poor trials early (none: never).")
    ] = "median",
    prune_after: Annotated[
        int, typer.Option(min=0, metavar="N", help="Prune only once this many trials have completed.")
    ] = 4,
    prune_warmup: Annotated[
        float,
        typer.Option(parser=finite, metavar="F", help="Prune a trial only past this share of its epochs (0 to 1)."),
    ] = 0.25,
    study: StudyName = None,
    storage: Storage = None,
    timeout: Annotated[
        Optional[str], typer.Option(metavar="DURATION", help="Start no new trial after this long: 90s, 30m, 2h.")
    ] = None,
    devices: Devices = None,
    show: Annotated[
        Optional[str], typer.Option(metavar="STUDY", help="Print a study's trials and best result again.")
    ] = None,
    resume: Annotated[
        Optional[str],
        typer.Option(metavar="STUDY", help="Continue a study: interrupted trials from their checkpoints, the rest."),
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Search config values with Optuna: trials as run folders, pruning, parallel and multi-machine studies."""
    from rnnctl.groups import engine as groups
    from rnnctl import views
    from rnnctl.errors import ConfigError
    from rnnctl.groups.space import parse_duration
    from rnnctl.runtime import parse_devices

    with user_errors():
        if show is not None or resume is not None:
            if config is not None or space or overrides or storage or study:
                raise ConfigError(f"--{'show' if show else 'resume'} takes a study as it was started: give no CONFIG, "
                                  "--space, --set, --storage or --study")  # fmt: skip
        if show is not None:
            views.study_summary(out, groups.summarize(groups.resolve(show, "study")))
            return
        if not 0 <= prune_warmup <= 1:
            raise ConfigError(f"--prune-warmup {prune_warmup:g}: expected a share of the epochs, from 0 to 1")
        slots, seconds = parse_devices(devices), parse_duration(timeout)
        if resume is not None:
            group = groups.resolve(resume, "study", trials)
        elif config is None:
            raise ConfigError("give a CONFIG and --space KEY=RANGE to search, --resume STUDY or --show STUDY")
        else:
            prune = (pruner, prune_after, prune_warmup)
            group = groups.create("study", config, space or [], overrides or [], study, storage, metric, trials, prune)
        _group_start(group, jobs, slots)
        summary = groups.run(group, jobs, slots, seconds, lambda e: views.group_event(out, e))
        if summary["nothing_left"]:
            n = group.spec["trials"]
            out.print(f"study {group.name} already has its {n} trials: nothing to train; for more, ask for a larger "
                      f"total: rnnctl search --resume {group.name} --trials {2 * n}", soft_wrap=True)  # fmt: skip
        views.study_summary(out, summary)


@app.command("worker", hidden=True, cls=Command)
def worker(
    folder: Annotated[Path, typer.Argument(metavar="GROUP_FOLDER", help="The sweep's or study's folder.")],
    index: Annotated[int, typer.Option(metavar="N", help="This worker's number (seeds its sampler).")] = 0,
    timeout: Annotated[Optional[str], typer.Option(metavar="DURATION", help="Start no member after this.")] = None,
    device: Annotated[Optional[str], typer.Option(metavar="DEVICE", help="The device of its members.")] = None,
) -> None:
    """One worker process of a sweep or search: trains the group's members until nothing is left."""
    from rnnctl.groups.folder import GroupFolder
    from rnnctl.groups.space import parse_duration
    from rnnctl.groups.workers import work

    with user_errors():
        work(GroupFolder(folder), index, device, parse_duration(timeout), lambda: None)


@app.command(cls=Command)
def report(
    ref: Annotated[
        str,
        typer.Argument(metavar="REF", help="A run (id, folder or 'latest'), a sweep or a study, tried in that order."),
    ] = "latest",
    out_file: Annotated[
        Optional[Path],
        typer.Option("--out", metavar="FILE", help="Where to write the page; default: report.html in its folder."),
    ] = None,
) -> None:
    """Write one self-contained HTML page of a run, sweep or study (images embedded), and print its path."""
    from rnnctl import report as reports

    with user_errors():
        kind, name, path = reports.write(ref, out_file)
        err.print(f"using {kind} {name}", markup=False, soft_wrap=True)  # which one `latest` or a prefix named
        out.print(str(path), markup=False, soft_wrap=True)


@app.command(cls=Command)
def runs(
    task: Annotated[Optional[str], typer.Option(metavar="TASK", help="Only runs of this task.")] = None,
    status: Annotated[
        Optional[str],
        typer.Option(metavar="STATUS", help="Only runs with this status (completed, interrupted, ...)."),
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            metavar="created|best|duration", help="Order: by start, best validation metric first, or duration."
        ),
    ] = "created",
) -> None:
    """List run folders: id, task, status, epochs, best validation metric, test metric, duration."""
    from rnnctl import views
    from rnnctl.runs import list_runs

    with user_errors():
        views.run_list(out, list_runs(task=task, status=status, sort=sort), filtered=bool(task or status))


@config_app.command("list", cls=Command)
def config_list() -> None:
    """List the configs shipped with rnnctl: the name to train or copy, and what it trains."""
    from rnnctl import views
    from rnnctl.config import describe, shipped_configs

    with user_errors():
        views.config_list(out, [(name, describe(path)) for name, path in shipped_configs().items()])


@config_app.command("cp", cls=Command)
def config_cp(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A shipped config's name, e.g. names_gru (see `rnnctl config list`).")
    ],
    dest: Annotated[
        Optional[str],  # text, not a Path: `mydir/` names a folder, and Path drops the slash
        typer.Argument(
            metavar="DEST",
            help="File or folder (mydir/ is made) to copy it to; default: ./NAME.yaml. Never overwritten.",
        ),
    ] = None,
) -> None:
    """Copy a shipped config into a file of your own to edit (an existing file is never overwritten)."""
    from rnnctl.config import copy_shipped

    with user_errors():
        out.print(f"copied {name} to {copy_shipped(name, dest)}", markup=False, soft_wrap=True)


@config_app.command("show", cls=Command)
def config_show(config: ConfigArg, overrides: Overrides = None) -> None:
    """Print the resolved, validated config (defaults filled in, overrides applied)."""
    from rnnctl.config import dump_yaml, load_config

    with user_errors():
        out.print(dump_yaml(load_config(config, overrides or []).to_dict()), end="", markup=False)


def launch(nproc: int, argv: list[str]) -> int:
    """`rnnctl train ... --nproc N`: the same command on N processes through torchrun (torch.distributed.run,
    standalone rendezvous on this machine); returns the exit code."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for arg in argv:  # the command again, without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    for name in [*logging.root.manager.loggerDict, "torch.distributed.run"]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks speak for themselves
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "rnnctl", *rest])
    try:
        run(args)
    except SignalException as e:  # Ctrl-C or SIGTERM to the launcher: it stopped the ranks, rank 0 recorded it
        return 130 if e.sigval == signal.SIGINT else 143  # rank 0 said so
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        if set(codes.values()) <= {130, -2}:
            return 130
        if set(codes.values()) <= {143, -15}:
            return 143
        return 1  # the failing rank printed its own line
    return 0


def main() -> None:
    app()


if __name__ == "__main__":
    main()

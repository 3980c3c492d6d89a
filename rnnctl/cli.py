"""The `rnnctl` command: parse arguments, call one function, turn RnnctlError into a one-line error."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rnnctl.clikit import App, Command, finite, out, say, user_errors
from rnnctl.errors import ConfigError, RunError

if TYPE_CHECKING:
    from rnnctl.groups.folder import GroupFolder

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


# -- arguments and options that several commands take --------------------------------------------------------

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key: --set model.cell=lstm (repeatable)."),
]
ConfigArg = Annotated[
    Path, typer.Argument(metavar="CONFIG", help="Experiment config: a YAML file, or a shipped config's name.")
]
NewConfig = Annotated[  # train and sweep: none with --resume
    Path | None,
    typer.Argument(
        metavar="CONFIG", help="Experiment config: a YAML file or a shipped config's name; not with --resume."
    ),
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
    int | None,
    typer.Option(
        "--top-members", min=1, metavar="K",
        help="A sweep or study: ensemble only its K members best on the validation metric; default: all.",
    ),
]  # fmt: skip
Device = Annotated[
    str, typer.Option(metavar="DEVICE", help="Where the model runs: auto (the best here), cpu, cuda, cuda:N or mps.")
]
Jobs = Annotated[int, typer.Option(min=1, metavar="N", help="Members trained at once here (worker processes).")]
SlurmGroup = Annotated[
    bool,
    typer.Option("--slurm", help="Submit --jobs workers as one Slurm job array (the config's slurm: section); return."),
]
Devices = Annotated[
    str | None, typer.Option(metavar="DEVICES", help="cuda:0,cuda:1,... or auto (every GPU): one worker per device.")
]
Storage = Annotated[
    str | None,
    typer.Option(
        metavar="URL|FILE",
        help="An Optuna storage: postgresql://..., mysql://..., sqlite:///... or a journal file on a shared file "
        "system; every machine given the same --storage and --study joins the group. Default: SQLite in its folder.",
    ),
]
StudyName = Annotated[
    str | None, typer.Option(metavar="NAME", help="The group's name (its folder's); the same name joins it.")
]


# -- commands ------------------------------------------------------------------------------------------------


@app.command(cls=Command)
def train(
    config: NewConfig = None,
    overrides: Overrides = None,
    name: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Run name (folder suffix); default: the config's name or file stem."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch output; only the final summary.")] = False,
    resume: Annotated[
        str | None,
        typer.Option(metavar="RUN", help="Continue this run (id, path or 'latest') from its last checkpoint."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Train this many epochs in all (the config's train.epochs; with --resume: more)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: take over a run whose lock holder stopped its heartbeat.")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Train on this many processes of this machine (torchrun); one GPU each on CUDA."
        ),
    ] = None,
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Submit the run as a Slurm job (the config's slurm: section) and return.")
    ] = False,
) -> None:
    """Train a model from a config and write a run folder under runs/, or continue one with --resume."""
    from rnnctl import distributed, views

    with user_errors():
        if slurm:
            return _submit(config, overrides or [], name, resume, epochs, force, nproc)
        if nproc is not None and not distributed.launched():
            raise typer.Exit(distributed.relaunch(nproc, sys.argv[1:]))
        result = _train(config, overrides or [], name, resume, epochs, force, quiet)
        if distributed.world().main:  # under torchrun, rank 0 alone shows the outcome
            views.summary(out, result)
    if distributed.launched():
        distributed.leave(0)  # a torchrun rank ends here: no teardown of its process group (see distributed.hold)


def _train(
    config: Path | None, overrides: list[str], name: str | None, resume: str | None, epochs: int | None,
    force: bool, quiet: bool,
) -> dict[str, Any]:  # fmt: skip
    """A new run from CONFIG, or a run continued with --resume: the options that go together checked first."""
    from rnnctl import loop
    from rnnctl.config import load_config, validate
    from rnnctl.inference import using
    from rnnctl.live import LiveTable, PlainLines

    loggers = [] if quiet else [LiveTable(out) if out.is_terminal else PlainLines(sys.stdout)]
    command = shlex.join(["rnnctl", *sys.argv[1:]])
    if resume is not None:
        if config is not None or overrides or name:
            raise ConfigError("--resume continues a run with its own config: give no CONFIG, --set or --name")
        told = lambda run, ckpt, epoch: say(using(run, ckpt, epoch))  # noqa: E731
        return loop.resume(resume, epochs, command=command, loggers=loggers, force=force, using=told)
    if config is None:
        raise ConfigError("give a CONFIG file to train, or --resume RUN to continue a run")
    if force:
        raise ConfigError("--force takes over the lock of a run to resume: use it with --resume RUN")
    overrides = [*overrides, f"train.epochs={epochs}"] if epochs is not None else overrides
    cfg = load_config(config, overrides)
    if name:
        cfg = validate({**cfg.to_dict(), "name": name}, source="--name")  # checked like the config's
    return loop.train(cfg, command=command, loggers=loggers, overrides=overrides)


def _submit(
    config: Path | None, overrides: list[str], name: str | None, resume: str | None, epochs: int | None,
    force: bool, nproc: int | None,
) -> None:  # fmt: skip
    """`train --slurm`: the run folder now, the training in a Slurm job."""
    from rnnctl import slurm
    from rnnctl.config import load_config, validate

    if force or nproc is not None:
        raise ConfigError("--slurm: a job takes over its run's lock itself, on one process: give no --force or --nproc")
    command = shlex.join(["rnnctl", *sys.argv[1:]])
    if resume is not None:
        if config is not None or overrides or name:
            raise ConfigError("--resume continues a run with its own config: give no CONFIG, --set or --name")
        job = slurm.submit_resume(resume, epochs, command)
    elif config is None:
        raise ConfigError("give a CONFIG file to train on Slurm")
    else:
        overrides = [*overrides, f"train.epochs={epochs}"] if epochs is not None else overrides
        cfg = load_config(config, overrides)
        if name:
            cfg = validate({**cfg.to_dict(), "name": name}, source="--name")
        job = slurm.submit(cfg, command, overrides)
    say(f"submitted {job['run']} as Slurm job {job['job_id']}", out)
    say(f"run folder: {job['dir']}", out)
    say(f"log: {job['log']}", out)


@app.command(cls=Command)
def cancel(
    run: Annotated[
        str, typer.Argument(metavar="RUN|SWEEP|STUDY", help="Run id, run folder path or 'latest'; or a group's name.")
    ],
) -> None:
    """Cancel the Slurm job of a run, or of a sweep's or study's workers; what it stopped stays resumable."""
    from rnnctl import slurm

    with user_errors():
        done = slurm.cancel(run)
        say(f"cancelled Slurm job {done['job_id']}: {done['name']} is {done['status']}", out)
        say(f"continue it with: {done['resume']}", out)


@app.command("eval", cls=Command)
def eval_(
    run: Target = "latest",
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    split: Annotated[
        str | None,
        typer.Option(metavar="test|val", help="The split; default: test, or val for a task without a test split."),
    ] = None,
    top_members: TopMembers = None,
) -> None:
    """Re-evaluate a saved run on a split and save the result in its folder.

    A sweep or study: its members and their ensemble (mean probabilities, or mean predictions of a regressor)."""
    from rnnctl import views
    from rnnctl.ensemble import load

    with user_errors():
        loaded = load(run, top_members, checkpoint, device)
        report, saved = loaded.evaluate(split)
        say(loaded.used)
        views.eval_report(out, loaded.name, report, saved)


@app.command(cls=Command)
def predict(
    run: Target,
    inputs: Annotated[
        list[str] | None, typer.Argument(metavar="INPUT", help="Inputs to classify, e.g. surnames or reviews.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", metavar="PATH", help="Also classify each non-blank line of this file.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="How many classes to show per input.")] = 3,
    horizon: Annotated[
        int | None, typer.Option(metavar="N", help="Series runs: forecast this many steps past the end of the data.")
    ] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
    top_members: TopMembers = None,
) -> None:
    """Predict with a saved run: the top classes of each input, or a series' next values (--horizon).

    A sweep or study predicts as the ensemble of its members."""
    from rnnctl import views
    from rnnctl.data import read_lines
    from rnnctl.ensemble import load

    with user_errors():
        if horizon is not None and (inputs or file is not None):
            raise RunError("--horizon forecasts from the end of the run's series: give no INPUTS or --file with it")
        inputs = [*(inputs or []), *(read_lines(file, "--file") if file is not None else [])]
        loaded = load(run, top_members, checkpoint, device)
        result = loaded.forecast(horizon) if horizon is not None else loaded.predict(inputs, top)
        say(loaded.used)
        if horizon is not None:
            views.forecast(out, result)
        else:
            views.predictions(out, result)


@app.command(cls=Command)
def sample(
    run: Annotated[
        str | None,
        typer.Argument(
            metavar="RUN", help="Run id, path or 'latest'; default: the newest completed language-model run."
        ),
    ] = None,
    prompt: Annotated[
        str,
        typer.Option(
            "--prompt",
            "--seed",
            metavar="TEXT",
            show_default="a newline",
            help="Text to start from; the model reads it before generating.",
        ),
    ] = "\n",
    length: Annotated[int, typer.Option(min=0, metavar="N", help="Characters to generate per sample.")] = 500,
    temperature: Annotated[
        float, typer.Option(parser=finite, metavar="T", help="Softmax temperature (> 0): lower is more conservative.")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option(min=0, metavar="K", help="Sample among the k most likely characters only; 0: all.")
    ] = 0,
    num: Annotated[int, typer.Option(min=1, metavar="N", help="How many samples.")] = 1,
    rng_seed: Annotated[
        int | None,
        typer.Option(
            min=0, max=2**32 - 1, metavar="N", help="Seed for the sampler: the same seed gives the same text."
        ),
    ] = None,
    checkpoint: Checkpoint = "best",
    device: Device = "auto",
) -> None:
    """Generate text from a character language model, streaming it to the terminal."""
    from rnnctl import views
    from rnnctl.inference import LoadedRun, latest_language_model_run

    with user_errors():
        loaded = LoadedRun(run or latest_language_model_run(), checkpoint, device)
        samples = loaded.sample(prompt, length, temperature, top_k, num, rng_seed)
        views.stream_samples(sys.stdout, prompt, samples, num, before=lambda: say(loaded.used))


@app.command(cls=Command)
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN", help="Two or more run ids, paths, or 'latest'.")],
    metric: Annotated[
        str | None, typer.Option(metavar="COLUMN", help="A metrics column, e.g. val_acc; default: the first run's.")
    ] = None,
) -> None:
    """Overlay several runs' curves (by epoch and by training time) and tabulate best and final values."""
    from rnnctl import views
    from rnnctl.inference import compare_runs

    with user_errors():
        metric, rows, folder = compare_runs(runs, metric)
        say(f"using runs {', '.join(r['id'] for r in rows)}")
        views.comparison(out, metric, rows, folder)


@app.command(cls=Command)
def sweep(
    config: NewConfig = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", metavar="KEY=V1,V2", help="A swept config key and its values (repeatable)."),
    ] = None,
    overrides: Overrides = None,
    jobs: Jobs = 1,
    resume: Annotated[
        str | None,
        typer.Option(metavar="SWEEP", help="Continue a sweep: interrupted members from their checkpoints, the rest."),
    ] = None,
    devices: Devices = None,
    metric: Annotated[
        str | None,
        typer.Option(metavar="METRIC", help="The validation metric that ranks the groups; default: the task's."),
    ] = None,
    storage: Storage = None,
    study: StudyName = None,
    slurm: SlurmGroup = False,
) -> None:
    """Train every combination of --grid values as its own run, then summarize (mean +- std over seeds)."""
    from rnnctl import views
    from rnnctl.runtime import parse_devices

    with user_errors():
        slots = parse_devices(devices)  # before any sweep folder exists
        if slurm and devices:
            raise ConfigError("--slurm: the jobs' GPUs come from the config's slurm: section, not --devices")
        group = _sweep(config, grid or [], overrides or [], study, storage, metric, resume)
        if slurm:
            return _submit_group(group, jobs)
        summary = _drive(group, jobs, slots, None, metric)
        views.sweep_summary(out, summary)
        if summary["counts"].get("failed"):
            raise typer.Exit(1)


def _sweep(
    config: Path | None, grid: list[str], overrides: list[str], name: str | None, storage: str | None,
    metric: str | None, resume: str | None,
) -> GroupFolder:  # fmt: skip
    """The sweep to train: a new one, or one to continue as it was declared."""
    from rnnctl.groups import engine as groups

    if metric is not None and not metric.startswith("val_"):
        raise ConfigError(f"--metric {metric}: a sweep ranks its groups on validation: give a val_* metric")
    if resume is not None:
        if config is not None or grid or storage or name or overrides:
            raise ConfigError("--resume continues a sweep as it was declared: give no CONFIG, --grid, --set, "
                              "--storage or --study")  # fmt: skip
        return groups.resolve(resume, "sweep")
    if config is None:
        raise ConfigError("give a CONFIG and --grid key=v1,v2 to sweep, or --resume SWEEP")
    return groups.create("sweep", config, grid, overrides, name, storage)


@app.command(cls=Command)
def search(
    config: Annotated[
        Path | None, typer.Argument(metavar="CONFIG", help="Experiment config: a YAML file or a shipped config's name.")
    ] = None,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "--space",
            metavar="KEY=RANGE",
            help="A searched key: choice(a,b,..), uniform(lo,hi), loguniform(lo,hi), int(lo,hi[,log]) (repeatable; "
            "also a search: section of the config).",
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="The study's total number of trials, over all its workers; default 20."),
    ] = None,
    jobs: Jobs = 1,
    metric: Annotated[
        str | None,
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
        str | None, typer.Option(metavar="DURATION", help="Start no new trial after this long: 90s, 30m, 2h.")
    ] = None,
    devices: Devices = None,
    show: Annotated[
        str | None, typer.Option(metavar="STUDY", help="Print a study's trials and best result again.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(metavar="STUDY", help="Continue a study: interrupted trials from their checkpoints, the rest."),
    ] = None,
    overrides: Overrides = None,
    slurm: SlurmGroup = False,
) -> None:
    """Search config values with Optuna: trials as run folders, pruning, parallel and multi-machine studies."""
    from rnnctl import views
    from rnnctl.groups import engine as groups
    from rnnctl.groups.results import summarize

    with user_errors():
        if (show is not None or resume is not None) and (config is not None or space or overrides or storage or study):
            raise ConfigError(f"--{'show' if show else 'resume'} takes a study as it was started: give no CONFIG, "
                              "--space, --set, --storage or --study")  # fmt: skip
        if show is not None:
            views.study_summary(out, summarize(groups.resolve(show, "study")))
            return
        prune = (pruner, prune_after, prune_warmup)
        if slurm and (devices or timeout):
            raise ConfigError("--slurm: the jobs' GPUs and time come from the config's slurm: section, not "
                              "--devices or --timeout")  # fmt: skip
        group, slots, seconds = _study(config, space or [], overrides or [], study, storage, metric, trials, prune,
                                       resume, devices, timeout)  # fmt: skip
        if slurm:
            return _submit_group(group, jobs)
        views.study_summary(out, _drive(group, jobs, slots, seconds))


def _study(
    config: Path | None, space: list[str], overrides: list[str], name: str | None, storage: str | None,
    metric: str | None, trials: int | None, prune: tuple[str, int, float], resume: str | None,
    devices: str | None, timeout: str | None,
) -> tuple[GroupFolder, list[str] | None, float | None]:  # fmt: skip
    """The study to train (a new one, or one to continue), its devices and its time limit, checked in the
    order the options are read."""
    from rnnctl.groups import engine as groups
    from rnnctl.config import parse_duration
    from rnnctl.runtime import parse_devices

    if not 0 <= prune[2] <= 1:
        raise ConfigError(f"--prune-warmup {prune[2]:g}: expected a share of the epochs, from 0 to 1")
    slots, seconds = parse_devices(devices), parse_duration(timeout)
    if resume is not None:
        return groups.resolve(resume, "study", trials), slots, seconds
    if config is None:
        raise ConfigError("give a CONFIG and --space KEY=RANGE to search, --resume STUDY or --show STUDY")
    return groups.create("study", config, space, overrides, name, storage, metric, trials, prune), slots, seconds


def _submit_group(group: GroupFolder, jobs: int) -> None:
    """`sweep --slurm`, `search --slurm`: the group's workers as one Slurm job array."""
    from rnnctl import slurm

    done = slurm.submit_group(group, jobs)
    say(f"submitted {done['kind']} {done['group']}: {done['tasks']} workers as Slurm job array {done['job_id']}", out)
    say(f"{done['kind']} folder: {done['dir']}", out)
    say(f"logs: {done['log_dir']}", out)


def _drive(
    group: GroupFolder, jobs: int, slots: list[str] | None, seconds: float | None, metric: str | None = None
) -> dict:
    """Train what is left of a sweep or study, one line per member started or ended; its summary."""
    from rnnctl import views
    from rnnctl.groups import engine as groups

    views.group_start(out, group, len(slots or [None] * jobs))
    summary = groups.run(group, jobs, slots, seconds, lambda e: views.group_event(out, e), metric)
    if summary["nothing_left"]:
        views.nothing_left(out, group)
    return summary


@app.command("worker", hidden=True, cls=Command)
def worker(
    folder: Annotated[Path, typer.Argument(metavar="GROUP_FOLDER", help="The sweep's or study's folder.")],
    index: Annotated[int, typer.Option(metavar="N", help="This worker's number (seeds its sampler).")] = 0,
    timeout: Annotated[str | None, typer.Option(metavar="DURATION", help="Start no member after this.")] = None,
    device: Annotated[str | None, typer.Option(metavar="DEVICE", help="The device of its members.")] = None,
) -> None:
    """One worker process of a sweep or search: trains the group's members until nothing is left."""
    from rnnctl.groups.folder import GroupFolder
    from rnnctl.config import parse_duration
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
        Path | None,
        typer.Option("--out", metavar="FILE", help="Where to write the page; default: report.html in its folder."),
    ] = None,
) -> None:
    """Write one self-contained HTML page of a run, sweep or study (images embedded), and print its path."""
    from rnnctl import report as reports

    with user_errors():
        kind, name, path = reports.write(ref, out_file)
        say(f"using {kind} {name}")  # which one `latest` or a prefix named
        say(str(path), out)


@app.command(cls=Command)
def runs(
    task: Annotated[str | None, typer.Option(metavar="TASK", help="Only runs of this task.")] = None,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help="Only runs with this status (completed, interrupted, ...).")
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
        found = list_runs(task=task, status=status, sort=sort)
        if any(r.get("job_id") for r in found):  # runs trained as Slurm jobs: their jobs' states from squeue
            from rnnctl.slurm import queue_states

            states = queue_states()
            found = [{**r, "slurm": states.get(r["job_id"], "-")} if r.get("job_id") else r for r in found]
        views.run_list(out, found, filtered=bool(task or status))


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
        str | None,  # text, not a Path: `mydir/` names a folder, and Path drops the slash
        typer.Argument(
            metavar="DEST",
            help="File or folder (mydir/ is made) to copy it to; default: ./NAME.yaml. Never overwritten.",
        ),
    ] = None,
) -> None:
    """Copy a shipped config into a file of your own to edit (an existing file is never overwritten)."""
    from rnnctl.config import copy_shipped

    with user_errors():
        say(f"copied {name} to {copy_shipped(name, dest)}", out)


@config_app.command("show", cls=Command)
def config_show(config: ConfigArg, overrides: Overrides = None) -> None:
    """Print the resolved, validated config (defaults filled in, overrides applied)."""
    from rnnctl.config import dump_yaml, load_config

    with user_errors():
        out.print(dump_yaml(load_config(config, overrides or []).to_dict()), end="", markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Searches: an Optuna study whose trials are rnnctl runs.

Optuna does the searching (its sampler, pruner and storage); this module only wires it to rnnctl's runs.
A study folder `runs/studies/<study>/` holds study.json (what was asked: config, space, metric), the
config, the SQLite storage study.db (unless --storage names another), the trials' run folders under
runs/, the logs of worker processes, and the result: trials.csv, best.yaml and Optuna's plots.

Every process that opens the same storage and study name is one more worker of the study: `--jobs N`
starts N worker processes here, and the same command on another machine with the same `--storage`
joins them. A trial runs in its worker's process: `loop.train` with a callback that reports each
validation to Optuna and ends the run with status `pruned` when the pruner says so. A worker that dies
stops its trial's heartbeat; the next worker to ask for a trial marks it failed and queues its
parameters again (Optuna's RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rnnctl.callbacks import Callback, Point
from rnnctl.config import apply_overrides, config_path, dump_yaml, load_config, load_yaml
from rnnctl.errors import ConfigError, RnnctlError, RunError, StorageError, Terminated
from rnnctl.runs import HOST, atomic_write, read_json, runs_root, safe_name

if TYPE_CHECKING:
    import optuna

    from rnnctl.loop import Trainer

HEARTBEAT_ENV = "RNNCTL_SEARCH_HEARTBEAT"  # seconds between a running trial's heartbeats (tests shorten it)
HEARTBEAT = 10
MAX_RETRIES = 3  # a trial whose worker died is queued again at most this often
MAX_TRIALS = 100_000
MAX_FAILED_IN_A_ROW = 5  # a search worker stops after this many failed trials in a row
MAXIMIZED = ("acc", "accuracy", "f1", "r2", "precision", "recall", "auc")  # other metrics are minimized
PRUNERS = ("median", "hyperband", "none")
STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
SKIPPED = "rnnctl_skipped"  # system attr of a trial asked for after the study had its N trials: not a trial


NAME_VALUE = 24  # characters of each key and value in a sweep member's name
NAME_MAX = 100  # characters of the whole name: a run folder's name stays far below 255 bytes


def member_name(i: int, values: dict[str, str]) -> str:
    """Sweep member i's run name, e.g. `003-cell=lstm-path=b-y.csv`: ASCII letters, digits and `-_.=` only,
    each value cut to its last NAME_VALUE characters (a path's end tells members apart). The index keeps
    names unique; sweep.json keeps the full values."""
    parts = (f"{key.split('.')[-1][:NAME_VALUE]}={value[-NAME_VALUE:]}" for key, value in values.items())
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", "-".join(parts))
    return re.sub(r"-{2,}", "-", f"{i:03d}-{slug}")[:NAME_MAX].rstrip("-.")


def studies_root() -> Path:
    return runs_root() / "studies"


# -- the space ------------------------------------------------------------------------------------

_SPEC = re.compile(r"^\s*(choice|uniform|loguniform|int)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Param:
    """One searched config key: `choice(a,b)`, `uniform(lo,hi)`, `loguniform(lo,hi)` or `int(lo,hi[,log])`."""

    key: str
    kind: str
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return f"choice({','.join(self.choices)})"
        if self.kind == "int":
            return f"int({int(self.low)},{int(self.high)}{',log' if self.log else ''})"
        return f"{self.kind}({self.low:g},{self.high:g})"

    def suggest(self, trial: optuna.Trial) -> str:
        """The trial's value of this key, as `--set` takes it."""
        if self.kind == "choice":
            return str(trial.suggest_categorical(self.key, list(self.choices)))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log))
        return repr(trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform"))

    def edges(self) -> list[str]:
        """The values that stand for the whole range when the config checks it."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [str(int(self.low)), str(int(self.high))]
        return [repr(self.low), repr(self.high)]


def parse_param(key: str, spec: str, where: str) -> Param:
    """`where` names the source in errors: `--space model.cell=...` or `config.yaml: search.model.cell`."""
    key = key.strip()
    m = _SPEC.match(str(spec))
    if not key or not m:
        raise ConfigError(
            f"{where}: expected KEY=choice(a,b,...), uniform(lo,hi), loguniform(lo,hi) or int(lo,hi[,log])"
        )
    kind, args = m[1], [a.strip() for a in m[2].split(",")]
    if kind == "choice":
        if not all(args) or len(set(args)) != len(args):
            raise ConfigError(f"{where}: choice() takes distinct, non-empty values separated by commas")
        return Param(key, kind, choices=tuple(args))
    log = kind == "int" and len(args) == 3 and args[2] == "log"
    if len(args) != 2 + log:
        raise ConfigError(f"{where}: {kind}() takes {'lo,hi[,log]' if kind == 'int' else 'lo,hi'}")
    try:
        low, high = (int(a) for a in args[:2]) if kind == "int" else (float(a) for a in args[:2])
    except ValueError:
        what = "integers" if kind == "int" else "numbers"
        raise ConfigError(f"{where}: {kind}({','.join(args)}): the bounds must be {what}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}: {kind}() needs lo < hi, got {args[0]} and {args[1]}")
    if (kind == "loguniform" or log) and low <= 0:
        raise ConfigError(f"{where}: a log scale needs lo > 0, got {args[0]}")
    return Param(key, kind, low=low, high=high, log=log or kind == "loguniform")


def parse_space(items: list[str], section: Any, config: Path) -> list[Param]:
    """The config's `search:` section, then the --space options (which win on the same key)."""
    params: dict[str, Param] = {}
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigError(f"{config}: search: expected a mapping of config keys to ranges, e.g. optim.lr: ...")
        for key, spec in section.items():
            params[str(key)] = parse_param(str(key), spec, f"{config}: search.{key}")
    for item in items:
        key, sep, spec = item.partition("=")
        params[key.strip()] = parse_param(key, spec if sep else "", f"--space {item}")
    return list(params.values())


def check_space(config: Path, space: list[Param], overrides: list[str] = ()) -> None:
    """Every choice, and both ends of every range, must pass the config's own validation: a key or value
    the config rejects is an error now, not in trial 17."""
    if not space:
        raise ConfigError("search: give at least one --space KEY=RANGE, or a search: section in the config")
    for p in space:
        for value in p.edges():
            try:
                load_config(config, [*overrides, f"{p.key}={value}"])
            except ConfigError as e:
                raise ConfigError(f"--space {p.key}={p.spec}: {value}: {str(e).splitlines()[0]}") from None


def direction(metric: str, task_monitor: str, task_mode: str) -> str:
    if not metric.startswith("val_"):
        raise ConfigError(f"--metric {metric}: a search ranks trials on validation: give a val_* metric")
    name = metric.removeprefix("val_")
    if name == task_monitor:
        return "maximize" if task_mode == "max" else "minimize"
    return "maximize" if name in MAXIMIZED else "minimize"


def parse_duration(text: str | None) -> float | None:
    """`--timeout`: 90, 90s, 30m, 2h, 1d -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m[1]) <= 0:
        raise ConfigError(f"--timeout {text!r}: expected a duration like 90s, 30m or 2h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


# -- storage --------------------------------------------------------------------------------------


def heartbeat() -> int:
    return max(1, int(os.environ.get(HEARTBEAT_ENV, HEARTBEAT)))


def shown_url(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeats: a database URL (sqlite:///, postgresql://, mysql://) or the path
    of a journal file (one file on a shared file system is enough to spread a study over machines)."""
    import optuna

    interval = heartbeat()
    try:
        with quiet():
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            if "://" in url:
                kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=interval, grace_period=3 * interval,
                    heartbeat_stale_trial_callback=retry,
                )  # fmt: skip
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return _journal_class()(JournalFileBackend(url), interval, retry)
    except ImportError as e:  # no driver: Optuna re-raises SQLAlchemy's ImportError without its name
        driver = " (pip install 'rnnctl[postgres]')" if url.startswith("postgres") else ""
        raise ConfigError(f"--storage {shown_url(url)}: the database driver is not installed{driver}: {e}") from None
    except Exception as e:  # sqlalchemy's and the drivers' errors: a server down, a bad URL, no permission
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"--storage {shown_url(url)}: cannot open it: {first[:300]}") from None


def _journal_class():
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    class Journal(optuna.storages.JournalStorage, BaseHeartbeat):
        """Optuna's journal-file storage with the heartbeat its RDB storage has: each running trial's last
        beat is a system attribute, so a trial whose worker died is found and queued again the same way."""

        def __init__(self, backend, interval: int, callback) -> None:
            super().__init__(backend)
            self.interval, self.callback = interval, callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, "rnnctl_heartbeat", time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, running = time.time(), optuna.trial.TrialState.RUNNING
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(running,)):
                beat = t.system_attrs.get("rnnctl_heartbeat")  # none yet: the worker died as the trial began
                if beat is None and t.datetime_start is not None:
                    beat = t.datetime_start.timestamp()
                if beat is not None and now - beat > 3 * self.interval:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int:
            return self.interval

        def get_heartbeat_stale_trial_callback(self):
            return self.callback

    return Journal


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's logs (a failed trial's traceback: rnnctl reports it in one line) and experimental-feature
    warnings are not for rnnctl's users."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        yield


# -- the study folder ------------------------------------------------------------------------------


@dataclass
class Study:
    """A study folder and what study.json says of it."""

    folder: Path
    spec: dict[str, Any]
    _storage: Any = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def grid(self) -> dict[str, list[str]] | None:
        """A sweep's grid (every combination is one trial), or None for a search."""
        return self.spec.get("grid")

    @property
    def space(self) -> list[Param]:
        if self.grid is not None:
            return [Param(k, "choice", choices=tuple(v)) for k, v in self.grid.items()]
        return [parse_param(k, v, f"{self.folder / 'study.json'}: space.{k}") for k, v in self.spec["space"].items()]

    def run_name(self, number: int, values: dict[str, str]) -> str:
        """A trial's run name: `trial-0007`; a sweep member's from its index and values (`003-cell=lstm`)."""
        if self.grid is None:
            return f"trial-{number:04d}"
        members = [dict(zip(self.grid, combo)) for combo in itertools.product(*self.grid.values())]
        return member_name(members.index(values), values)

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    def storage_url(self) -> str:
        return self.spec["storage"] or f"sqlite:///{(self.folder / 'study.db').resolve()}"

    def open(self) -> optuna.storages.BaseStorage:
        """The study's storage, opened once per process (opening a database storage checks its schema)."""
        if self._storage is None:
            self._storage = open_storage(self.storage_url())
        return self._storage

    def load(self, sampler=None, pruner=None) -> optuna.Study:
        import optuna

        storage = self.open()
        with quiet():
            try:
                return optuna.load_study(study_name=self.name, storage=storage, sampler=sampler, pruner=pruner)
            except KeyError:
                raise RunError(f"study {self.name!r} is not in {shown_url(self.storage_url())}") from None


def resolve_study(ref: str) -> Study:
    path = Path(ref)
    if not (path / "study.json").is_file():
        path = studies_root() / ref
    if not (path / "study.json").is_file():
        raise RunError(f"unknown study {ref!r}: no study.json there or in {studies_root()}/")
    return Study(path, read_json(path / "study.json"))


def create(
    config: Path,
    space_items: list[str],
    metric: str | None,
    pruner: str,
    name: str | None,
    storage: str | None,
    overrides: list[str] = (),
) -> Study:
    """The study folder and the Optuna study, or the existing ones when the same search was started
    before (the same command again continues it); a different search under the same name is an error.
    `overrides` (--set) go into the study's copy of the config, which every trial starts from."""
    import optuna

    from rnnctl.tasks import get_task

    config = config_path(config)  # a file, or a shipped config's name
    cfg = load_config(config, overrides)  # the file itself is valid
    text = config.read_text(encoding="utf-8")
    raw = load_yaml(text) or {}
    if overrides:
        raw = apply_overrides(raw, overrides)
        text = f"# {config} with --set {' --set '.join(overrides)}\n" + dump_yaml(raw)
    space = parse_space(space_items, raw.get("search"), config)
    check_space(config, space, overrides)
    task = get_task(cfg.task)
    metric = metric or f"val_{task.monitor}"
    goal = direction(metric, task.monitor, task.monitor_mode)
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: expected one of {', '.join(PRUNERS)}")
    name = name or config.stem
    if safe_name(name) != name or name.startswith("."):
        raise ConfigError(f"--study {name!r}: use letters, digits and -_. only")
    spec = {
        "name": name, "config": str(config.resolve()), "config_text": text,
        "space": {p.key: p.spec for p in space}, "metric": metric, "direction": goal, "pruner": pruner,
        "storage": storage,
    }  # fmt: skip
    folder = studies_root() / name
    what = ("config_text", "space", "metric", "direction", "storage")
    if (folder / "study.json").is_file():
        old = read_json(folder / "study.json")
        differs = [k for k in what if old.get(k) != spec[k]]
        if differs:
            raise ConfigError(
                f"study {name!r} ({folder}) was started with another {', '.join(differs)}: "
                f"continue it with the same command, or start a new one with --study NEW_NAME"
            )
        study = Study(folder, old)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "config.yaml", spec["config_text"])
        atomic_write(folder / "study.json", json.dumps({**spec, "created": dt.datetime.now().isoformat()}, indent=2))
        study = Study(folder, read_json(folder / "study.json"))
    with quiet():
        s = optuna.create_study(study_name=name, storage=study.open(), direction=goal, load_if_exists=True)
        stored = s.user_attrs.get("rnnctl")
        mine = {k: spec[k] for k in ("config_text", "space", "metric", "direction")}
        if stored is None:
            s.set_user_attr("rnnctl", mine)  # a worker on another machine checks its search against this
        elif stored != mine:
            differs = ", ".join(k for k in mine if stored.get(k) != mine[k])
            raise ConfigError(
                f"study {name!r} in {shown_url(study.storage_url())} was started with another {differs}: "
                "use the same config and --space, or another --study"
            )
    return study


# -- trials ---------------------------------------------------------------------------------------


class Pruning(Callback):
    """Reports each validation of a trial's run to Optuna; ends the run (status `pruned`) when the pruner
    says its start is worse than the others'. Steps are hundredths of an epoch, so that trials with other
    batch sizes or `train.eval_every` still compare at the same point of training. Notes the run's id and
    the values reported: the trial's value is the best of them."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.run: str | None = None
        self.values: list[float] = []

    def on_start(self, trainer: Trainer) -> None:
        self.run = trainer.run.id
        self.trial.set_user_attr("run", self.run)

    def on_evaluation(self, trainer: Trainer, point: Point) -> None:
        value = point.row.get(self.metric)
        if not isinstance(value, (int, float)):
            known = ", ".join(k for k in point.row if k.startswith("val_"))
            raise ConfigError(f"--metric {self.metric}: this task's validation metrics are {known}")
        if not math.isfinite(value):
            return
        self.values.append(value)
        epochs = point.row.get("epoch_fraction", point.row["epoch"])
        self.trial.report(value, round(100 * epochs))
        if epochs >= trainer.cfg.train.epochs:  # the run's last validation: its training is done, nothing to save
            return
        if self.trial.should_prune():
            trainer.end_now = "pruned"
            trainer.info["pruned"] = {"epoch": round(epochs, 2), self.metric: value}


class Objective:
    """One trial: the config with the trial's values, trained as a run folder under the study."""

    def __init__(self, study: Study, trials: int, device: str | None, on_trial: Callable[[dict], None]):
        self.study, self.trials, self.device, self.on_trial = study, trials, device, on_trial
        self.space = study.space

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from rnnctl import loop

        values = {p.key: p.suggest(trial) for p in self.space}
        if not self._needed(trial):
            trial.study.stop()
            trial.storage.set_trial_system_attr(trial._trial_id, SKIPPED, True)
            raise _Skipped()
        overrides = [f"{k}={v}" for k, v in values.items()]
        if self.device:
            overrides.append(f"train.device={self.device}")
            trial.set_user_attr("device", self.device)
        name = self.study.run_name(trial.number, values)
        cfg = load_config(self.study.config, [*overrides, f"name={name}"])
        command = " ".join(["rnnctl train", str(self.study.config), *(f"--set {o}" for o in overrides), "--name", name])
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        t0 = time.perf_counter()
        pruning = Pruning(trial, self.study.spec["metric"])
        try:
            result = loop.train(cfg, command, [], root=self.study.runs, callbacks=[pruning])
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: the run is recorded `interrupted`; the same values are queued again, so the
            # same command later trains them (Optuna marks this trial failed on the way out)
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except (ConfigError, StorageError):
            raise  # the same for every trial (a --metric the task lacks) or the machine's (a full disk): stop
        except RnnctlError as e:  # this trial's own failure (diverged, its data missing): the others go on
            trial.set_user_attr("error", str(e).splitlines()[0][:500])
            self.on_trial({"number": trial.number, "status": "failed", "value": None, "params": trial.params,
                           "seconds": time.perf_counter() - t0, "run": pruning.run, "error": str(e)})  # fmt: skip
            raise _Failed() from None
        seconds = time.perf_counter() - t0
        value = _best(pruning.values, self.study.spec["direction"])
        self.on_trial({"number": trial.number, "status": result["status"], "value": value, "params": trial.params,
                       "seconds": seconds, "run": result["id"]})  # fmt: skip
        if result["status"] == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {result.get('pruned', {}).get('epoch')}")
        return value

    def _needed(self, trial: optuna.Trial) -> bool:
        """Workers ask for trials at once. A search's trial asked for after the study's N trials were all
        finished or under way is not run, so that `--trials N` is the study's total however many workers
        share it. A sweep's trial is not run when another trial has its grid point (the grid sampler hands
        a point out again once every point is taken); a queued one (a retry) always runs."""
        import optuna

        state = optuna.trial.TrialState
        if self.study.grid is not None:
            if "fixed_params" in trial.storage.get_trial_system_attrs(trial._trial_id):
                return True
            if {k: str(v) for k, v in trial.params.items()} in self.study.spec.get("done", []):
                return False  # trained before the sweep was a study
            # two workers may be handed the same point at once: the lower trial number keeps it (each seeing the
            # other running, both would step aside and the point would never be trained)
            taken = (state.COMPLETE, state.PRUNED, state.RUNNING, state.FAIL)
            others = trial.study.get_trials(deepcopy=False, states=taken)
            return not any(
                t.params == trial.params
                and not t.system_attrs.get(SKIPPED)
                and (t.number < trial.number or t.state != state.RUNNING)
                for t in others
                if t.number != trial.number
            )
        others = trial.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING))
        before = [t for t in others if t.number < trial.number and not t.system_attrs.get(SKIPPED)]
        return len(before) < self.trials


class _FailuresInARow:
    """Stops a worker whose trials all fail (data that every trial lacks): a search counts only finished
    trials towards its N, so it would otherwise ask for failing trials forever."""

    def __init__(self, limit: int):
        self.limit, self.failed = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.system_attrs.get(SKIPPED):
            return
        self.failed = self.failed + 1 if trial.state.name == "FAIL" else 0
        if self.failed >= self.limit:
            why = trial.user_attrs.get("error") or "see the trials' run folders"
            raise RunError(f"{self.limit} trials in a row failed; the last: {why}")


class _Skipped(Exception):
    """A trial asked for after the study had its N: failed on purpose, hidden from the results."""


class _Failed(Exception):
    """A trial's run failed for a reason of its own (recorded in the trial): the study goes on."""


def _best(values: list[float], goal: str) -> float:
    if not values:
        return float("nan")  # Optuna records a trial with no finite value as failed
    return max(values) if goal == "maximize" else min(values)


def finished(study: optuna.Study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def make_pruner(name: str, epochs: int, trials: int):
    import optuna

    if name == "median":  # a trial is pruned when it is worse than the median of the others at that point
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, trials // 5)), n_warmup_steps=100)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=100, max_resource=100 * epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def worker(
    study: Study, trials: int, timeout: float | None, index: int, device: str | None, on_trial: Callable[[dict], None]
) -> None:
    """Run trials of the study in this process until it has `trials` finished ones (or `timeout` passed)."""
    import optuna

    from rnnctl.tasks import get_task

    cfg = load_config(study.config)
    state = optuna.trial.TrialState
    with quiet():
        if study.grid is not None:  # a sweep: every combination once, in Optuna's grid order
            sampler = optuna.samplers.GridSampler(study.grid, seed=0)
            s = study.load(sampler=sampler, pruner=optuna.pruners.NopPruner())
            if sampler.is_exhausted(s) and not s.get_trials(deepcopy=False, states=(state.WAITING,)):
                return
            callbacks = []  # the grid sampler stops the study when every point is taken
        else:
            seed = (cfg.train.seed * 7919 + len(study.load().trials) * 31 + index) % 2**32
            sampler = optuna.samplers.TPESampler(seed=seed)  # a resumed study samples anew, not the same values
            s = study.load(sampler=sampler, pruner=make_pruner(study.spec["pruner"], cfg.train.epochs, trials))
            if finished(s) >= trials:
                return
            callbacks = [
                optuna.study.MaxTrialsCallback(trials, states=(state.COMPLETE, state.PRUNED)),
                _FailuresInARow(MAX_FAILED_IN_A_ROW),
            ]
        get_task(cfg.task)  # the task imports before any trial's clock starts
        s.optimize(
            Objective(study, trials, device, on_trial),
            timeout=timeout,
            catch=(_Failed, _Skipped),  # a trial that failed on its own is recorded; the study goes on
            callbacks=callbacks,
        )


def run(
    study: Study,
    trials: int,
    jobs: int,
    timeout: float | None,
    devices: list[str] | None,
    on_trial: Callable[[dict], None],
) -> None:
    """The study's trials, by this process (one job) or by `jobs` worker processes (one device each with
    `devices`), each with cpu_count // jobs threads."""
    if trials < 1 or trials > MAX_TRIALS:
        raise ConfigError(f"--trials {trials}: expected 1 to {MAX_TRIALS:,}")
    slots = devices or [None] * jobs
    if len(slots) == 1:
        worker(study, trials, timeout, 0, slots[0], on_trial)
        return
    threads = max((os.cpu_count() or 1) // len(slots), 1)
    logs = study.folder / "logs"
    logs.mkdir(exist_ok=True)
    procs = []
    for i, device in enumerate(slots):
        cmd = [sys.executable, "-m", "rnnctl.cli", "search-worker", str(study.folder), "--trials", str(trials),
               "--index", str(i)]  # fmt: skip
        if timeout is not None:
            cmd += ["--timeout", f"{timeout}s"]
        if device is not None:
            cmd += ["--device", device]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        log = (logs / f"{stamp}-worker-{i}.log").open("w", encoding="utf-8")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    seen = {t.number for t in _done_trials(study)}
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(1.0)
            for t in _done_trials(study):
                if t.number not in seen:
                    seen.add(t.number)
                    on_trial(trial_row(t))
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            for p, _ in procs:  # SIGTERM reached this process alone; Ctrl-C at a terminal reached every worker
                _signal(p, signal.SIGTERM)
        for p, _ in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for _, log in procs:
            log.close()
    for t in _done_trials(study):
        if t.number not in seen:
            on_trial(trial_row(t))
    bad = [(i, p.returncode) for i, (p, _) in enumerate(procs) if p.returncode not in (0, None)]
    if bad:
        i, code = bad[0]
        line = _last_error(logs, i)
        raise RunError(f"search worker {i} exited with code {code}{': ' + line if line else ''} (see {logs}/)")


def _signal(p: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if p.poll() is None:
            p.send_signal(sig)


def _last_error(logs: Path, i: int) -> str | None:
    files = sorted(logs.glob(f"*-worker-{i}.log"))
    if not files:
        return None
    lines = [
        ln for ln in files[-1].read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("error: ")
    ]
    return lines[-1][7:] if lines else None


def _done_trials(study: Study) -> list:
    import optuna

    with quiet():
        s = study.load()
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return [t for t in s.get_trials(deepcopy=False, states=done) if not t.system_attrs.get(SKIPPED)]


def trial_row(t) -> dict[str, Any]:
    seconds = (
        (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    )
    return {
        "number": t.number, "status": STATES.get(t.state.name, t.state.name.lower()), "value": t.value,
        "params": dict(t.params), "seconds": seconds, "run": t.user_attrs.get("run"), "host": t.user_attrs.get("host"),
        "error": t.user_attrs.get("error"), "device": t.user_attrs.get("device"),
    }  # fmt: skip


# -- the result -----------------------------------------------------------------------------------


def summarize(study: Study) -> dict[str, Any]:
    """trials.csv, best.yaml (the best trial's resolved config, for `rnnctl train` as is) and the plots;
    returns what the CLI shows."""
    from rnnctl import plots

    with quiet():
        s = study.load()
        trials = [t for t in s.get_trials(deepcopy=False) if not t.system_attrs.get(SKIPPED)]
    rows = [trial_row(t) for t in trials]
    keys = list(study.spec["space"])
    metric = study.spec["metric"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "status", metric, *keys, "seconds", "run", "host"])
    for r in rows:
        w.writerow([r["number"], r["status"], r["value"], *(r["params"].get(k) for k in keys), r["seconds"],
                    r["run"], r["host"]])  # fmt: skip
    atomic_write(study.folder / "trials.csv", buf.getvalue())
    complete = [r for r in rows if r["status"] == "completed" and r["value"] is not None]
    best = None
    if complete:
        pick = max if study.spec["direction"] == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
        overrides = [f"{k}={v}" for k, v in best["params"].items()]
        cfg = load_config(study.config, overrides).to_dict()
        cfg["name"] = f"{study.name}-best"
        header = (
            f"# The best trial ({best['number']}) of study {study.name}: {metric} {best['value']:.4f}.\n"
            f"# Train it with: rnnctl train {study.folder / 'best.yaml'}\n"
        )
        atomic_write(study.folder / "best.yaml", header + dump_yaml(cfg))
    drawn = plots.study(s, study.folder, metric) if complete else []
    return {
        "name": study.name, "dir": str(study.folder), "metric": metric, "direction": study.spec["direction"],
        "trials": rows, "best": best, "plots": drawn, "storage": shown_url(study.storage_url()),
        "best_yaml": str(study.folder / "best.yaml") if best else None,
    }  # fmt: skip

"""Run folders: the only module that knows their layout. Every path and every write of a run goes through
`RunFolder`, so rank-0-only writing, a lock or a new file is one change here.

A run folder, `runs/<YYYYmmdd-HHMMSS>-<name>/`:
    config.yaml          resolved config + `derived` (what the data determined)
    run.json             id, task, status, command, versions, seed, git commit, best epoch, test metrics
    metrics.jsonl/.csv   one row per epoch (and per evaluation point inside an epoch)
    steps.csv            loss and gradient norm of every optimizer step
    checkpoints/         last.pt, best.pt
    eval/                results of evaluations (`<split>-<checkpoint>.json`)
    forecast/            `forecast-<N>.json/.csv/.png` of a series run
    plots/               PNG figures drawn from the files above
    report.html          `rnnctl report`: the run on one self-contained page
    tensorboard/         TensorBoard events (`log.tensorboard: true`)
    mlflow/              the local MLflow store (`log.mlflow: true` without `log.mlflow_uri`): mlflow.db, artifacts/
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import io
import json
import os
import platform
import re
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from rnnctl import __version__
from rnnctl.config import MISSING, lookup, plain
from rnnctl.errors import RunError, RunFileWarning, StorageError, first_line
from rnnctl.locks import FolderLock, alive
from rnnctl.tasks import task_names

RUNS_ENV = "RNNCTL_RUNS"
CHECKPOINT_FORMAT = "rnnctl-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS = ("best", "last")
CHECKPOINT_KEYS = {  # what every training checkpoint holds, and the type of each
    "task": str, "config": dict, "meta": dict, "model": dict, "optimizer": dict, "epoch": int, "step": int,
    "best": dict, "schedule": dict, "rng": dict,
}  # fmt: skip
REPORT = "report.html"  # `rnnctl report`'s page, in a run, sweep or study folder
STATUSES = ("submitted", "running", "completed", "failed", "interrupted")  # recorded; `runs` adds pruned, died
LOCK = ".lock"  # in a run or sweep folder: who writes it now (host, pid, heartbeat)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # atomically written files get the permissions a plain open() would give them


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing `path` (full disk, read-only, permissions) into one line naming both."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        if e.errno == errno.ENOSPC:
            reason += " (free some space, then `rnnctl train --resume` continues the run)"
        raise StorageError(f"{path}: cannot write: {reason}") from None


def now() -> str:
    """The local time with its offset, as run records write it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


GROUPS = ("sweeps", "studies")  # folders of runs/ whose members are runs too: runs/<group>/<name>/runs/<run>


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV) or "runs")  # set but empty: as if unset, not the current folder


def _named(run_id: str, name: str) -> bool:
    """Whether a run id (`20261123-101500-names_tiny`, `...-names_tiny-2`) is of a run named `name`."""
    rest = re.sub(r"^\d{8}-\d{6}-", "", run_id)
    return rest != run_id and bool(rest == safe_name(name) or re.fullmatch(re.escape(safe_name(name)) + r"-\d+", rest))


def safe_name(name: str) -> str:
    """A name as it appears in folder names: letters, digits and -_. only."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "run"


def new_folder(root: Path, name: str, now: dt.datetime | None = None, what: str = "run") -> Path:
    """A new, empty, timestamped folder under `root`; never reuses one (same second: -2, -3, ...)."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    safe = safe_name(name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = root / f"{stamp}-{safe}{'' if n == 1 else f'-{n}'}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise RunError(
            f"runs folder {root} (${RUNS_ENV} or ./runs): cannot create a {what} folder: {e.strerror or e}"
        ) from None
    raise RunError(f"{root}: could not create a {what} folder for {stamp}-{safe}")


# -- files ---------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one. The
    rename replaces a symbolic link planted at `path` instead of writing through it."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~UMASK)  # mkstemp makes 0600 files
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def append_text(path: Path, text: str) -> None:
    """Append to a file, never through a symbolic link (O_NOFOLLOW)."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def table_text(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text, quoted where needed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True (a checkpoint holds tensors and plain data and never runs code), on the CPU."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's weights-only unpickler raises many kinds on foreign or damaged bytes
        first = first_line(e)
        raise RunError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first[:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not an rnnctl checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise RunError(
            f"{path}: checkpoint format version {ckpt.get('version')}, this rnnctl reads {CHECKPOINT_VERSION}"
        )
    return ckpt


# -- one run -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """What run.json records of the software a run ran on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "rnnctl": __version__}


def git_commit() -> str | None:
    """The commit of rnnctl's own source, when it runs from a git checkout (an editable install)."""
    src = Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not top or Path(top).resolve() != src:
            return None  # an installed copy inside someone else's repository: that commit is not rnnctl's
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("-dirty" if dirty else "") if out else None


class RunFolder:
    """One run's folder: its paths, and every read and write of its files."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, name: str, root: Path | None = None, now: dt.datetime | None = None) -> RunFolder:
        """A new, empty run folder under the runs root."""
        return cls(new_folder(root or runs_root(), name, now))

    @classmethod
    def resolve(cls, ref: str, root: Path | None = None, latest: str = "completed") -> RunFolder:
        """A run from its id (folder name, or a unique prefix; sweep members too), a path, or `latest`: the
        newest completed run (`latest="started"`: the newest run, whatever its state, as a resume wants)."""
        root = root or runs_root()
        if ref == "latest":
            runs = all_runs(root)
            done = runs if latest == "started" else [r for r in runs if r.info().get("status") == "completed"]
            if not done:
                newest = f" (the newest, {runs[-1].id}, is {runs[-1].info().get('status')})" if runs else ""
                kind = "runs" if latest == "started" else "completed runs"
                raise RunError(f"no {kind} in {root}/ yet{newest}: train one with `rnnctl train CONFIG`, or name a run")
            return done[-1]
        path = Path(ref).expanduser()
        if path.is_dir():
            if not cls(path).exists():
                raise RunError(f"{path}: not a run folder (no run.json)")
            return cls(path)
        if (candidate := cls(root / ref)).exists():
            return candidate
        runs = all_runs(root)
        exact = [r for r in runs if r.id == ref]
        matches = exact or [r for r in runs if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RunError(f"run id {ref!r} is ambiguous in {root}/: {', '.join(r.id for r in matches[:5])}")
        named = [r for r in runs if _named(r.id, ref)]  # `names_tiny`: the newest run of that name
        done = named if latest == "started" else [r for r in named if r.info().get("status") == "completed"]
        if done:
            return done[-1]
        if named:
            raise RunError(
                f"no completed run named {ref!r} in {root}/ (the newest, {named[-1].id}, is "
                f"{named[-1].info().get('status')}): give its id to use it anyway"
            )
        raise RunError(f"unknown run {ref!r}: no such folder, and no run id or name in {root}/ (see `rnnctl runs`)")

    @property
    def sweep(self) -> str | None:
        """The sweep or search study this run is a member of: runs/sweeps/<sweep>/runs/<run>, or
        runs/studies/<study>/runs/<run>."""
        parent = self.path.parent
        member = parent.name == "runs" and parent.parent.parent.name in GROUPS
        return parent.parent.name if member else None

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def _file(self, *parts: str) -> Path:
        """A path inside the run folder to write; refuses one that goes through a symbolic link out of it."""
        path = self.path.joinpath(*parts)
        for p in [*reversed(path.relative_to(self.path).parents), path.relative_to(self.path)]:
            if str(p) != "." and (self.path / p).is_symlink():
                raise StorageError(
                    f"{self.path / p}: a symbolic link inside the run folder: rnnctl does not write through it"
                )
        return path

    # -- the lock: one writer at a time ---------------------------------------------------------

    def lock(self, force: bool = False) -> FolderLock:
        """Take the folder's lock (see locks.FolderLock); RunError naming the holder when another process has it."""
        return FolderLock(self.path / LOCK).acquire(force)

    # -- the record: config.yaml and run.json ----------------------------------------------------

    def write_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        text = yaml.safe_dump({**config, "derived": derived}, sort_keys=False, allow_unicode=True)
        atomic_write(self._file("config.yaml"), text)

    def config_text(self) -> str:
        return (self.path / "config.yaml").read_text(encoding="utf-8")

    def config(self) -> dict[str, Any]:
        """config.yaml as plain data ({} when it is missing or not a mapping)."""
        try:
            data = yaml.safe_load(self.config_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_info(self, info: dict[str, Any]) -> None:
        write_json(self._file("run.json"), info)

    def read_info(self) -> dict[str, Any]:
        """run.json as written; RunError when it is missing or broken."""
        info = read_json(self.path / "run.json")
        if not isinstance(info, dict):
            raise RunError(f"{self.path / 'run.json'}: expected a JSON object, got {type(info).__name__}")
        return info

    def info(self) -> dict[str, Any]:
        """run.json for listing: status `died` for a run whose process is gone, `unreadable` for a broken file."""
        try:
            info = self.read_info()
        except RunError:
            return {"id": self.id, "status": "unreadable"}
        info["id"] = self.id  # the folder is the truth (a copied or renamed run)
        if self.sweep:
            info["sweep"] = self.sweep
        if info.get("status") == "running" and not alive(info.get("pid"), info.get("host")):
            info["status"] = "died"  # killed without a chance to record it (SIGKILL, power loss)
        return info

    # -- a run trained as a Slurm job (rnnctl.slurm) -------------------------------------------------

    @property
    def slurm_dir(self) -> Path:
        """submitit's folder: the job's pickled callable, its result and its log (`<job id>_0_log.out`)."""
        return self._file("slurm")

    def write_job(self, job: dict[str, Any]) -> None:
        """slurm/job.json: the job that trains the run (id, log, cluster); rewritten by a new submission."""
        write_json(self._file("slurm", "job.json"), job)

    def job(self) -> dict[str, Any] | None:
        """slurm/job.json; None for a run never submitted to Slurm (or a broken file)."""
        try:
            job = read_json(self.path / "slurm" / "job.json")
        except RunError:
            return None
        return job if isinstance(job, dict) else None

    def best_val(self, info: dict[str, Any]) -> dict[str, Any]:
        """Every validation metric at the run's best point (`info`: its run.json); {} before its first validation."""
        kept = info.get("best_val")
        return kept if isinstance(kept, dict) else {}

    def changes(self) -> list[str]:
        """What the run changed from the config file it was started from, `key=value` each: the overrides
        run.json records (--set, --epochs, a group's values, and its resumes' --epochs), valued as
        config.yaml resolved them; a later setting of a key wins."""
        try:
            info = self.read_info()
        except RunError:
            return []
        history = info.get("history") if isinstance(info.get("history"), list) else []
        settings = [info.get("overrides"), *(h.get("overrides") for h in history if isinstance(h, dict))]
        texts: dict[str, str] = {}
        for items in settings:
            for item in items if isinstance(items, list) else []:
                key, sep, value = str(item).partition("=")
                if sep and key.strip():
                    texts.pop(key.strip(), None)
                    texts[key.strip()] = value
        config = self.config()
        return [
            f"{key}={plain(value)}" if (value := lookup(config, key)) is not MISSING else f"{key}={text}"
            for key, text in texts.items()
        ]

    # -- metrics.jsonl, metrics.csv, steps.csv ---------------------------------------------------
    # Appended as training goes: a crash mid-append can leave a torn last line. Readers skip it and say so;
    # a resume rewrites both files without it.

    def append_row(self, row: dict[str, Any]) -> None:
        """One epoch's (or evaluation point's) row: appended to metrics.jsonl; metrics.csv rewritten from it."""
        append_text(self._file("metrics.jsonl"), json.dumps(row) + "\n")
        self._write_metrics_csv(self.rows())

    def rows(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows. A torn last line is skipped with a warning; any other bad row is a RunError."""
        path = self.path / "metrics.jsonl"
        lines = _read_lines(path)
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("step"), int)
                or not isinstance(row.get("epoch"), int)
            ):
                if n == len(lines):  # a crash in the middle of the last append
                    _warn(f"{path}: line {n} is incomplete (an interrupted write): skipped")
                    continue
                raise RunError(f"{path}: line {n}: expected a JSON object with an integer epoch and step")
            rows.append(row)
        return rows

    def _write_metrics_csv(self, rows: list[dict[str, Any]]) -> None:
        # the CSV is the numeric table; text (a sample, a predicted string) stays in the JSONL
        columns = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, str)))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self._file("metrics.csv"), out.getvalue())

    def append_steps(self, rows: list[dict[str, Any]]) -> None:
        """steps.csv: the training loss and the gradient norm before clipping of every optimizer step."""
        path = self._file("steps.csv")
        head = "" if path.exists() else "step,loss,grad_norm\n"
        append_text(path, head + "".join(f"{r['step']},{r['loss']!r},{r['grad_norm']!r}\n" for r in rows))

    def steps(self) -> list[dict[str, float]]:
        """steps.csv's rows; a torn or damaged line is skipped with a warning."""
        path = self.path / "steps.csv"
        lines = _read_lines(path)[1:]
        out, bad = [], []
        for n, line in enumerate(lines, 2):
            fields = line.split(",")
            try:
                if len(fields) != 3:
                    raise ValueError
                out.append({"step": int(fields[0]), "loss": float(fields[1]), "grad_norm": float(fields[2])})
            except ValueError:
                if line.strip():
                    bad.append(n)
        if bad:
            _warn(f"{path}: {len(bad)} damaged line(s) skipped (first: line {bad[0]})")
        return out

    def truncate(self, step: int) -> list[dict[str, Any]]:
        """Drop rows logged after `step` (the part of an unfinished epoch a resume trains again) and any torn
        line; returns the rows kept."""
        rows = [r for r in self.rows() if r["step"] <= step]
        atomic_write(self._file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        self._write_metrics_csv(rows)
        if (self.path / "steps.csv").exists():
            steps = [r for r in self.steps() if r["step"] <= step]
            text = "".join(f"{r['step']},{r['loss']!r},{r['grad_norm']!r}\n" for r in steps)
            atomic_write(self._file("steps.csv"), "step,loss,grad_norm\n" + text)
        return rows

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint_path(self, name: str) -> Path:
        if name not in CHECKPOINTS:
            raise RunError(f"--checkpoint {name!r}: expected best or last")
        return self.path / "checkpoints" / f"{name}.pt"

    def has_checkpoint(self, name: str) -> bool:
        return self.checkpoint_path(name).is_file()

    def save_checkpoint(self, names: list[str], state: dict[str, Any]) -> None:
        """Serialize once, write atomically under each name (last and, on a new best, best)."""
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buf)
        for name in names:
            atomic_write(self._file("checkpoints", f"{name}.pt"), buf.getvalue())

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        """A checkpoint of this run, checked to be one rnnctl wrote for training (keys and their types)."""
        path = self.checkpoint_path(name)
        ckpt = load_checkpoint(path)
        for key, kind in CHECKPOINT_KEYS.items():
            if key not in ckpt:
                raise RunError(f"{path}: not a training checkpoint of rnnctl: no {key!r}")
            if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool) and kind is int:
                raise RunError(f"{path}: {key!r} is a {type(ckpt[key]).__name__}, expected {kind.__name__}")
        for key in ("model", "trained") if "trained" in ckpt else ("model",):  # trained: under train.ema's average
            if not isinstance(ckpt[key], dict):
                raise RunError(f"{path}: {key!r} is a {type(ckpt[key]).__name__}, expected dict")
            bad = next(
                (k for k, v in ckpt[key].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None
            )
            if bad is not None:
                raise RunError(f"{path}: {key} weights: {bad!r} is not a named tensor")
        if ckpt["epoch"] < 0 or ckpt["step"] < 0:
            raise RunError(f"{path}: epoch {ckpt['epoch']}, step {ckpt['step']}: expected counts >= 0")
        return ckpt

    # -- eval/, forecast/, plots/, tensorboard/, mlflow/ ----------------------------------------

    def eval_path(self, split: str, checkpoint: str) -> Path:
        return self.path / "eval" / f"{split}-{checkpoint}.json"

    def write_eval(self, split: str, checkpoint: str, report: dict[str, Any]) -> Path:
        path = self._file("eval", f"{split}-{checkpoint}.json")
        write_json(path, report)
        return path

    def read_eval(self, split: str, checkpoint: str) -> dict[str, Any] | None:
        """An evaluation report, or None when that evaluation was never written."""
        path = self.eval_path(split, checkpoint)
        if not path.exists():
            return None
        report = read_json(path)
        if not isinstance(report, dict):
            raise RunError(f"{path}: expected a JSON object, got {type(report).__name__}")
        return report

    def write_forecast(self, steps: int, result: dict[str, Any], header: list[str], rows: list[list[Any]]) -> dict:
        """forecast-<steps>.json and .csv; returns the paths of those and of the .png to draw."""
        paths = {ext: self._file("forecast", f"forecast-{steps}.{ext}") for ext in ("json", "csv", "png")}
        write_json(paths["json"], result)
        atomic_write(paths["csv"], table_text(header, rows))
        return paths

    def plot_path(self, stem: str) -> Path:
        path = self._file("plots", f"{stem}.png")
        with writing(path.parent):
            path.parent.mkdir(exist_ok=True)
        return path

    def plots(self) -> list[Path]:
        return sorted((self.path / "plots").glob("*.png"))

    def forecasts(self) -> list[Path]:
        """forecast-<N>.json of every forecast written, shortest horizon first (its .png beside it)."""
        found = (self.path / "forecast").glob("forecast-*.json")
        return sorted(found, key=lambda p: (len(p.stem), p.stem))

    @property
    def report_path(self) -> Path:
        return self._file(REPORT)

    @property
    def tensorboard_dir(self) -> Path:
        return self._file("tensorboard")

    def mlflow_store(self) -> tuple[str, str]:
        """The local MLflow store: its tracking URI (SQLite: MLflow 3 refuses a new file store) and the
        artifact location, both under RUN/mlflow (created)."""
        folder = self._file("mlflow")
        with writing(folder):
            folder.mkdir(exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _read_lines(path: Path) -> list[str]:
    """A run file's lines ([] when it does not exist); RunError when it is not UTF-8 text."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e.strerror or e}") from None


def _warn(message: str) -> None:
    warnings.warn(RunFileWarning(message), stacklevel=3)


# -- many runs -----------------------------------------------------------------------------------


def all_runs(root: Path | None = None) -> list[RunFolder]:
    """Run folders under the root and the members of its sweeps and studies (`sweeps/*/runs/*`,
    `studies/*/runs/*`), oldest first: by the second in the folder name, then by the exact start."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir()]
    for group in GROUPS:
        if (root / group).is_dir():
            folders += [
                p
                for s in (root / group).iterdir()
                if (s / "runs").is_dir()
                for p in (s / "runs").iterdir()
                if p.is_dir()
            ]
    runs = [RunFolder(p) for p in folders]
    runs = [r for r in runs if r.exists()]
    created = {r: r.info().get("created_ns") for r in runs}

    def started(r: RunFolder) -> tuple[str, int, str]:
        ns = created[r]
        return r.id[:15], ns if isinstance(ns, int) else 0, r.id

    return sorted(runs, key=started)


def list_runs(task: str | None = None, status: str | None = None, sort: str = "created") -> list[dict[str, Any]]:
    """run.json of every run, filtered; sorted by start, by best validation metric (best first), or duration."""
    if sort not in ("created", "best", "duration"):
        raise RunError(f"--sort {sort!r}: expected created, best or duration")
    shown = (*STATUSES, "pruned", "died", "unreadable")  # what `runs` can show in its status column
    if status is not None and status not in shown:
        raise RunError(f"--status {status!r}: expected one of {', '.join(shown)}")
    if task is not None and task not in task_names():
        raise RunError(f"--task {task!r}: expected one of {', '.join(task_names())}")
    infos = [(r, r.info()) for r in all_runs()]
    infos = [
        {**i, "changes": r.changes(), "best_val": r.best_val(i), **_job_id(r)}
        for r, i in infos
        if (task is None or i.get("task") == task) and (status is None or i.get("status") == status)
    ]
    if sort == "duration":
        infos.sort(key=lambda i: -(i.get("duration") or 0))
    elif sort == "best":

        def rank(i: dict[str, Any]) -> tuple[int, str, float]:
            """Runs of one metric together (a loss never ranks against an accuracy), best first within it."""
            metric, value, mode = shown_best(i)
            if value is None:
                return 1, "", 0.0
            return 0, metric, value if mode == "min" else -value

        infos.sort(key=rank)
    return infos


def _job_id(run: RunFolder) -> dict[str, str]:
    job = run.job()
    return {"job_id": str(job["job_id"])} if job and job.get("job_id") else {}


def shown_best(info: dict[str, Any]) -> tuple[str, float | None, str]:
    """What a run list shows of a run's best point: (metric, value, "min" or "max"). The metric that picked it,
    but for a regressor (picked by its loss in scaled units, logging `val_mse`) its MSE in the data's units,
    as a sweep ranks it; `info` is run.json with `best_val` (`RunFolder.best_val`)."""
    best = info.get("best") if isinstance(info.get("best"), dict) else {}
    metric, value = str(best.get("metric") or "val_loss"), best.get("value")
    mse = (info.get("best_val") or {}).get("val_mse")
    if metric == "val_loss" and isinstance(mse, (int, float)):
        return "val_mse", float(mse), "min"
    return metric, float(value) if isinstance(value, (int, float)) else None, str(best.get("mode") or "min")


def compare_folder(count: int) -> Path:
    """A new folder for one `rnnctl compare`: `<runs>/compare/<time>-<count>-runs/`."""
    return new_folder(runs_root() / "compare", f"{count}-runs", what="compare")

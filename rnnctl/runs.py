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
    tensorboard/         TensorBoard events (`log.tensorboard: true`)
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from rnnctl.errors import RunError

RUNS_ENV = "RNNCTL_RUNS"
CHECKPOINT_FORMAT = "rnnctl-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS = ("best", "last")
STATUSES = ("running", "completed", "failed", "interrupted")


def now() -> str:
    """The local time with its offset, as run records write it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


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
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first[:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not an rnnctl checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise RunError(
            f"{path}: checkpoint format version {ckpt.get('version')}, this rnnctl reads {CHECKPOINT_VERSION}"
        )
    return ckpt


# -- one run -------------------------------------------------------------------------------------


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
    def resolve(cls, ref: str, root: Path | None = None) -> RunFolder:
        """A run from its id (folder name, or a unique prefix), a path, or `latest`."""
        root = root or runs_root()
        if ref == "latest":
            runs = all_runs(root)
            if not runs:
                raise RunError(f"no runs in {root}/ yet (train one with `rnnctl train CONFIG`)")
            return runs[-1]
        path = Path(ref).expanduser()
        if path.is_dir():
            if not cls(path).exists():
                raise RunError(f"{path}: not a run folder (no run.json)")
            return cls(path)
        if (candidate := cls(root / ref)).exists():
            return candidate
        matches = [r for r in all_runs(root) if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RunError(f"run id {ref!r} is ambiguous in {root}/: {', '.join(r.id for r in matches[:5])}")
        raise RunError(f"unknown run {ref!r}: no such folder, and no run id in {root}/ (see `rnnctl runs`)")

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    # -- the record: config.yaml and run.json ----------------------------------------------------

    def write_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        text = yaml.safe_dump({**config, "derived": derived}, sort_keys=False, allow_unicode=True)
        atomic_write(self.path / "config.yaml", text)

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
        write_json(self.path / "run.json", info)

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
        info.setdefault("id", self.id)
        if info.get("status") == "running" and not _alive(info.get("pid"), info.get("host")):
            info["status"] = "died"  # killed without a chance to record it (SIGKILL, power loss)
        return info

    # -- metrics.jsonl, metrics.csv, steps.csv ---------------------------------------------------

    def append_row(self, row: dict[str, Any]) -> None:
        """One epoch's (or evaluation point's) row: appended to metrics.jsonl; metrics.csv rewritten from it."""
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self._write_metrics_csv(self.rows())

    def rows(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _write_metrics_csv(self, rows: list[dict[str, Any]]) -> None:
        # the CSV is the numeric table; text (a sample, a predicted string) stays in the JSONL
        columns = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, str)))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path / "metrics.csv", out.getvalue())

    def append_steps(self, rows: list[dict[str, Any]]) -> None:
        """steps.csv: the training loss and the gradient norm before clipping of every optimizer step."""
        path = self.path / "steps.csv"
        new = not path.exists()
        with path.open("a", encoding="utf-8") as f:
            if new:
                f.write("step,loss,grad_norm\n")
            f.writelines(f"{r['step']},{r['loss']!r},{r['grad_norm']!r}\n" for r in rows)

    def steps(self) -> list[dict[str, float]]:
        path = self.path / "steps.csv"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        return [
            {"step": int(s), "loss": float(lo), "grad_norm": float(g)}
            for s, lo, g in (ln.split(",") for ln in lines if ln)
        ]

    def truncate(self, step: int) -> list[dict[str, Any]]:
        """Drop rows logged after `step` (the part of an unfinished epoch a resume trains again); returns the rest."""
        rows = [r for r in self.rows() if r["step"] <= step]
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        self._write_metrics_csv(rows)
        steps = [r for r in self.steps() if r["step"] <= step]
        if (self.path / "steps.csv").exists():
            (self.path / "steps.csv").unlink()
            self.append_steps(steps)
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
            atomic_write(self.checkpoint_path(name), buf.getvalue())

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path(name))

    # -- eval/, forecast/, plots/, tensorboard/ --------------------------------------------------

    def eval_path(self, split: str, checkpoint: str) -> Path:
        return self.path / "eval" / f"{split}-{checkpoint}.json"

    def write_eval(self, split: str, checkpoint: str, report: dict[str, Any]) -> Path:
        path = self.eval_path(split, checkpoint)
        write_json(path, report)
        return path

    def read_eval(self, split: str, checkpoint: str) -> dict[str, Any] | None:
        """An evaluation report, or None when that evaluation was never written."""
        path = self.eval_path(split, checkpoint)
        return read_json(path) if path.exists() else None

    def write_forecast(self, steps: int, result: dict[str, Any], header: list[str], rows: list[list[Any]]) -> dict:
        """forecast-<steps>.json and .csv; returns the paths of those and of the .png to draw."""
        folder = self.path / "forecast"
        paths = {ext: folder / f"forecast-{steps}.{ext}" for ext in ("json", "csv", "png")}
        write_json(paths["json"], result)
        atomic_write(paths["csv"], table_text(header, rows))
        return paths

    def plot_path(self, stem: str) -> Path:
        folder = self.path / "plots"
        folder.mkdir(exist_ok=True)
        return folder / f"{stem}.png"

    def plots(self) -> list[Path]:
        return sorted((self.path / "plots").glob("*.png"))

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"


def _alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != os.uname().nodename:
        return True  # cannot tell from here: trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- many runs -----------------------------------------------------------------------------------


def all_runs(root: Path | None = None) -> list[RunFolder]:
    """Run folders under the root, oldest first: by the second in the folder name, then by the exact start."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if p.is_dir()]

    def started(r: RunFolder) -> tuple[str, int, str]:
        return r.id[:15], int(r.info().get("created_ns") or 0), r.id

    return sorted((r for r in runs if r.exists()), key=started)


def list_runs(task: str | None = None, status: str | None = None, sort: str = "created") -> list[dict[str, Any]]:
    """run.json of every run, filtered; sorted by start, by best validation metric (best first), or duration."""
    if sort not in ("created", "best", "duration"):
        raise RunError(f"--sort {sort!r}: expected created, best or duration")
    infos = [r.info() for r in all_runs()]
    infos = [
        i for i in infos if (task is None or i.get("task") == task) and (status is None or i.get("status") == status)
    ]
    if sort == "duration":
        infos.sort(key=lambda i: -(i.get("duration") or 0))
    elif sort == "best":

        def rank(i: dict[str, Any]) -> float:
            best = i.get("best") if isinstance(i.get("best"), dict) else {}
            if best.get("value") is None:
                return float("inf")
            return best["value"] if best.get("mode") == "min" else -best["value"]

        infos.sort(key=rank)
    return infos


def compare_folder(count: int) -> Path:
    """A new folder for one `rnnctl compare`: `<runs>/compare/<time>-<count>-runs/`."""
    return new_folder(runs_root() / "compare", f"{count}-runs", what="compare")


def sweeps_root() -> Path:
    return runs_root() / "sweeps"

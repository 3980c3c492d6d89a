"""Run folders: create, resolve an id, checkpoints (atomic), run.json, metrics files.

A run folder, `runs/<YYYYmmdd-HHMMSS>-<name>/`:
    config.yaml          resolved config + `derived` (what the data determined)
    run.json             id, task, status, command, versions, seed, git commit, best epoch, test metrics
    metrics.jsonl/.csv   one row per epoch
    checkpoints/         last.pt, best.pt
    eval/                results of evaluations (`<split>-<checkpoint>.json`)
    plots/               loss.png, accuracy.png, confusion.png
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

from rnnctl.errors import RunError

RUNS_ENV = "RNNCTL_RUNS"
CHECKPOINT_FORMAT = "rnnctl-checkpoint"
CHECKPOINT_VERSION = 1
STATUSES = ("running", "completed", "failed", "interrupted")


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def safe_name(name: str) -> str:
    """A run name as it appears in folder names: letters, digits and -_. only."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "run"


def create_run_dir(root: Path, name: str, now: dt.datetime | None = None) -> Path:
    """A new, empty run folder; never reuses one (two runs in the same second get -2, -3, ...)."""
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
            f"runs folder {root} (${RUNS_ENV} or ./runs): cannot create a run folder: {e.strerror or e}"
        ) from None
    raise RunError(f"{root}: could not create a run folder for {stamp}-{safe}")


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


def write_table(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file (quoted where needed), written atomically."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, out.getvalue())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


# -- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(paths: Path | list[Path], state: dict[str, Any]) -> None:
    """Serialize once, write atomically to each path (last.pt and, on a new best, best.pt)."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buf)
    for path in [paths] if isinstance(paths, Path) else paths:
        atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors and plain data and never runs code."""
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


# -- metrics -------------------------------------------------------------------------------------


class MetricsFiles:
    """The disk logger: appends each epoch's row to metrics.jsonl and rewrites metrics.csv from it."""

    def __init__(self, run_dir: Path):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"

    def start(self, info: dict[str, Any]) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def steps(self, rows: list[dict[str, Any]]) -> None:
        append_steps(self.jsonl.parent, rows)

    def epoch(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.write_csv(read_metrics(self.jsonl.parent))

    def write_csv(self, rows: list[dict[str, Any]]) -> None:
        # the CSV is the numeric table; text (a sample, a predicted string) stays in the JSONL
        columns = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, str)))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.csv, out.getvalue())

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def append_steps(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """steps.csv: the training loss and the gradient norm before clipping of every optimizer step."""
    path = run_dir / "steps.csv"
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write("step,loss,grad_norm\n")
        f.writelines(f"{r['step']},{r['loss']!r},{r['grad_norm']!r}\n" for r in rows)


def read_steps(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "steps.csv"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [
        {"step": int(s), "loss": float(lo), "grad_norm": float(g)} for s, lo, g in (ln.split(",") for ln in lines if ln)
    ]


def truncate_metrics(run_dir: Path, step: int) -> list[dict[str, Any]]:
    """Drop rows logged after `step` (the part of an unfinished epoch a resume trains again); returns the rest."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    MetricsFiles(run_dir).write_csv(rows)
    steps = [r for r in read_steps(run_dir) if r["step"] <= step]
    if (run_dir / "steps.csv").exists():
        (run_dir / "steps.csv").unlink()
        append_steps(run_dir, steps)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- finding runs --------------------------------------------------------------------------------


def is_run(path: Path) -> bool:
    return (path / "run.json").is_file()


def all_runs(root: Path | None = None) -> list[Path]:
    """Run folders under the root, oldest first: by the second in the folder name, then by the exact start."""
    root = root or runs_root()
    if not root.is_dir():
        return []

    def started(p: Path) -> tuple[str, int, str]:
        info = read_run(p)
        return p.name[:15], int(info.get("created_ns") or 0), p.name

    return sorted((p for p in root.iterdir() if p.is_dir() and is_run(p)), key=started)


def list_runs(task: str | None = None, status: str | None = None, sort: str = "created") -> list[dict[str, Any]]:
    """run.json of every run, filtered; sorted by start, by best validation metric (best first), or duration."""
    if sort not in ("created", "best", "duration"):
        raise RunError(f"--sort {sort!r}: expected created, best or duration")
    infos = [read_run(p) for p in all_runs()]
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


def compare_runs(refs: list[str], metric: str | None = None) -> tuple[str, list[dict[str, Any]], Path]:
    """Summaries of several runs on one metric (default: the first run's best-epoch metric), their
    curves drawn to a new folder `<runs>/compare/<time>/` (compare.png, compare.json)."""
    from rnnctl import plots

    if len(refs) < 2:
        raise RunError("compare: give at least two runs")
    dirs = [resolve_run(r) for r in refs]
    infos = [read_run(d) for d in dirs]
    metric = metric or (infos[0].get("best") or {}).get("metric") or "val_loss"
    table, curves = [], []
    for d, info in zip(dirs, infos):
        rows = [r for r in read_metrics(d) if metric in r]
        if not rows:
            raise RunError(
                f"{d.name}: no {metric!r} in its metrics (columns: {', '.join(read_metrics(d)[0]) if read_metrics(d) else 'none'})"
            )
        mode = (info.get("best") or {}).get("mode") or ("min" if metric.endswith("loss") else "max")
        best = (min if mode == "min" else max)(rows, key=lambda r: r[metric])
        test = info.get("test") or {}
        table.append({
            "id": d.name, "task": info.get("task"), "parameters": info.get("parameters"),
            "best": best[metric], "best_epoch": best["epoch"], "final": rows[-1][metric],
            "test": test.get(metric.removeprefix("val_")), "epochs": info.get("epochs_done"),
            "duration": info.get("duration"), "status": info.get("status"),
        })  # fmt: skip
        curves.append((d.name, rows))
    out = create_run_dir(runs_root() / "compare", f"{len(dirs)}-runs")
    plots.compare(curves, metric, out / "compare.png")
    atomic_write(out / "compare.json", json.dumps({"metric": metric, "runs": table}, indent=2) + "\n")
    return metric, table, out


def resolve_run(ref: str, root: Path | None = None) -> Path:
    """A run from its id (folder name, or a unique prefix), a path, or `latest`."""
    root = root or runs_root()
    if ref == "latest":
        runs = all_runs(root)
        if not runs:
            raise RunError(f"no runs in {root}/ yet (train one with `rnnctl train CONFIG`)")
        return runs[-1]
    path = Path(ref).expanduser()
    if path.is_dir():
        if not is_run(path):
            raise RunError(f"{path}: not a run folder (no run.json)")
        return path
    candidate = root / ref
    if candidate.is_dir() and is_run(candidate):
        return candidate
    matches = [p for p in all_runs(root) if p.name.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunError(f"run id {ref!r} is ambiguous in {root}/: {', '.join(p.name for p in matches[:5])}")
    raise RunError(f"unknown run {ref!r}: no such folder, and no run id in {root}/ (see `rnnctl runs`)")


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json, with a status of `died` for a run whose process is gone and `unreadable` for a broken file."""
    try:
        info = read_json(run_dir / "run.json")
    except RunError:
        info = None
    if not isinstance(info, dict):
        return {"id": run_dir.name, "status": "unreadable"}
    info.setdefault("id", run_dir.name)
    if info.get("status") == "running" and not _alive(info.get("pid"), info.get("host")):
        info["status"] = "died"  # killed without a chance to record it (SIGKILL, power loss)
    return info


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

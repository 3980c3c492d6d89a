"""Group folders: the only code that knows the files of a sweep or a search study, as `RunFolder` knows a run's.

runs/sweeps/<name>/ or runs/studies/<name>/: study.json (what was asked), config.yaml (what every member
starts from), study.db (the trials, unless --storage names another), runs/ (the members), logs/ (worker
output), trials.csv, summary.json, best.yaml, the figures (*.png), eval/ and forecast/ (the members as an
ensemble), report.html, slurm/ (its workers' Slurm jobs: job.json, submitit's files and logs), and .lock
(who drives the group now).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from rnnctl.errors import RunError
from rnnctl.locks import FolderLock
from rnnctl.runs import GROUPS, LOCK, REPORT, RunFolder, atomic_write, new_folder, read_json, runs_root
from rnnctl.runs import table_text, write_json

ROOTS = dict(zip(("sweep", "study"), GROUPS))  # a group's kind -> its folder under the runs root
FILES = {  # what each file of a group folder is called
    "spec": "study.json", "config": "config.yaml", "storage": "study.db", "trials": "trials.csv",
    "summary": "summary.json", "best": "best.yaml", "report": REPORT, "lock": LOCK, "job": "slurm/job.json",
}  # fmt: skip
PLOTS = ("summary", "history", "importance", "parallel")


class GroupFolder:
    """A sweep's or a search study's folder: every path in it, and the writes of its files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name, self.runs, self.logs = self.path.name, self.path / "runs", self.path / "logs"
        self.config, self.report_path = self.file("config"), self.file("report")

    @property
    def kind(self) -> str:
        """`sweep` or `study` (a search's), as messages name it."""
        return self.spec["kind"]

    @staticmethod
    def root(kind: str) -> Path:
        return runs_root() / ROOTS[kind]

    @classmethod
    def create(cls, kind: str, name: str | None, stem: str) -> GroupFolder:
        """The folder runs/<kind's root>/<name> (made if new), or a new timestamped one for an unnamed group."""
        if name is None:
            return cls(new_folder(cls.root(kind), stem, what=kind))
        (cls.root(kind) / name).mkdir(parents=True, exist_ok=True)
        return cls(cls.root(kind) / name)

    @classmethod
    def resolve(cls, ref: str, kinds: tuple[str, ...] = ("sweep", "study")) -> GroupFolder:
        """A group from its folder's path or its name (a sweep is tried before a study)."""
        for path in [Path(ref).expanduser(), *(cls.root(kind) / ref for kind in kinds)]:
            if (group := cls(path)).exists() and group.kind in kinds:
                return group
        where = " or ".join(f"{cls.root(k)}/" for k in kinds)
        raise RunError(f"unknown {' or '.join(kinds)} {ref!r}: no {FILES['spec']} there or in {where}")

    @classmethod
    def find(cls, ref: str) -> GroupFolder | None:
        try:
            return cls.resolve(ref)
        except RunError:
            return None

    def exists(self) -> bool:
        return self.file("spec").is_file()

    def lock(self) -> FolderLock:
        """The group's lock: one process drives it at a time (its workers train under their own runs' locks)."""
        return FolderLock(self.file("lock"), what=self.kind).acquire()

    def file(self, what: str) -> Path:
        return self.path / FILES[what]

    def write(self, what: str, data: str | dict[str, Any]) -> Path:
        """A file written whole (JSON for a dict)."""
        (write_json if isinstance(data, dict) else atomic_write)(self.file(what), data)
        return self.file(what)

    def read(self, what: str) -> str | None:
        return self.file(what).read_text(encoding="utf-8") if self.file(what).is_file() else None

    @property
    def spec(self) -> dict[str, Any]:
        """study.json: what was asked (kind, config, --set, grid or space, metric, storage, trials, pruner)."""
        if not hasattr(self, "_spec"):
            spec = read_json(self.file("spec"))
            if not isinstance(spec, dict) or spec.get("kind") not in ROOTS:
                raise RunError(f"{self.file('spec')}: not a group record of rnnctl (no kind sweep or study)")
            self._spec = spec
        return self._spec

    def write_spec(self, spec: dict[str, Any]) -> None:
        made = spec.get("created") or dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.write("spec", {**spec, "created": made})
        self.__dict__.pop("_spec", None)

    @property
    def slurm_dir(self) -> Path:
        """submitit's folder for the group's worker jobs (`sweep --slurm`, `search --slurm`)."""
        return self.file("job").parent

    def job(self) -> dict[str, Any] | None:
        """slurm/job.json: the job array of its workers; None for a group never submitted to Slurm."""
        try:
            job = read_json(self.file("job"))
        except RunError:
            return None
        return job if isinstance(job, dict) else None

    def storage_url(self) -> str:
        return self.spec["storage"] or f"sqlite:///{self.file('storage').resolve()}"

    def summary(self) -> dict[str, Any]:
        return read_json(self.file("summary")) if self.file("summary").is_file() else {}

    def plot_path(self, stem: str) -> Path:
        return self.path / f"{stem}.png"

    def plots(self) -> list[Path]:
        return [p for stem in PLOTS if (p := self.plot_path(stem)).is_file()]

    def member(self, run: str | None) -> RunFolder | None:
        """A member's run folder, or None where it is not here (another machine of a shared group has it)."""
        return RunFolder(self.runs / run) if run and RunFolder(self.runs / run).exists() else None

    def members(self) -> list[RunFolder]:
        """Every member's run folder here, in name order."""
        found = sorted(self.runs.iterdir()) if self.runs.is_dir() else []
        return [RunFolder(p) for p in found if RunFolder(p).exists()]

    def worker_log(self, index: int, new: bool = True) -> Path | None:
        """A new log file for worker `index` (`new=False`: its newest one, if any)."""
        if not new:
            return max(self.logs.glob(f"*-worker-{index}.log"), default=None)
        self.logs.mkdir(exist_ok=True)
        return self.logs / f"{dt.datetime.now():%Y%m%d-%H%M%S}-worker-{index}.log"

    def write_ensemble_eval(self, split: str, stem: str, report: dict[str, Any]) -> Path:
        """eval/<split>-<stem>.json, as a run's eval/<split>-<checkpoint>.json."""
        write_json(path := self.path / "eval" / f"{split}-{stem}.json", report)
        return path

    def write_ensemble_forecast(
        self, steps: int, stem: str, result: dict[str, Any], header: list[str], rows: list[list[Any]]
    ) -> dict[str, Path]:
        """forecast/<stem>-<steps>.json and .csv; returns those and the .png to draw."""
        paths = {ext: self.path / "forecast" / f"{stem}-{steps}.{ext}" for ext in ("json", "csv", "png")}
        write_json(paths["json"], result)
        atomic_write(paths["csv"], table_text(header, rows))
        return paths


def ensemble_stem(checkpoint: str, top: int | None) -> str:
    """`ensemble-best` (every completed member) or `ensemble-best-top3`."""
    return f"ensemble-{checkpoint}" + (f"-top{top}" if top is not None else "")

"""What a group varies: a sweep's grid (every combination) or a search's space (ranges Optuna samples), each
key checked against the config's own validation before anything trains; the metric and its direction."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from rnnctl.config import load_config
from rnnctl.errors import ConfigError, first_line

MAX_MEMBERS = 1000  # combinations in one sweep
MAXIMIZED = ("acc", "accuracy", "f1", "r2", "precision", "recall", "auc")  # other metrics are minimized
NAME_VALUE = 24  # characters of each key and value in a sweep member's name
NAME_MAX = 100  # characters of the whole name: a run folder's name stays far below 255 bytes
_SPEC = re.compile(r"^\s*(choice|uniform|loguniform|int)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Param:
    """One varied config key: `choice(a,b)`, `uniform(lo,hi)`, `loguniform(lo,hi)` or `int(lo,hi[,log])`."""

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
        """The trial's value of this key, as `--set` takes it (floats to 6 significant digits)."""
        if self.kind == "choice":
            return str(trial.suggest_categorical(self.key, list(self.choices)))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log))
        return f"{trial.suggest_float(self.key, self.low, self.high, log=self.kind == 'loguniform'):.6g}"

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
    """A search's space: the config's `search:` section, then the --space options (which win on a key)."""
    params: dict[str, Param] = {}
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigError(f"{config}: search: expected a mapping of config keys to ranges, e.g. optim.lr: ...")
        for key, spec in section.items():
            params[str(key)] = parse_param(str(key), spec, f"{config}: search.{key}")
    for item in items:
        key, sep, spec = item.partition("=")
        params[key.strip()] = parse_param(key, spec if sep else "", f"--space {item}")
    if not params:
        raise ConfigError("search: give at least one --space KEY=RANGE, or a search: section in the config")
    return list(params.values())


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`--grid model.cell=rnn,lstm` -> {"model.cell": ["rnn", "lstm"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    if not grid:
        raise ConfigError("sweep: give at least one --grid key=v1,v2")
    n = math.prod(len(v) for v in grid.values())
    if n > MAX_MEMBERS:
        raise ConfigError(f"--grid: {n:,} combinations are too many for one sweep (at most {MAX_MEMBERS:,})")
    return grid


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every member of a grid, in order: the last key varies fastest."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def check(config: Path, overrides: list[str], grid: dict[str, list[str]] | None, space: list[Param]) -> None:
    """Every grid point, choice and range end passes the config's own validation now, not in member 17."""
    if grid is not None:
        cases = [(m, " ".join(f"{k}={v}" for k, v in m.items()), "--grid") for m in combinations(grid)]
    else:
        cases = [({p.key: v}, f"{p.key}={p.spec}: {v}", "--space") for p in space for v in p.edges()]
    for values, what, option in cases:
        try:
            load_config(config, [*overrides, *(f"{k}={v}" for k, v in values.items())])
        except ConfigError as e:
            raise ConfigError(f"{option} {what}: {first_line(e)}") from None


def direction(metric: str, task_monitor: str, task_mode: str) -> str:
    if not metric.startswith("val_"):
        raise ConfigError(f"--metric {metric}: a group ranks its members on validation: give a val_* metric")
    name = metric.removeprefix("val_")
    if name == task_monitor:
        return "maximize" if task_mode == "max" else "minimize"
    return "maximize" if any(name == m or name.endswith(f"_{m}") for m in MAXIMIZED) else "minimize"  # macro_f1


def member_name(i: int, values: dict[str, str]) -> str:
    """Sweep member i's run name, e.g. `003-cell=lstm-path=b-y.csv`: `[A-Za-z0-9_.=-]`, each value cut to its
    last NAME_VALUE characters (a path's end tells members apart); the index keeps names unique."""
    parts = (f"{key.split('.')[-1][:NAME_VALUE]}={value[-NAME_VALUE:]}" for key, value in values.items())
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", "-".join(parts))
    return re.sub(r"-{2,}", "-", f"{i:03d}-{slug}")[:NAME_MAX].rstrip("-.")

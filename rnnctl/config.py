"""The experiment config: typed sections, YAML loading and dotted `key=value` overrides, the configs
shipped inside the package (rnnctl/configs), found by name, and helpers that read a saved config's values
(`lookup`, `flatten`, `plain`).

Validated once, here, at the edge: past `load_config` code reads `cfg.train.lr`, never a dict.
Each task contributes its own `data` and `model` sections (subclasses of the bases below), so
`config_class(task)` builds the full model for one task and unknown keys are caught everywhere. This
module imports no task: it asks the registry (rnnctl.tasks) for one by name.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from rnnctl import cells
from rnnctl.errors import ConfigError, clip
from rnnctl.tasks import get_task, task_names


DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")  # what train.device and --device accept


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .nan, .inf: errors, not values


class DataConfig(Section):
    path: str | None = None  # file or folder; None: $RNNCTL_DATA/<dataset>, else the packaged copy
    val_fraction: float = Field(0.1, gt=0, lt=1)  # carved from train (seeded); best epoch is chosen on it


class ModelConfig(Section):
    """The model section, handed to the models as one object."""

    cell: str = "gru"  # a name in the cell registry (rnnctl.cells): rnn | lstm | gru | ...
    layers: int = Field(1, ge=1)  # stacked recurrent layers
    hidden_size: int = Field(128, ge=1)  # units of each layer (each direction)
    embedding_size: int = Field(64, ge=1)  # size of the token embedding (tasks that embed tokens)
    bidirectional: bool = False  # also read each sequence backwards (classifiers)
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers and before the output layer
    stepwise: bool = False  # step the cell by hand over time instead of its fused module (slow; for teaching)

    @field_validator("cell")
    @classmethod
    def _known_cell(cls, name: str) -> str:
        if name not in cells.CELLS:
            raise ValueError(
                f"unknown cell {clip(name)}{_suggest(name[:100], cells.names())} (known: {', '.join(cells.names())})"
            )
        return name


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"  # the optimizer
    lr: float = Field(1e-3, gt=0, le=1e3)  # learning rate (the peak of a schedule)
    weight_decay: float = Field(0.0, ge=0)  # L2 penalty (adamw: decoupled weight decay)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd only
    fused: bool = False  # PyTorch's fused kernel: one step over many weights at once (3x over big embeddings)


class ScheduleConfig(Section):
    name: Literal["none", "step", "cosine", "plateau"] = "none"  # how the learning rate changes over training
    warmup_steps: int = Field(0, ge=0)  # linear ramp from 0 to optim.lr over the first steps
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)  # step, plateau: the factor of each decay
    patience: int = Field(2, ge=0)  # plateau: epochs without improvement before a decay
    min_lr: float = Field(0.0, ge=0)  # cosine: where it ends; plateau: the floor


class EarlyStopConfig(Section):
    patience: int | None = Field(None, ge=1)  # stop after this many epochs without improvement; None: never
    min_delta: float = Field(0.0, ge=0)  # smaller changes of the validation metric do not count as improvement


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)  # passes over the training split
    batch_size: int = Field(64, ge=1)  # examples (or parallel streams) per step, over all processes
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm; None: no clipping (norm still logged)
    grad_clip_value: float | None = Field(None, gt=0)  # clip each gradient element to +-value (min-char-rnn: 5)
    eval_every: int | None = Field(None, ge=1)  # also validate and log a row every N steps of each epoch
    checkpoint_every: int | str | None = None  # also last.pt inside epochs: every N >= 1 steps, or a duration: 90s, 10m
    ema: float = Field(0.0, ge=0, lt=1)  # > 0: validation and checkpoints read a moving average of the weights
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)  # learning rate over time
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)  # stop when validation stops improving
    seed: int = Field(0, ge=0, lt=2**32)  # seeds python, numpy (32-bit) and torch
    device: str = "auto"  # auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast around forward and loss
    tf32: bool = True  # CUDA only: TF32 matmuls and cuDNN kernels on GPUs that have them (Ampere+); off: IEEE fp32
    deterministic: bool = False  # torch.use_deterministic_algorithms; on CUDA also cuBLAS workspace, no cuDNN autotune

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        if not DEVICE.fullmatch(name):
            raise ValueError(f"{clip(name)} is not a device (expected auto, cpu, cuda, cuda:N or mps)")
        return name

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _checkpoint_every(cls, value: Any) -> int | str | None:
        if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        duration = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[smhd]\s*", value) if isinstance(value, str) else None
        if duration and float(duration[1]) > 0:  # a unit is required: a bare number counts steps
            return value.strip()
        raise ValueError("expected a number of steps (1 or more) or a duration like 45s, 15m or 2h")


class LogConfig(Section):
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard (extra: rnnctl[tensorboard])
    mlflow: bool = False  # also log params, metrics and status to MLflow (extra: rnnctl[mlflow])
    mlflow_uri: str | None = Field(None, min_length=1)  # MLflow tracking URI; None: a store in RUN/mlflow


SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")  # sbatch --time: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


class SlurmConfig(Section):  # read by `train --slurm` alone; a run on this machine ignores it
    partition: str | None = Field(None, min_length=1)  # sbatch --partition; None: the cluster's default
    time: int | str = 60  # time limit of each job: minutes, or sbatch's "D-HH:MM:SS", "HH:MM:SS" (quoted in YAML)
    nodes: int = Field(1, ge=1)  # machines per job
    gpus_per_node: int = Field(0, ge=0)  # GPUs per machine (sbatch --gpus-per-node); 0: none asked for
    cpus_per_task: int | None = Field(None, ge=1)  # CPU cores of the job's task; None: the cluster's default
    mem: str | None = Field(None, pattern=r"\d+[KMGT]?")  # memory per machine: 16G, 4000M; None: default
    account: str | None = Field(None, min_length=1)  # sbatch --account to charge
    qos: str | None = Field(None, min_length=1)  # sbatch --qos
    signal_delay_s: int = Field(90, ge=1)  # Slurm signals the job this long before its time limit ends
    max_requeues: int = Field(3, ge=0)  # requeues on Slurm's signal (time limit, preemption); then left interrupted
    extra: dict[str, str | int] = {}  # other sbatch options by their long names: {constraint: a100, begin: now+1hour}

    @field_validator("time")
    @classmethod
    def _time_limit(cls, time: int | str) -> int | str:
        if isinstance(time, str) and not SLURM_TIME.fullmatch(time) or _minutes(time) < 1:
            raise ValueError(f"{clip(str(time))} is not a time limit (minutes, or D-HH:MM:SS, HH:MM:SS or MM)")
        return time

    def minutes(self) -> int:
        """The time limit in whole minutes (seconds round up)."""
        return _minutes(self.time)


def _minutes(time: int | str) -> int:
    """sbatch's time forms in whole minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    if isinstance(time, int):
        return time
    days, _, clock = time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, mins, secs = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, mins, secs = parts
    else:
        hours, mins, secs = 0, parts[0], (parts + [0])[1]
    return (int(days or 0) * 24 + hours) * 60 + mins + (secs > 0)


class Config(Section):
    task: str  # what to learn: a name in the task registry (names, charlm, sentiment, ...)
    name: str | None = Field(None, max_length=100)  # run folder suffix; default: the config file's stem
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)  # the jobs of `train --slurm`

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def config_class(task: str) -> type[Config]:
    """The Config model for one task: its own `data` and `model` sections replace the bases."""
    return _config_class(get_task(task))


@functools.cache
def _config_class(spec: Any) -> type[Config]:
    return create_model(
        f"{spec.name.capitalize()}Config",
        __base__=Config,
        data=(spec.data_config, Field(default_factory=spec.data_config)),
        model=(spec.model_config, Field(default_factory=spec.model_config)),
    )


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or the shipped config of that name), apply `key=value` overrides, validate."""
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if (size := path.stat().st_size) > MAX_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is too big for a config (at most {MAX_BYTES:,})")
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join((getattr(e, "problem", None) or str(e)).split())
        problem = re.sub(r"[^\s'\"]{61,}", _cut, problem)  # PyYAML quotes an alias or a tag in full
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (task, data, model, ...), got {type(raw).__name__}")
    raw.pop("derived", None)  # written by rnnctl into a run's config.yaml; informative only
    raw.pop("search", None)  # the space of `rnnctl search` (search.py reads it); a run itself ignores it
    raw.setdefault("name", path.stem)
    return validate(apply_overrides(raw, overrides), source=str(path), overrides=overrides)


# -- the configs shipped with rnnctl -----------------------------------------------------------------


def shipped_configs() -> dict[str, Path]:
    """The configs inside the package by name, top level first: `names_gru`, ..., `smoke/names_tiny` (the
    path under rnnctl/configs without `.yaml`)."""
    root = Path(str(resources.files("rnnctl") / "configs"))
    names = {p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*.yaml")}
    return {name: names[name] for name in sorted(names, key=lambda n: (n.count("/"), n))}


def describe(path: Path) -> str:
    """A config's one-line description: the first line of its leading comment ('' without one)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if text := line.lstrip("#").strip():
            return text
    return ""


def shipped_config(name: str) -> Path:
    """The shipped config called `name` (`.yaml` may be added); a ConfigError names the closest one."""
    shipped = shipped_configs()
    path = shipped.get(name.removesuffix(".yaml"))
    if path is None:
        raise ConfigError(
            f"unknown config {clip(name)}{_suggest(name[:100], shipped)}; `rnnctl config list` shows them"
        )
    return path


def config_path(ref: str | Path) -> Path:
    """The file a CONFIG argument means: the path when something is there, else the shipped config of that name."""
    path = Path(ref)
    if path.exists():
        return path
    shipped = shipped_configs()
    name = str(ref).removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name[:100], list(shipped), n=1, cutoff=0.6)
    hint = (
        f"did you mean the shipped config '{close[0]}'?" if close else "nor a shipped config: see `rnnctl config list`"
    )
    raise ConfigError(f"{path}: config file not found ({hint})")


def copy_shipped(name: str, dest: str | Path | None = None) -> Path:
    """Copy a shipped config as it is (comments kept) to `dest` (a file or a folder; default ./NAME.yaml) and
    return where; an existing file is never overwritten. `dest` ending in `/` is a folder, made if need be."""
    src = shipped_config(name)
    file_name = f"{PurePosixPath(name).name.removesuffix('.yaml')}.yaml"
    if dest is None:
        dest = Path(file_name)
    else:
        folder = str(dest).endswith(("/", os.sep))  # Path("mydir/") forgets the slash: ask the text
        path = Path(dest).expanduser()
        if folder and path.exists() and not path.is_dir():
            raise ConfigError(f"{dest}: a file, not a folder")
        if folder and not path.is_dir():
            try:
                path.mkdir(parents=True)
            except OSError as e:
                raise ConfigError(f"{dest}: cannot make the folder: {e.strerror or e}") from None
        dest = path / file_name if path.is_dir() else path
    try:
        f = dest.open("xb")  # exclusive: fails rather than replace a file, even one made a moment ago
    except FileExistsError:
        raise ConfigError(f"{dest} exists: not overwritten (give another DEST, or remove it first)") from None
    except OSError as e:
        raise ConfigError(f"{dest}: cannot write: {e.strerror or e}") from None
    try:
        with f:
            f.write(src.read_bytes())
    except OSError as e:  # a full disk: no half a config left behind
        dest.unlink(missing_ok=True)
        raise ConfigError(f"{dest}: cannot write: {e.strerror or e}") from None
    return dest


def _cut(match: re.Match) -> str:
    return f"{match[0][:60]}... ({len(match[0]):,} characters)"


# -- YAML with limits --------------------------------------------------------------------------------

MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a bigger file is not one
MAX_DEPTH = 32  # sections nest three deep; deeper would only exhaust the recursion of the loader
MAX_VALUES = 10_000  # scalars, lists and mappings after expanding aliases; a config has about 50


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses, while composing and so before anything is built, nesting deeper than
    MAX_DEPTH and documents that expand to more than MAX_VALUES nodes. Aliases share nodes, so a
    "billion laughs" document is small to load but explodes in whatever walks it (validation, dumping);
    counting each node's expanded size as it is composed catches it in time linear in the file.
    A scalar that matches a YAML type but does not convert (`2001-13-45`, `!!int x`, `!!float`) is a YAML
    error with its line, not a ValueError or IndexError."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if getattr(node, "_size", None) is None:  # an alias inside its own anchor: infinite
                raise ComposerError(
                    None, None, f"alias *{event.anchor[:60]} is inside its own anchor", event.start_mark
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        node._size = 1 + sum(child._size for child in children)
        if node._size > MAX_VALUES:
            raise ComposerError(
                None, None, f"expands to more than {MAX_VALUES:,} values (through aliases?)", node.start_mark
            )
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # PyYAML's constructors trust the resolver: `!!int` alone is an IndexError
            what = clip(node.value) if isinstance(node, yaml.ScalarNode) else f"this {node.id}"
            reason = str(e).split(": ")[0][:80]  # without the repeated value, if any
            problem = f"cannot read {what} as {node.tag.rsplit(':', 1)[-1]}: {reason}"
            raise ConstructorError(None, None, problem, node.start_mark) from None


def parse_duration(text: str | None, option: str = "--timeout") -> float | None:
    """A duration option's value: 90, 90s, 30m, 2h, 1d -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m[1]) <= 0:
        raise ConfigError(f"{option} {text!r}: expected a duration like 90s, 30m or 2h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def load_yaml(text: str) -> Any:
    """One YAML document, safely (plain data only) and within the limits above; yaml.YAMLError if not."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (`train.lr=3e-4`); values are parsed as YAML (`model.cell=lstm`, `data.path=null`)."""
    out = _copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {clip(item)}: expected key=value, e.g. model.cell=lstm")
        try:
            value = load_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML (`data.path=a: b`): the text as it is
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_key(parts)}: {_key(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _copy(value: Any) -> Any:
    """A copy of nested dicts and lists that shares nothing: YAML aliases load as one shared object, and
    `--set train.lr=...` must not change every section that was an alias of `train`."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def validate(raw: dict[str, Any], source: str = "config", overrides: list[str] = ()) -> Config:
    """Validate a plain dict into the task's Config; errors name the dotted key, and where it came from: the
    `--set` that gave it (`overrides`), else `source` (the config file)."""
    task = raw.get("task")
    known = task_names()
    if task is None:
        raise ConfigError(f"{source}: missing key 'task' (one of: {', '.join(known)})")
    if not isinstance(task, str) or task not in known:
        raise ConfigError(
            f"{_source(['task'], source, overrides)}: task: unknown task {clip(task)}"
            f"{_suggest(str(task)[:100], known)} (known: {', '.join(known)})"
        )
    cls = config_class(task)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        lines = [f"{_source(err['loc'], source, overrides)}: {_describe(err, cls)}" for err in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"{source}: and {len(errors) - MAX_ERRORS} more errors")
        raise ConfigError("\n".join(lines)) from None


MAX_ERRORS = 10  # validation errors shown, one line each


def _source(loc: Any, source: str, overrides: list[str]) -> str:
    """Who gave the key at `loc`: the last `--set` of it, of a section above it or of a key inside it (as
    typed, cut if long), else `source`."""
    key = ".".join(str(p) for p in loc)
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return f"--set {item if len(item) <= 60 and item.isprintable() else _key([set_key])}"
    return source


def _describe(err: dict[str, Any], cls: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = _key(loc)
    if err["type"] == "extra_forbidden":
        known = _fields_at(cls, loc[:-1])
        hint = _suggest(loc[-1][:100], known, prefix=".".join(loc[:-1])) or _suggest_anywhere(loc[-1][:100], cls)
        return f"unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") and _fields_at(cls, loc):
        got = err.get("input")
        value = str(got) if isinstance(got, (str, int, float)) and len(str(got)) <= 30 else "..."
        value = value if value.isprintable() and value.strip() else "VALUE"  # an error stays one readable line
        return (
            f"{key} is a section, not a value: set a key inside it, e.g. {key}.{_fields_at(cls, loc)[0]}={value} "
            "(`rnnctl config show CONFIG` shows them all)"
        )
    got = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")  # our own validators' messages stand alone
    msg = re.sub(r" or instance of \w+", "", msg)  # pydantic names its classes: not the user's words
    shown = "" if isinstance(got, dict) or clip(got) in msg else f", got {clip(got)}"
    return f"{key}: {msg}{shown}"


def _key(parts: list[Any]) -> str:
    """A dotted key as a message shows it: on one line (control characters escaped), cut to a short length."""
    text = ".".join(str(p) for p in parts)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:60] + "..."


def _fields_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = cls.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def _keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections and the keys inside them."""
    keys = []
    for name, field in cls.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _keys(field.annotation, f"{prefix}{name}.")
    return keys


def closest_key(word: str, cls: type[BaseModel] = Config) -> str | None:
    """The dotted key inside a section whose last part is `word` or close to it: `epochs` -> `train.epochs`."""
    keys = [k for k in _keys(cls) if "." in k]
    close = difflib.get_close_matches(word, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.75)
    if close:
        return next(k for k in keys if k.rsplit(".", 1)[-1] == close[0])
    started = [k for k in keys if len(word) >= 4 and k.rsplit(".", 1)[-1].startswith(word)]  # hidden: hidden_size
    return started[0] if started else None


def _suggest_anywhere(word: str, cls: type[BaseModel]) -> str:
    key = closest_key(word, cls)
    return f" (did you mean '{key}'?)" if key else ""


def _suggest(word: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- a saved config's values, as plain data -------------------------------------------------------

MISSING = object()


def lookup(config: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a nested config, or MISSING."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"cell": "gru"}} -> {"model.cell": "gru"}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def plain(value: Any) -> str:
    """A config value as it would be written after `--set key=`: null, true, 0.003, lstm, [1, 2]."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)

"""The manual: the generated references leave out no config key and no command option, every page is in the
navigation, the README's links resolve, and nothing a user reads speaks of how the project was made."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer
import yaml
from pydantic import BaseModel

from rnnctl.cli import app
from rnnctl.config import Config, config_class, describe, shipped_configs
from rnnctl.tasks import task_names

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _load_hooks():
    spec = importlib.util.spec_from_file_location("rnnctl_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


@pytest.fixture(scope="module")
def config_page() -> str:
    return hooks.config_reference()


@pytest.fixture(scope="module")
def commands_page() -> str:
    return hooks.command_reference()


def _sections(cls: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The section classes of a config class, by dotted name (`train.schedule`, `model.ngrams`)."""
    found = {}
    for name, field in cls.model_fields.items():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found[name] = candidate
                found.update({f"{name}.{k}": v for k, v in _sections(candidate).items()})
    return found


def _leaves(cls: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Every dotted key of a config class that holds a value, with its field."""
    keys = {}
    for name, field in cls.model_fields.items():
        keys[prefix + name] = field
        inner = _sections(cls).get(name)
        if inner is not None:
            keys.update(_leaves(inner, f"{prefix}{name}."))
    return keys


def _row(page: str, key: str) -> str:
    rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    assert rows, f"config key {key} is missing from the config reference"
    return rows[0]


def _shown(value: object) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _task_sections(page: str) -> tuple[str, dict[str, str]]:
    """The sections common to every task, and each task's own part of the page."""
    common, _, by_task = page.partition("## Task sections")
    return common, dict(re.findall(r"^### (\w+)\n(.*?)(?=^### |\Z)", by_task, re.M | re.S))


def test_the_config_reference_has_every_key_of_every_task_with_its_default(config_page):
    common, tasks = _task_sections(config_page)
    assert sorted(tasks) == task_names()
    for name, field in _leaves(Config).items():
        if name.split(".")[0] not in ("data", "model") and name not in _sections(Config):
            row = _row(common, name)
            assert field.is_required() or _shown(field.get_default(call_default_factory=False)) in row, row
    for task in task_names():
        for name, field in _leaves(config_class(task)).items():
            if name.split(".")[0] in ("data", "model") and "." in name:
                row = _row(tasks[task], name)
                if not field.is_required() and field.default_factory is None:
                    assert _shown(field.default) in row, (task, row)


def test_the_config_reference_shows_real_defaults_not_a_configs_values(config_page):
    assert "| `train.epochs` | int | `10` |" in config_page  # names_gru.yaml trains 25: not the default
    _, tasks = _task_sections(config_page)
    hello, names = tasks["hello"], tasks["names"]
    assert "| `model.cell` | str | `rnn` |" in hello and "| `model.hidden_size` | int | `4` |" in hello
    assert "| `model.cell` | str | `gru` |" in names and "| `model.ngrams.buckets` | int | `65536` |" in names


def _commands(group, path: str = "rnnctl"):
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if hasattr(command, "commands"):
            yield from _commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_the_command_reference_has_every_command_and_option(commands_page):
    root = typer.main.get_command(app)
    sections = dict(re.findall(r"^## (rnnctl[\w ]*)\n(.*?)(?=^## |\Z)", commands_page, re.M | re.S))
    for option in ("--version", "--install-completion", "--show-completion"):
        assert f"`{option}" in sections["rnnctl"], option
    commands = list(_commands(root))
    assert {"rnnctl train", "rnnctl search", "rnnctl config show"} <= {path for path, _ in commands}
    for path, command in commands:
        assert path in sections, f"command {path} is missing from the command reference"
        for param in command.params:
            if getattr(param, "hidden", False):
                assert f"`{param.opts[0]}" not in sections[path], param.opts  # --seed stays out of sight
                continue
            shown = param.opts if param.param_type_name == "option" else [param.metavar]
            for text in shown:
                assert re.search(rf"[` ]{re.escape(text)}[ `,]", sections[path]), f"{path}: {text} is missing"
            if param.help:
                assert " ".join(param.help.split()).replace("|", "\\|") in sections[path], (path, param.opts)


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    site = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(site["nav"])
    written = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    generated = [hooks.CONFIG_PAGE, hooks.COMMANDS_PAGE]
    assert sorted(nav) == sorted(written + generated)
    assert site["hooks"] == ["docs/hooks.py"]


def test_the_readmes_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (REPO / link).exists(), link


HISTORY = [  # words about how the project was made, not about the program
    r"(?<![\w&])#\d+",  # issue numbers (#5); not an HTML entity
    r"\bissues? \d+",
    r"\.\./shared",
    r"\bsessions?\b",
    r"\bthe VM\b",
    r"\bseeds? 0\d\d\b",  # the example scripts the project started from
]


def _user_texts(config_page: str, commands_page: str) -> dict[str, str]:
    texts = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
    texts["mkdocs.yml"] = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for path in [*DOCS.rglob("*.md"), *(REPO / "rnnctl" / "configs").rglob("*.yaml")]:
        texts[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
    texts[hooks.CONFIG_PAGE] = config_page  # the config classes' comments
    texts[hooks.COMMANDS_PAGE] = commands_page  # every command's and option's help
    texts["rnnctl config list"] = "\n".join(describe(path) for path in shipped_configs().values())
    return texts


def test_nothing_a_user_reads_speaks_of_the_projects_history(config_page, commands_page):
    found = []
    for where, text in _user_texts(config_page, commands_page).items():
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in HISTORY:
                if re.search(pattern, line, re.I):
                    found.append(f"{where}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_history_patterns_catch_what_they_are_for():
    for text in ("max pooling (issue #5)", "see ../shared/datasets", "later sessions", "on the VM", "Seed 001's task"):
        assert any(re.search(p, text, re.I) for p in HISTORY), text
    for text in ("#SBATCH --nodes=2", "color: &#123;", "train.seed=1,2,3", "7 of seeds 0-9", "--rng-seed 1"):
        assert not any(re.search(p, text, re.I) for p in HISTORY), text

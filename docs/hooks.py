"""MkDocs hook: the config and command references, generated from the code at every build.

`reference/configs.md` walks the pydantic config classes (rnnctl/config.py and each task's `data` and
`model` sections, found through the task registry); `reference/commands.md` walks the typer app
(rnnctl.cli.app). A key or an option added to the code is in the next build of the manual, with its type,
its default and its help; tests/test_docs.py checks that nothing is left out. The functions below need
no MkDocs: the tests call them directly.
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
import types
from typing import Any, Literal, Union, get_args, get_origin

CONFIG_PAGE = "reference/configs.md"
COMMANDS_PAGE = "reference/commands.md"


def on_files(files, config):
    """Add the two generated pages to the site (MkDocs calls this once per build)."""
    from mkdocs.structure.files import File

    for path, render in ((CONFIG_PAGE, config_reference), (COMMANDS_PAGE, command_reference)):
        files.append(File.generated(config, path, content=render()))
    return files


# -- configs ---------------------------------------------------------------------------------------------


def config_reference() -> str:
    from rnnctl.config import Config, config_class
    from rnnctl.tasks import task_names

    out = [
        "# Config reference",
        "",
        "Every key a config can set, with its type, its default and the values it accepts, generated from the",
        "config classes (`rnnctl/config.py` and each task's `data` and `model` sections). A key left out of a",
        "config takes its default; `rnnctl config show CONFIG` prints a config with every key resolved. How",
        "configs work: [Configs](../configs.md).",
        "",
        "## Top level",
        "",
        *_table(Config, "", sections=False),
    ]
    for name in ("optim", "train", "log", "slurm"):
        out += _section(Config.model_fields[name].annotation, name, level=2)
    out += [
        "## Task sections",
        "",
        "Each task has its own `data` section and its own `model` section; a task's defaults can differ from",
        "another's (`model.cell` is `gru` for `names` and `rnn` for `hello`). Which task does what:",
        "[Tasks and data](../tasks.md).",
        "",
    ]
    for task in task_names():
        cls = config_class(task)
        out += [f"### {task}", ""]
        for name in ("data", "model"):
            out += _section(cls.model_fields[name].annotation, name, level=4)
    return "\n".join(out) + "\n"


def _section(cls: type, prefix: str, level: int) -> list[str]:
    """A heading and a table for one section, then one for each section inside it."""
    out = [f"{'#' * level} `{prefix}`", "", *_table(cls, prefix + ".")]
    for name, field in cls.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is not None:
            out += _section(inner, f"{prefix}.{name}", level + (level < 6))
    return out


def _table(cls: type, prefix: str, sections: bool = True) -> list[str]:
    rows = ["| key | type | default | values | what it does |", "|---|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is not None and not sections:
            continue
        kind = _type(field.annotation)
        default = "required" if field.is_required() else _value(field.get_default(call_default_factory=False))
        if inner is not None and field.default_factory is not None:
            default = "(its keys' defaults)"
        values = _values(field)
        text = _comment(cls, name)
        rows.append(f"| `{prefix}{name}` | {kind} | {default} | {values} | {_escape(text)} |")
    return [*rows, ""]


def _model_in(annotation: Any) -> type | None:
    """The section class a field holds (a section, or a section or null), else None."""
    from pydantic import BaseModel

    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type(annotation: Any) -> str:
    if _model_in(annotation) is not None:
        return "section or null" if type(None) in get_args(annotation) else "section"
    origin = get_origin(annotation)
    if origin is Literal:
        return "str"
    if origin in (Union, types.UnionType):
        parts = [_type(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in get_args(annotation) else "")
    return getattr(annotation, "__name__", str(annotation))


def _value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}


def _values(field) -> str:
    """What a field accepts beyond its type: the choices of a Literal, the bounds of a number or a string."""
    choices = [a for a in (field.annotation, *get_args(field.annotation)) if get_origin(a) is Literal]
    if choices:
        return ", ".join(f"`{c}`" for c in get_args(choices[0]))
    bounds = []
    for item in field.metadata:
        for attr, sign in BOUNDS.items():
            bound = getattr(item, attr, None)
            if bound is not None:
                bounds.append(f"{sign} {bound:g}" if isinstance(bound, float) else f"{sign} {bound}")
    return ", ".join(bounds)


def _comment(cls: type, name: str) -> str:
    """The comment at the end of the line that declares field `name`, from the nearest class that has one."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            text = _field_comments(klass).get(name)
            if text:
                return text
    return ""


def _field_comments(klass: type) -> dict[str, str]:
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = lines[token.start[0] - 1]
            match = re.match(r"    (\w+)\s*:", line)  # a field of the class body, not of a nested block
            if match and token.start[1] > 0:
                text = token.string.lstrip("#").strip()
                comments[match[1]] = re.sub(r"\bNone\b", "null", text)  # what a YAML config writes
    return comments


def _escape(text: str) -> str:
    """Text for a Markdown table cell: `|` does not end the cell, `<unk>` is not a tag, `*` is not emphasis."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


# -- commands --------------------------------------------------------------------------------------------


def command_reference() -> str:
    import typer

    from rnnctl.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="rnnctl")
    out = [
        "# Command reference",
        "",
        "Every command and option as `rnnctl COMMAND --help` shows it, generated from the command-line app",
        "(`rnnctl/cli.py`). What the commands are for, with examples: [Commands](../commands.md).",
        "",
        "## rnnctl",
        "",
        _escape_text(root.help or ""),
        "",
        *_params(root, ctx),
    ]
    out += _commands(root, ctx)
    return "\n".join(out) + "\n"


def visible_commands(group, ctx) -> list[tuple[Any, Any]]:
    """(command, context) for every command the user can call, subcommands of a group included, in help order."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = command.context_class(command, info_name=name, parent=ctx)
        if hasattr(command, "list_commands"):  # a group (typer carries its own copy of click: no isinstance)
            found += visible_commands(command, sub)
        else:
            found.append((command, sub))
    return found


def visible_params(command, ctx) -> list[Any]:
    """The arguments and options `--help` shows, without `--help` itself."""
    return [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]


def _commands(root, ctx) -> list[str]:
    out = []
    for command, sub in visible_commands(root, ctx):
        out += [f"## {sub.command_path}", "", "```", _usage(command, sub), "```", ""]
        out += [_escape_text(command.help or ""), ""]
        out += _params(command, sub)
    return out


def _usage(command, ctx) -> str:
    pieces = [ctx.command_path, "[OPTIONS]"]
    for p in visible_params(command, ctx):
        if p.param_type_name == "argument":
            shown = p.metavar + (" ..." if p.nargs != 1 else "")
            pieces.append(shown if p.required else f"[{shown}]")
    return " ".join(pieces)


def _params(command, ctx) -> list[str]:
    params = visible_params(command, ctx)
    if not params:
        return []
    rows = ["| argument or option | default | what it does |", "|---|---|---|"]
    for p in params:
        if p.param_type_name == "argument":
            name = p.metavar + (" ..." if p.nargs != 1 else "")
        else:
            name = ", ".join(p.opts + p.secondary_opts) + (f" {p.metavar}" if p.metavar and not p.is_flag else "")
        default = ""
        if p.default is not None and not getattr(p, "is_flag", False) and not p.multiple:
            default = (
                f"`{p.default!r}`" if isinstance(p.default, str) and not p.default.isprintable() else f"`{p.default}`"
            )
        rows.append(f"| `{name}` | {default} | {_escape(' '.join((p.help or '').split()))} |")
    return [*rows, ""]


def _escape_text(text: str) -> str:
    """A command's help (its docstring) as Markdown paragraphs."""
    return inspect.cleandoc(text).replace("<", "&lt;").replace("*", "\\*")

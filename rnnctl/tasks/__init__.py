"""The task registry: names -> import paths, each task module imported only when it is asked for.

A task is one module under tasks/ (or anywhere importable) with an object that satisfies
`tasks.base.Task`; `register` adds one, e.g. a user's own task from a plugin module.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from rnnctl.errors import ConfigError

if TYPE_CHECKING:
    from rnnctl.tasks.base import Task

REGISTRY: dict[str, str] = {  # name -> "module:attribute"; the attribute is called to make the task
    "names": "rnnctl.tasks.names:NamesTask",
    "charlm": "rnnctl.tasks.charlm:CharLMTask",
    "hello": "rnnctl.tasks.hello:HelloTask",
    "sine": "rnnctl.tasks.waves:sine",
    "sincos": "rnnctl.tasks.waves:sincos",
    "series": "rnnctl.tasks.series:SeriesTask",
    "sentiment": "rnnctl.tasks.sentiment:SentimentTask",
}


def task_names() -> list[str]:
    return sorted(REGISTRY)


def register(name: str, target: str) -> None:
    """Add (or replace) a task: `target` is "module:attribute", called with no arguments to make it."""
    REGISTRY[name] = target
    get_task.cache_clear()


@functools.cache
def get_task(name: str) -> "Task":
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(task_names())})") from None
    module, _, attr = target.partition(":")
    task = getattr(importlib.import_module(module), attr)()
    if task.name != name:
        raise ConfigError(f"task {name!r}: {target} made a task named {task.name!r}")
    return task

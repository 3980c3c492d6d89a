"""The package's shape, checked: no import cycles (module level or inside functions), the loop and the
tasks keep to their side of the data flow, only runs.py spells a run folder's files and only
groups/folder.py a sweep's or study's (locks.py is handed the lock file's path by either)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rnnctl"
LOOP_SIDE = ("rnnctl.loop", "rnnctl.training", "rnnctl.runtime", "rnnctl.callbacks", "rnnctl.inference")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """rnnctl modules that `path` imports anywhere (functions too), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in known)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "rnnctl.loop" in graph and graph["rnnctl.loop"]  # the graph is really read
    assert cycles(graph) == []


def test_the_loop_names_no_task_and_tasks_draw_nothing():
    graph = import_graph()
    for name in LOOP_SIDE:
        tasks = {m for m in graph[name] if m.startswith("rnnctl.tasks.") and m != "rnnctl.tasks.base"}
        assert not tasks, (name, tasks)
    for name, path in modules().items():
        if name.startswith("rnnctl.tasks"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert roots.isdisjoint({"rich", "matplotlib"}), name
            assert {"rnnctl.plots", "rnnctl.live", "rnnctl.views", "rnnctl.cli"}.isdisjoint(graph[name]), name


def test_the_config_imports_no_task_module():
    assert not {m for m in import_graph()["rnnctl.config"] if m.startswith("rnnctl.tasks.")}


def test_only_runs_py_spells_run_folder_files():
    """No other module joins a run folder's file or folder names onto a path."""
    names = "run.json|metrics.jsonl|metrics.csv|steps.csv|checkpoints|best.pt|last.pt|eval|forecast|plots|tensorboard"
    joined = re.compile(rf'/ *f?"(?:{names})\b|"(?:{names})/')
    for name, path in modules().items():
        if name not in ("rnnctl.runs", "rnnctl.groups.folder"):  # a group folder has eval/ and forecast/ too
            assert not joined.findall(path.read_text(encoding="utf-8")), name
    assert joined.findall((PACKAGE / "runs.py").read_text(encoding="utf-8"))  # the pattern does match


def test_the_lock_is_told_its_file():
    """locks.py knows no folder's layout: the run folder and the group folder hand it their lock file's path."""
    graph = import_graph()
    assert graph["rnnctl.locks"] <= {"rnnctl.errors"}, graph["rnnctl.locks"]
    assert "rnnctl.locks" in graph["rnnctl.runs"] and "rnnctl.locks" in graph["rnnctl.groups.folder"]
    text = (PACKAGE / "locks.py").read_text(encoding="utf-8")
    assert '".lock"' not in text and "'.lock'" not in text


def test_only_the_group_folder_spells_group_files():
    """No other module names a file of a sweep's or study's folder in a string."""
    names = r"study\.json|trials\.csv|best\.yaml|summary\.json|summary\.png|study\.db|logs|sweep\.json"
    spelled = re.compile(rf'["\'/](?:{names})["\'/]')
    for name, path in modules().items():
        if name != "rnnctl.groups.folder":
            assert not spelled.findall(path.read_text(encoding="utf-8")), name
    assert spelled.findall((PACKAGE / "groups" / "folder.py").read_text(encoding="utf-8"))  # the pattern matches


def test_groups_drive_runs_and_runs_know_no_group():
    """A group drives runs, never the other way: the loop, the run folder and the tasks import no group code."""
    graph = import_graph()
    for name in (*LOOP_SIDE, "rnnctl.runs"):
        assert not {m for m in graph[name] if m.startswith("rnnctl.groups")}, name
    assert "rnnctl.loop" in graph["rnnctl.groups.trials"]

"""`rnnctl report`: a run, a sweep or a search study on one self-contained HTML page.

The page is read from the folder's files alone (like plots.py), and stands alone: its images are base64 data
URIs, its style is inline, it loads no script, font or stylesheet, so it opens offline and can be mailed.
Every string that comes from a file (a run name, a config value, a class label, a command line) is escaped
with html.escape: the page shows markup in them as text and never runs it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any, Iterable

from rnnctl.config import flatten, plain
from rnnctl.errors import ConfigError, RunError
from rnnctl.groups.folder import GroupFolder
from rnnctl.runs import REPORT, RunFolder, atomic_write, read_json, runs_root

MAX_ROWS = 500  # metrics rows shown; a longer run shows its first and last rows
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; word-break: break-all; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; } table.metrics { font-size: 12px; } table.metrics th, table.metrics td { padding: 1px 4px; } pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; } figcaption { color: #555; }
.status-completed { color: #17702c; } .status-failed, .status-died { color: #b00020; } .note { color: #666; }
"""


class Html(str):
    """Markup this module built itself: put into the page as it is (everything else is escaped)."""


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(value if isinstance(value, str) else show(value)))


def show(value: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits, config values as `--set` writes them."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    return value if isinstance(value, str) else plain(value)


def tag(name: str, body: Any, **attrs: str) -> Html:
    attributes = "".join(f' {k.rstrip("_")}="{html.escape(v)}"' for k, v in attrs.items())
    return Html(f"<{name}{attributes}>{esc(body)}</{name}>")


def join(parts: Iterable[Any]) -> Html:
    return Html("\n".join(esc(p) for p in parts))


def table(header: list[str] | None, rows: Iterable[Iterable[Any]], text: Iterable[int] = (0,)) -> Html:
    """A table (no header row for None); columns `text` are left-aligned (the others hold numbers)."""
    left = set(text)

    def cell(kind: str, i: int, value: Any) -> str:
        return tag(kind, value, class_="text") if i in left else tag(kind, value)

    head = f"<tr>{''.join(cell('th', i, h) for i, h in enumerate(header))}</tr>\n" if header is not None else ""
    body = "".join(f"<tr>{''.join(cell('td', i, v) for i, v in enumerate(r))}</tr>\n" for r in rows)
    return Html(f'<div class="scroll"><table>{head}{body}</table></div>')


def pairs(items: Iterable[tuple[str, Any]]) -> Html:
    """A two-column table of what a record says: key, value."""
    return table(None, [(k, v) for k, v in items if v not in (None, "", [], {})], text=(0, 1))


def image(path: Path, caption: str) -> Html:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
    return Html(f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>")


def link(path: Path, text: str) -> Html:
    """A link to a local file or folder (file://), never to the network."""
    return Html(f'<a href="{html.escape(path.resolve().as_uri())}">{esc(text)}</a>')


def page(title: str, sections: list[Any]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n"
        f"{join(sections)}\n"
        f'<p class="note">{esc("written by rnnctl report")}</p>\n</body></html>\n'
    )


def section(title: str, *body: Any) -> Html:
    return join([tag("h2", title), *body])


def note(text: str) -> Html:
    return tag("p", text, class_="note")


# -- what the reference names ------------------------------------------------------------------------


def write(ref: str, out: Path | None = None) -> tuple[str, str, Path]:
    """The page of a run, sweep or study (tried in that order); written atomically to `out` (a folder: its
    report.html), by default report.html in its own folder. Returns what `ref` named ("run", "sweep" or
    "study"), its folder's name, and the file written."""
    kind, folder, text = build(ref)
    path = out if out is not None else folder.report_path
    if path.is_dir():
        path = path / REPORT
    atomic_write(path, text)
    return kind, folder.path.name, path


def build(ref: str) -> tuple[str, Any, str]:
    """Resolve `ref` as a run, then a sweep, then a study; (kind, its folder, the page)."""
    try:
        run = RunFolder.resolve(ref)
    except RunError as e:
        tried = str(e)
    else:
        return "run", run, run_page(run)
    group = GroupFolder.find(ref)
    if group is not None:
        return group.kind, group, group_page(group)
    ambiguous = f" ({tried})" if "ambiguous" in tried else ""
    raise RunError(
        f"no run, sweep or study {ref!r}{ambiguous}: tried a run id, folder or 'latest' in {runs_root()}/, "
        f"a sweep in {GroupFolder.root('sweep')}/ and a study in {GroupFolder.root('study')}/"
    )


# -- one run ----------------------------------------------------------------------------------------


def run_page(run: RunFolder) -> str:
    info = run.read_info()
    config = run.config()
    rows = run.rows()
    sections = [
        tag("h1", f"Run {run.id}"),
        header(run, info),
        config_section(config, str(info.get("task") or config.get("task") or "")),
        metrics_section(rows, info.get("unit")),
        test_section(run),
        plots_section(run),
        samples_section(rows),
        forecasts_section(run),
        environment_section(info),
    ]
    return page(f"rnnctl run {run.id}", [s for s in sections if s])


def header(run: RunFolder, info: dict[str, Any]) -> Html:
    status = str(run.info().get("status"))
    best = info.get("best") if isinstance(info.get("best"), dict) else {}
    duration = info.get("duration")
    return join(
        [
            Html(f'<p>task {tag("b", info.get("task"))}, status <b class="status-{esc(status)}">{esc(status)}</b></p>'),
            pairs(
                [
                    ("id", run.id),
                    ("name", info.get("name")),
                    ("sweep or study", run.sweep),
                    ("folder", str(run.path)),
                    ("created", info.get("created")),
                    ("finished", info.get("finished")),
                    ("duration", f"{duration:.1f} s" if isinstance(duration, (int, float)) else None),
                    ("epochs", f"{info.get('epochs_done')} of {info.get('epochs')}" if "epochs" in info else None),
                    (
                        "best",
                        f"{best.get('metric')} {show(best.get('value'))} at epoch {best.get('epoch')}"
                        if best
                        else None,
                    ),
                    ("test", ", ".join(f"{k} {show(v)}" for k, v in (info.get("test") or {}).items())),
                    ("parameters", f"{info['parameters']:,}" if isinstance(info.get("parameters"), int) else None),
                    ("error", info.get("error")),
                ]
            ),
        ]
    )


def defaults(task: str) -> dict[str, Any] | None:
    """The task's config with every key at its default (None when the task is unknown or needs keys set)."""
    from rnnctl.config import validate

    try:
        return validate({"task": task}).to_dict()
    except ConfigError:
        return None


def config_section(config: dict[str, Any], task: str) -> Html:
    if not config:
        return section("Config", note("no readable config.yaml"))
    settings = {k: v for k, v in config.items() if k != "derived"}
    base = defaults(task)
    if base is None:
        diff = note(f"the defaults of task {task!r} are not known here: the whole config is below")
    else:
        mine, theirs = flatten(settings), flatten(base)
        changed = [
            (k, plain(theirs[k]) if k in theirs else "(no default)", plain(v))
            for k, v in mine.items()
            if theirs.get(k, ...) != v
        ]
        diff = table(["key", "default", "this run"], changed, text=(0, 1, 2)) if changed else note("all defaults")
    derived = config.get("derived") if isinstance(config.get("derived"), dict) else {}
    shown = {
        k: (v if len(show(v)) <= 200 else f"({len(v)} items)" if isinstance(v, list) else show(v)[:200] + "...")
        for k, v in flatten(derived).items()
    }
    return section(
        "Config",
        tag("h3", "What differs from the task's defaults"),
        diff,
        tag("h3", "What the data determined") if shown else "",
        pairs(shown.items()) if shown else "",
        Html(f"<details><summary>config.yaml</summary>{tag('pre', plain_yaml(settings))}</details>"),
    )


def plain_yaml(data: dict[str, Any]) -> str:
    from rnnctl.config import dump_yaml

    return dump_yaml(data)


def metrics_section(rows: list[dict[str, Any]], unit: Any = None) -> Html:
    """Every metrics row (the middle left out past MAX_ROWS); the speed headed in the task's unit (`chars/s`)."""
    if not rows:
        return section("Metrics", note("no metrics rows yet"))
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k != "preview"]
    shown = rows if len(rows) <= MAX_ROWS else rows[: MAX_ROWS // 2] + rows[-MAX_ROWS // 2 :]
    cut = note(f"{len(rows) - len(shown)} rows in the middle are left out") if len(shown) < len(rows) else ""
    names = {"samples_per_s": f"{unit}/s"} if isinstance(unit, str) else {}
    header = [Html(esc(names.get(c, c)).replace("_", "_<wbr>")) for c in columns]  # `train_loss` may break after `_`
    body = table(header, ([r.get(c) for c in columns] for r in shown), text=())
    return section("Metrics", Html(body.replace("<table>", '<table class="metrics">', 1)), cut)


def test_section(run: RunFolder) -> Html:
    split, report = next(((s, r) for s in ("test", "val") if (r := run.read_eval(s, "best")) is not None), ("", None))
    if report is None:
        return Html("")
    scalars = [(k, v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    parts: list[Any] = [
        note(f"{split} split, {report.get('checkpoint')} checkpoint (epoch {report.get('epoch')})"),
        table([k for k, _ in scalars], [[v for _, v in scalars]], text=()),
    ]
    naive = report.get("naive") if isinstance(report.get("naive"), dict) else {}
    if naive:  # the baselines a series run is scored against (RMSE, R2 of "last value", ...)
        keys = list(next(iter(naive.values())))
        parts += [
            tag("h3", "Naive baselines"),
            table(["baseline", *keys], [[n, *(m.get(k) for k in keys)] for n, m in naive.items()]),
        ]
    per_class = report.get("per_class") or []
    if per_class:
        parts += [
            tag("h3", "Per class"),
            table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [c.get("label"), c.get("precision"), c.get("recall"), c.get("f1"), c.get("support")]
                    for c in per_class
                ],
            ),
        ]
    confusion = next((p for p in run.plots() if p.stem == "confusion"), None)
    if confusion is not None:  # the figure, counts in its cells: a table of 18 classes would not fit the page
        parts += [tag("h3", "Confusion matrix (rows: true class, columns: predicted)"), image(confusion, "confusion")]
    return section(f"Test report ({split})", *parts)


PLOT_ORDER = {"loss": 0, "prediction_val": 2, "prediction_test": 3, "step_loss": 4, "grad_norm": 5}  # others: 1


def plots_section(run: RunFolder) -> Html:
    """The curves (loss first), what a series run predicts, then every step's loss and gradient norm; the
    confusion matrix is in the test report."""
    plots = sorted((p for p in run.plots() if p.stem != "confusion"), key=lambda p: (PLOT_ORDER.get(p.stem, 1), p.stem))
    return section("Plots", *(image(p, p.stem) for p in plots)) if plots else Html("")


def samples_section(rows: list[dict[str, Any]]) -> Html:
    previews = [(r.get("epoch"), r.get("step"), r["preview"]) for r in rows if isinstance(r.get("preview"), str)]
    if not previews:
        return Html("")
    return section("Samples", *(join([tag("h3", f"epoch {e}, step {s}"), tag("pre", text)]) for e, s, text in previews))


def forecasts_section(run: RunFolder) -> Html:
    parts: list[Any] = []
    for path in run.forecasts():
        try:
            result = read_json(path)
        except RunError as e:
            parts.append(note(str(e)))
            continue
        rows = result.get("rows") if isinstance(result, dict) and isinstance(result.get("rows"), list) else []
        parts.append(tag("h3", f"{path.stem}: {len(rows)} steps ({result.get('checkpoint')} checkpoint)"))
        if path.with_suffix(".png").is_file():
            parts.append(image(path.with_suffix(".png"), path.stem))
        parts.append(table([str(result.get("time")), str(result.get("column"))], rows))
    return section("Forecasts", *parts) if parts else Html("")


def environment_section(info: dict[str, Any]) -> Html:
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    return section(
        "Environment",
        pairs(
            [
                *versions.items(),
                ("device", info.get("device")),
                ("threads", info.get("threads")),
                ("host", info.get("host")),
                ("world size", info.get("world_size")),
                ("backend", info.get("backend")),
                ("git commit", info.get("git_commit")),
                ("seed", info.get("seed")),
            ]
        ),
        tag("h3", "Command"),
        tag("pre", info.get("command") or ""),
        *(tag("pre", h.get("command")) for h in info.get("history") or [] if isinstance(h, dict) and h.get("command")),
    )


# -- sweeps and studies -------------------------------------------------------------------------------


def member_cell(group: GroupFolder, run: str) -> Any:
    member = group.member(run)
    return link(member.path, run) if member is not None else run


def member_values(group: GroupFolder, run: str) -> tuple[Any, Any]:
    """A member run's best validation value and its test figures, as the members table shows them."""
    member = group.member(run)
    if member is None:
        return "", ""
    info = member.info()
    best = info.get("best") if isinstance(info.get("best"), dict) else {}
    test = info.get("test") if isinstance(info.get("test"), dict) else {}
    return best.get("value"), ", ".join(f"{k} {show(v)}" for k, v in test.items() if k != "n")


def number(text: str) -> Any:
    """A trials.csv cell: a number where it reads as one (shown to 4 digits), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def group_page(group: GroupFolder) -> str:
    """A sweep or a study: what it varies, its ranked groups (sweeps) or best member, its figures, its members."""
    spec, summary = group.spec, group.summary()
    header, *rows = list(csv.reader(io.StringIO(group.read("trials") or ""))) or [[]]
    run_col = header.index("run") if "run" in header else None
    shown = [
        [member_cell(group, v) if i == run_col and v else number(v) for i, v in enumerate(r)]
        + list(member_values(group, r[run_col]) if run_col is not None and r[run_col] else ("", ""))
        for r in rows
    ]
    varied = spec.get("grid") or spec.get("space") or {}
    metric = summary.get("group_metric") or spec.get("metric")
    groups = summary.get("groups") or []
    best = summary.get("best")
    sections = [
        tag("h1", f"{'Sweep' if group.kind == 'sweep' else 'Study'} {group.name}"),
        pairs(
            [
                ("folder", str(group.path)),
                ("config", spec.get("config")),
                ("--set", " ".join(spec.get("overrides") or [])),
                ("varied", "; ".join(f"{k} = {', '.join(v) if isinstance(v, list) else v}" for k, v in varied.items())),
                ("members", ", ".join(f"{n} {k}" for k, n in (summary.get("counts") or {}).items())),
                ("ranked on", f"{metric} ({summary.get('group_direction') or spec.get('direction')})"),
                ("storage", summary.get("storage")),
            ]
        ),  # fmt: skip
        section(
            "Groups",
            table(
                ["group", "n", f"mean {metric}", "std", "test mean"],
                [[g.get("group"), g.get("n"), g.get("mean"), g.get("std"), g.get("test_mean")] for g in groups],
            ),
        )
        if groups
        else "",
        section(
            "Best",
            pairs(
                [
                    ("group", groups[0]["group"] if groups else None),
                    ("member", best["member"]),
                    (spec["metric"], best["value"]),
                ]
            ),
            tag("pre", group.read("best")),
        )  # fmt: skip
        if best and group.file("best").is_file()
        else "",
        section("Plots", *(image(p, p.stem) for p in group.plots())) if group.plots() else "",
        section(
            "Members",
            table(
                header + ["best", "test"],
                shown,
                text=[i for i, h in enumerate(header) if h in ("status", "run", "host")],
            )
            if rows
            else note(
                f"no members yet: `rnnctl {'sweep' if group.kind == 'sweep' else 'search'} --resume {group.name}`"
            ),
        ),
        section("Config", tag("pre", group.config.read_text(encoding="utf-8"))) if group.config.is_file() else "",
    ]
    return page(f"rnnctl {group.kind} {group.name}", sections)

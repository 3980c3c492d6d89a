"""How results look on the terminal: run summaries, evaluation reports, predictions, the run list."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rnnctl.errors import RunError
from rnnctl.live import Col, cell_width, fit_table, fmt_duration, one_line, print_names, print_path
from rnnctl.runs import RunFolder, shown_best


PIPE_WIDTH = 10_000  # not a terminal: a table row stays on one line, every column kept
INPUT_MIN = 20  # predict on a terminal: the input column gets at least this width beside the classes


def print_table(console: Console, cols: list[Col]) -> None:
    """On a terminal, the columns that fit its width (a number is never cut); elsewhere every column, one
    line a row, however long (a pipe or a log file has no width to fit)."""
    if console.is_terminal:
        console.print(fit_table(console.width, cols))
        return
    options = console.options.update(width=PIPE_WIDTH)
    for line in console.render_lines(fit_table(PIPE_WIDTH, cols), options, pad=False):
        text = Text.assemble(*((seg.text, seg.style) for seg in line))
        text.rstrip()
        console.print(text, soft_wrap=True)


def _metrics(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float))


def summary(console: Console, s: dict[str, Any], signal: str | None = None) -> None:
    """How a run ended (`interrupted (SIGTERM) in 0:03: ...` when a signal stopped it), its test metrics, its
    folder and plots."""
    best = s.get("best") or {}
    status = f"[bold]{s['status']}[/]" + (f" ({signal})" if signal else "")
    line = f"{status} in {fmt_duration(s.get('duration'))}: {s['epochs_done']}/{s['epochs']} epochs"
    if best.get("epoch") is not None:
        line += f", best epoch {best['epoch']} ({best['metric']} {best['value']:.4f})"
    if s.get("stopped_early"):
        line += f"; stopped early: no improvement in {s['stopped_early']['patience']} epochs"
    console.print(line, soft_wrap=True)
    run = RunFolder(Path(s["dir"]))
    if s.get("test"):
        console.print(f"test (best checkpoint): [bold]{_metrics(s['test'])}[/]", soft_wrap=True)
        try:
            note = naive_note(run.read_eval("test", "best") or {})
        except RunError:  # the test report is broken: the summary above still stands
            note = None
        if note:
            console.print(note, markup=False, soft_wrap=True)
    print_path(console, "run folder:", s["dir"])
    plots = [p.name for p in run.plots()]
    if plots:
        print_names(console, "plots:", plots)


NAIVE_NAMES = {"last": "last value", "seasonal": "a season back"}  # series.py's naive forecasts


def naive_note(report: dict[str, Any]) -> str | None:
    """One line when a naive forecast of the report (series) has a lower RMSE than the model: the model has
    not learned more than holding the last value (or a season back) would give."""
    model = report.get("rmse")
    scored = [(m["rmse"], name) for name, m in (report.get("naive") or {}).items() if isinstance(m.get("rmse"), float)]
    if not isinstance(model, float) or not math.isfinite(model) or not scored:
        return None
    rmse, name = min(scored)
    if not rmse < model:
        return None
    return (
        f"note: the naive forecast '{NAIVE_NAMES.get(name, name)}' (RMSE {rmse:.4g}) beats the model "
        f"(RMSE {model:.4g}) on {report.get('split', 'test')}"
    )


def stopped(console: Console, e: BaseException, rank: int | None, signal: str | None = None) -> bool:
    """A run stopped by Ctrl-C or SIGTERM: the same summary as a finished one (its first line says it was
    interrupted), and how to go on; a sweep or search: the command that continues it. Rank 0 alone speaks.
    False when there is no run to sum up (a group, or a run stopped before it began)."""
    record, resume = getattr(e, "summary", None), getattr(e, "resume", None)
    if resume and not rank:
        console.print(f"continue with: {resume}", soft_wrap=True)
        return False
    if not record:
        return False
    if not rank:
        summary(console, record, signal)
        console.print(f"continue with: rnnctl train --resume {record['id']}", soft_wrap=True)
    return True


def eval_report(console: Console, name: str, report: dict[str, Any], saved: Path) -> None:
    """A saved run's report on a split; a sweep's or study's: its members' and their ensemble's."""
    if "ensemble" in report:
        _ensemble_report(console, name, report, saved)
        return
    console.print(
        f"[bold]{name}[/]: {report['split']} split, {report['checkpoint']} checkpoint (epoch {report['epoch']}), "
        f"{report['n']:,} {report.get('unit', 'examples')}"  # what n counts: names, chars, values
    )
    names = {"acc": "accuracy", "macro_f1": "macro F1", "bpc": "bits/char", "ppl": "perplexity"}
    scalars = [(k, v) for k, v in report.items() if isinstance(v, float)]
    console.print("  ".join(f"{names.get(k, k)} [bold]{v:.4g}[/]" for k, v in scalars), soft_wrap=True)
    for name, metrics in report.get("naive", {}).items():  # baselines scored by the same code (series)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        console.print(f"naive forecast ({name}): {shown}", soft_wrap=True)
    _predicted(console, report.get("predictions") or [])
    if "per_class" in report:
        _per_class(console, report["per_class"])
    print_path(console, "saved:", saved)


def _predicted(console: Console, strings: list[dict[str, str]]) -> None:
    """What a task that maps a string to a string predicts (hello): `predicts "ohlol" for "hello" (target
    "ohlol")`, one line each, escaped as a preview is."""
    for s in strings:
        line = f'predicts "{one_line(s["predicted"])}" for "{one_line(s["input"])}" (target "{one_line(s["target"])}")'
        console.print(Text(line), soft_wrap=True)


def _ensemble_report(console: Console, name: str, report: dict[str, Any], saved: Path) -> None:
    """Each member's metrics on the split, then the ensemble's, then its details (per class)."""
    ens = report["ensemble"]
    kind = "sweep" if "sweep" in report else "study"
    console.print(
        f"[bold]{escape(name)}[/] ({kind}): {report['split']} split, {report['checkpoint']} checkpoints, "
        f"{len(report['members'])} member{'s' if len(report['members']) > 1 else ''}, {ens['n']:,} "
        f"{report.get('unit', 'examples')}",
        soft_wrap=True,
    )
    chosen = report["selected_by"]
    metrics = [k for k, v in ens.items() if isinstance(v, float) and all(k in m for m in report["members"])]
    rows = [*report["members"], {"run": "ensemble", **ens}]
    cols = [Col("member", [Text(str(r["run"])) for r in rows], keep=0, justify="left")]
    cols.append(Col(chosen, [f"{r[chosen]:.4f}" if isinstance(r.get(chosen), float) else "" for r in rows], keep=3))
    cols += [Col(f"{report['split']} {k}", [f"{r[k]:.4f}" for r in rows], keep=1 + i) for i, k in enumerate(metrics)]
    print_table(console, cols)
    names = {"acc": "accuracy", "macro_f1": "macro F1", "bpc": "bits/char", "ppl": "perplexity"}
    scalars = [(k, v) for k, v in ens.items() if isinstance(v, float)]
    console.print("ensemble: " + "  ".join(f"{names.get(k, k)} [bold]{v:.4g}[/]" for k, v in scalars), soft_wrap=True)
    _predicted(console, ens.get("predictions") or [])
    if "per_class" in ens:
        _per_class(console, ens["per_class"])
    console.print(f"saved: {saved}", soft_wrap=True)


def _per_class(console: Console, per_class: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in per_class:
        table.add_row(
            Text(c["label"]), f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])
        )
    console.print(table)


def stream_samples(
    stream: TextIO, prompt: str, samples: Iterator[Iterator[str]], num: int, before: Callable[[], None] | None = None
) -> None:
    """Each sample as it is generated: the prompt, then one character at a time; `before()` once the first
    character came (a bad argument raises first, before anything is printed)."""
    for i, chars in enumerate(samples):
        first = next(chars, "")
        if i == 0 and before is not None:
            before()
        if num > 1:
            stream.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1}/{num} ---\n")
        stream.write(prompt + first)
        for ch in chars:
            stream.write(ch)
            stream.flush()
        stream.write("\n")
        stream.flush()


def predictions(console: Console, rows: list[dict[str, Any]]) -> None:
    """One row per input: the input, whole, and its top classes with their probabilities; never a number or
    an input cut. In a pipe every column, one line a row. On a terminal a table whose input column wraps
    when the classes fit beside it (the input given at least INPUT_MIN columns), else each input on its own
    lines with its classes beneath, as many to a line as fit."""
    inputs = []
    for r in rows:
        text = r["input"]
        if r.get("unknown_chars"):
            text += f" (unknown: {''.join(r['unknown_chars'])})"
        if r.get("unknown_words"):
            text += f" ({r['unknown_words']} of {r['words']} words unknown)"
        inputs.append(Text(text))  # Text: a review's "[...]" is not rich markup
    cells = [[f"{label} {p:.1%}" for label, p in r["top"]] for r in rows]
    k = max(len(c) for c in cells)
    cols = [Col("input", inputs, 0, "left", wraps=True)]
    cols += [Col(f"#{i + 1}", [c[i] if i < len(c) else "" for c in cells], 1, "left") for i in range(k)]
    if not console.is_terminal:
        print_table(console, cols)
        return
    beside = sum(max(map(cell_width, [c.header, *c.cells])) + 2 for c in cols[1:])
    if min(max(map(cell_width, inputs)), INPUT_MIN) + beside <= console.width:
        console.print(fit_table(console.width, cols))
        return
    for text, classes in zip(inputs, cells):  # stacked: the classes go beneath their input
        console.print(text)
        line = ""
        for cell in classes:
            if line and 2 + cell_len(line) + 2 + cell_len(cell) > console.width:
                console.print(Text("  " + line), overflow="fold")
                line = ""
            line = f"{line}  {cell}" if line else cell
        console.print(Text("  " + line), overflow="fold")


def forecast(console: Console, result: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    table.add_column(result["time"])
    table.add_column(Text(result["column"]), justify="right")
    for label, value in result["rows"]:
        table.add_row(label, f"{value:,.4g}")
    console.print(table)
    console.print(f"saved: {result['csv']}, {result['png']}", soft_wrap=True)


def comparison(console: Console, metric: str, table_rows: list[dict[str, Any]], out: Path) -> None:
    """The runs' best and final values, then what differs between their configs."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = table_rows
    cols = [
        Col("id", [r["id"] for r in rows], 0, "left"),
        Col("task", [str(r["task"]) for r in rows], 7, "left"),
        Col("parameters", [f"{r['parameters']:,}" if r["parameters"] else "-" for r in rows], 6),
        Col(f"best {metric}", [fmt(r["best"]) for r in rows], 1),
        Col("epoch", [str(r["best_epoch"]) for r in rows], 4),
        Col(f"final {metric}", [fmt(r["final"]) for r in rows], 3),
        Col("test", [fmt(r["test"]) for r in rows], 2),
        Col("duration", [fmt_duration(r["duration"]) for r in rows], 5),
    ]
    print_table(console, cols)
    if any(r["differs"] for r in rows):
        console.print("what differs:")
        cols = [
            Col("id", [r["id"] for r in rows], 0, "left"),
            Col("config", [r["differs"] for r in rows], 1, "left", True),
        ]
        print_table(console, cols)
    else:
        console.print("the configs are the same")
    console.print(f"plot and table: {out}/compare.png, {out}/compare.json", soft_wrap=True)


STATUS_COLORS = {
    "completed": "green", "pruned": "yellow", "failed": "red", "interrupted": "yellow", "running": "cyan",
    "pending": "white",
}  # fmt: skip


def _values(values: dict[str, Any]) -> str:
    return escape(" ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in values.items()))  # "[x]" is no markup


def group_start(console: Console, group: Any, here: int) -> None:
    """A sweep or study about to train: how many members at once on this machine, and its folder."""
    console.print(f"{group.kind} {group.name}: {here} at once here; folder:", soft_wrap=True)
    console.print(f"  {group.path}", soft_wrap=True)


def nothing_left(console: Console, group: Any) -> None:
    """A sweep or study that had nothing left to train, and for a study how to ask for more."""
    if group.kind == "sweep":
        console.print(f"sweep {group.name}: every member has completed; nothing to train", soft_wrap=True)
        return
    n = group.spec["trials"]
    console.print(
        f"study {group.name} already has its {n} trials: nothing to train; for more, ask for a larger "
        f"total: rnnctl search --resume {group.name} --trials {2 * n}",
        soft_wrap=True,
    )


def group_event(console: Console, e: dict[str, Any]) -> None:
    """A member of a sweep or search started or ended: one line, so a group is never silent."""
    what = f"{e['member']:>3} {_values(e['values'])}"
    if e["event"] == "start":
        console.print(f"  [cyan]start[/]       {what}", soft_wrap=True)
        return
    color = STATUS_COLORS.get(e["status"], "white")
    value = f"{e['metric']} {e['value']:.4f}" if isinstance(e.get("value"), float) and e["value"] == e["value"] else ""
    error = f": {escape(str(e['error']))}" if e.get("error") and e["status"] == "failed" else ""
    eta = f", ETA {fmt_duration(e['eta'])}" if e.get("eta") is not None and e["done"] < e["total"] else ""
    console.print(
        f"  [{color}]{e['status']:<11}[/] {what}  {value}{error}  {fmt_duration(e.get('seconds'))}"
        f"  ({e['done']}/{e['total']} done, {fmt_duration(e['elapsed'])} so far{eta})",
        soft_wrap=True,
    )


def _counts(s: dict[str, Any]) -> str:
    return ", ".join(f"{n} {k}" for k, n in s["counts"].items()) or "no members yet"


def sweep_summary(console: Console, s: dict[str, Any]) -> None:
    """The groups of a sweep (the swept keys but the seed), best first, and where its results are."""
    table = Table(box=None, header_style="bold")
    metric = s.get("group_metric") or s["metric"]
    test = f"test_{str(metric).removeprefix('val_')}"
    for col in ("group", "runs", f"{metric} mean", "std", f"({test})"):
        table.add_column(col, justify="left" if col == "group" else "right", no_wrap=True)
    for g in s.get("groups") or []:  # best first, by the validation metric
        shown = "-" if g.get("test_mean") is None else f"{g['test_mean']:.4f}"
        std = "-" if g.get("std") is None else f"{g['std']:.4f}"
        table.add_row(Text(g["group"]), str(g["n"]), f"{g['mean']:.4f}", std, shown)
    console.print(table)
    there = f" ({s['elsewhere']} trained by other machines, not in this summary)" if s.get("elsewhere") else ""
    console.print(f"sweep {s['name']}: {_counts(s)}{there}", soft_wrap=True)
    console.print("summary:", soft_wrap=True)
    for path in (s["summary_json"], *s["plots"]):
        console.print(f"  {path}", soft_wrap=True)
    left = sum(n for k, n in s["counts"].items() if k not in ("completed", "pruned"))
    if left:
        console.print(f"finish the rest with: rnnctl sweep --resume {s['name']}", soft_wrap=True)


def run_list(console: Console, runs: list[dict[str, Any]], filtered: bool = False) -> None:
    """One row per run; on a narrow terminal the least needed columns go (duration, task, epochs first)."""
    if not runs:
        console.print("no runs match" if filtered else "no runs yet (train one with `rnnctl train CONFIG`)")
        return
    colors = {
        "completed": "green",
        "running": "cyan",
        "submitted": "cyan",
        "interrupted": "yellow",
        "failed": "red",
        "died": "red",
        "unreadable": "red",
        "pruned": "yellow",
    }
    best_s, test_s = [], []
    for r in runs:
        best = r.get("best") if isinstance(r.get("best"), dict) else {}
        test = r.get("test") if isinstance(r.get("test"), dict) else {}
        shown, value, _ = shown_best(r)  # the metric that picked the best epoch; a regressor's MSE in data units
        metric = shown.removeprefix("val_")
        epoch = best.get("epoch")
        best_s.append(f"{metric} {value:.4f} @{epoch}" if epoch is not None and value is not None else "-")
        test_s.append(f"{metric} {test[metric]:.4f}" if metric in test else "-")
    statuses = [str(r.get("status", "?")) for r in runs]
    cols = [
        Col("id", [r["id"] for r in runs], 0, "left"),  # ids are copied from here whole
        Col("task", [str(r.get("task", "?")) for r in runs], 6, "left"),
        Col("status", [Text(s, style=colors.get(s, "white")) for s in statuses], 1, "left"),
        Col("epochs", [f"{r.get('epochs_done', 0)}/{r.get('epochs', '?')}" for r in runs], 5),
        Col("best val", best_s, 2, "left"),
        Col("test", test_s, 3, "left"),
        Col("duration", [fmt_duration(r.get("duration")) for r in runs], 7),
        Col("changes", [" ".join(r.get("changes") or []) or "-" for r in runs], 4, "left", wraps=True),
    ]
    if any(r.get("job_id") for r in runs):  # runs trained as Slurm jobs: the job and its state in the queue
        cols.insert(3, Col("job", [str(r.get("job_id") or "-") for r in runs], 3, "left"))
        cols.insert(4, Col("slurm", [str(r.get("slurm") or "-") for r in runs], 3, "left"))
    if any(r.get("sweep") for r in runs):  # members of sweeps and search studies: which one
        cols.insert(2, Col("sweep/study", [str(r.get("sweep") or "-") for r in runs], 4, "left"))
    print_table(console, cols)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def study_summary(console: Console, s: dict[str, Any]) -> None:
    """The members (trials) of a search, best first, and where its results are."""
    metric, keys = s["metric"], list(dict.fromkeys(k for t in s["members"] for k in t["values"]))
    table = Table(box=None, header_style="bold")
    for col in ("trial", "status", metric, *(k.split(".")[-1] for k in keys), "time", "run"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("status", "run") else "right")
    sign = -1 if s["direction"] == "maximize" else 1
    finite = lambda t: isinstance(t["value"], float) and t["value"] == t["value"]  # noqa: E731
    order = sorted(s["members"], key=lambda t: (not finite(t), sign * t["value"] if finite(t) else 0, t["member"]))
    for t in order:
        color = STATUS_COLORS.get(t["status"], "white")
        table.add_row(
            str(t["member"]), f"[{color}]{t['status']}[/]", f"{t['value']:.4f}" if finite(t) else "-",
            *(escape(_short(t["values"].get(k, "-"))) for k in keys), fmt_duration(t.get("seconds")),
            escape(t["run"] or "-"),
        )  # fmt: skip
    console.print(table)
    console.print(f"study {s['name']}: {_counts(s)} (storage {s['storage']})", soft_wrap=True)
    if s["best"]:
        b = s["best"]
        console.print(f"best: trial {b['member']}, {metric} {b['value']:.4f}; config:", soft_wrap=True)
        console.print(f"  {s['best_yaml']}", soft_wrap=True)
    for p in s["plots"]:
        console.print(f"plot: {p}", soft_wrap=True)


def config_list(console: Console, configs: list[tuple[str, str]]) -> None:
    """The shipped configs: name (what `train` and `config cp` take) and description."""
    table = Table(box=None, header_style="bold")
    table.add_column("config", no_wrap=True)
    table.add_column("description")
    for name, description in configs:
        table.add_row(name, Text(description))
    console.print(table)
    console.print("train one with `rnnctl train NAME`; copy it to edit with `rnnctl config cp NAME`", soft_wrap=True)

"""PNG figures drawn from a run folder's files (metrics.jsonl, eval/*.json), never from live objects."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rnnctl.runs import RunFolder, atomic_write, read_json  # noqa: E402

FILE_NAMES = {"acc": "accuracy"}  # metric key -> plot file stem
TITLES = {
    "loss": "Loss",
    "acc": "Accuracy",
    "bpc": "Bits per character",
    "ppl": "Perplexity",
    "mse": "MSE",
    "mae": "MAE",
}
MAX_POINTS = 600  # of a prediction-vs-truth plot
MAX_STEP_POINTS = 4000  # raw per-step points drawn (a long run is thinned; the smoothed curve uses every step)


def units(metric: str, metrics: set[str]) -> str:
    """The y-axis label of a metric, with its unit, from what the run logs (a language model logs bpc, a
    classifier acc, a regressor mse)."""
    lm, regression = "bpc" in metrics, "mse" in metrics
    if metric == "loss":
        if lm:
            return "cross-entropy (nats/char)"
        return "MSE (scaled units)" if regression else "cross-entropy (nats/example)"
    return {
        "acc": "accuracy (fraction correct)", "bpc": "bits/char", "ppl": "perplexity",
        "mse": "MSE (data units squared)", "mae": "MAE (data units)",
    }.get(metric, metric)  # fmt: skip


def title(info: dict[str, Any], what: str) -> str:
    return f"{info.get('id', '?')} ({info.get('task', '?')}): {what}"


def write_all(run: RunFolder) -> list[Path]:
    """Every plot the run's files allow: one per metric, the step norms, the test confusion, the fits."""
    written = []
    info = run.info()
    rows = run.rows()
    if rows:
        metrics = list(dict.fromkeys(k.split("_", 1)[1] for k in rows[0] if k.startswith("val_")))
        for metric in metrics:
            path = run.plot_path(FILE_NAMES.get(metric, metric))
            written.append(curve(rows, metric, path, info, units(metric, set(metrics))))
    steps = run.steps()
    if steps:
        clip = (run.config().get("train") or {}).get("grad_clip")
        written.append(grad_norms(steps, clip, run.plot_path("grad_norm"), info))
        written.append(
            step_losses(steps, run.plot_path("step_loss"), info, units("loss", set(metrics) if rows else set()))
        )
    test = run.read_eval("test", "best")
    if test is not None and "confusion" in test:
        written.append(confusion(test, run.plot_path("confusion"), info))
    for split in ("val", "test"):
        report = run.read_eval(split, "best")
        if report is not None and "series" in report:
            written.append(prediction_vs_truth(report, run.plot_path(f"prediction_{split}"), info))
    return written


def _save(fig, path: Path) -> None:
    """Render in memory, then write atomically: a full disk never leaves half a PNG."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


def _date_ticks(ax, times: list[int], dates: list[str] | None) -> None:
    """Label a time axis with a few of the dates, when the series has them."""
    if not dates:
        ax.set_xlabel("step")
        return
    every = max(len(times) // 6, 1)
    ax.set_xticks(times[::every], dates[::every], rotation=30, ha="right", fontsize=8)


def prediction_vs_truth(report: dict[str, Any], path: Path, info: dict[str, Any] | None = None) -> Path:
    """The picture the seeds draw with plt.show(): the model's prediction over the truth, in original units."""
    series = report["series"]
    shown = min(len(series["time"]), MAX_POINTS)  # a long stream is drawn in part: its start, readable
    naive = {k: v[:shown] for k, v in series.get("naive", {}).items()}
    series = {k: v[:shown] for k, v in series.items() if k != "naive"}
    fig, ax = plt.subplots(figsize=(9.5, 4.2), layout="constrained")
    ax.plot(series["time"], series["truth"], color="black", linewidth=1.2, label="truth")
    ax.plot(
        series["time"], series["pred"], color="tab:red", linewidth=1.0, linestyle="--",
        label=f"model (RMSE {report['rmse']:.4g})",
    )  # fmt: skip
    for (name, values), color in zip(naive.items(), ("tab:gray", "tab:olive")):
        rmse = (report.get("naive") or {}).get(name, {}).get("rmse")
        label = f"naive: {'last value' if name == 'last' else 'a season back' if name == 'seasonal' else name}"
        ax.plot(series["time"], values, color=color, linewidth=0.9, linestyle=":",
                label=label + (f" (RMSE {rmse:.4g})" if rmse is not None else ""))  # fmt: skip
    _date_ticks(ax, series["time"], series.get("dates"))
    ax.set_title(
        (f"{info.get('id')} ({info.get('task')}): " if info else "")
        + f"{report['split']} split ({report['checkpoint']} checkpoint), R2 {report['r2']:.3f}"
        + (
            f" (first {shown} of {len(report['series']['time'])} steps)"
            if shown < len(report["series"]["time"])
            else ""
        )
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)
    return path


def forecast(json_path: Path, path: Path) -> Path:
    """The end of the series and the forecast that continues it, from RUN/forecast/forecast-N.json."""
    result = read_json(json_path)
    history, rows = result["history"], result["rows"]
    values = [v for _, v in rows]
    shown = min(len(history["values"]), max(4 * len(values), 48))
    past = history["values"][-shown:]
    t0 = history["start"] + len(history["values"]) - shown
    past_t = list(range(t0, t0 + shown))
    future_t = list(range(t0 + shown, t0 + shown + len(values)))
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    ax.plot(past_t, past, color="black", linewidth=1.2, label=result["column"])
    ax.plot([past_t[-1], *future_t], [past[-1], *values], color="tab:red", marker=".", label="forecast")
    dates = history["dates"][-shown:] + [t for t, _ in rows] if history["dates"] and result["time"] == "date" else None
    _date_ticks(ax, past_t + future_t, dates)
    ax.set_title(f"{result['run']}: {len(values)}-step forecast ({result['checkpoint']} checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path


def curve(rows: list[dict[str, Any]], metric: str, path: Path, info: dict[str, Any], ylabel: str) -> Path:
    epochs = [r.get("epoch_fraction", r["epoch"]) for r in rows]  # rows inside an epoch sit between epochs
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for split in ("train", "val"):
        key = f"{split}_{metric}"
        points = [(e, r[key]) for e, r in zip(epochs, rows) if key in r]
        if points:
            ax.plot(*zip(*points), marker="." if len(rows) < 40 else None, label=split)
    best = rows[-1].get("best_epoch")
    if best is not None:
        ax.axvline(best, color="gray", linestyle=":", label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title(info, TITLES.get(metric, metric)))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the plot, never on a line
    _save(fig, path)
    return path


def smooth(values: list[float], span: int) -> list[float]:
    """An exponential moving average with the given span (in steps), debiased at the start."""
    alpha = 2.0 / (span + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    every = max(len(xs) // MAX_STEP_POINTS, 1)
    return xs[::every], ys[::every]


def step_losses(steps: list[dict[str, float]], path: Path, info: dict[str, Any], ylabel: str) -> Path:
    """The training loss of every step, raw (faint) and smoothed: what an epoch average hides."""
    xs, ys = [s["step"] for s in steps], [s["loss"] for s in steps]
    span = max(len(steps) // 50, 5)
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    ax.plot(*_thin(xs, ys), linewidth=0.6, alpha=0.35, color="tab:blue", label="per step")
    ax.plot(xs, smooth(ys, span), linewidth=1.6, color="tab:blue", label=f"smoothed ({span}-step EMA)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training {ylabel}")
    ax.set_title(title(info, "training objective per step (what the optimizer minimized)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)
    return path


def compare(curves: list[tuple[str, list[dict[str, Any]]]], metric: str, path: Path) -> Path:
    """One metric of several runs, against epochs (left) and against training seconds (right). Runs with
    the same label (a sweep's seeds of one group) share a colour and one legend entry."""
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained", sharey=True)
    colors = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(label for label, _ in curves))}
    named = set()
    for label, rows in curves:
        rows = [r for r in rows if metric in r]
        ys = [r[metric] for r in rows]
        style = {"color": colors[label], "label": None if label in named else label}
        named.add(label)
        by_epoch.plot([r.get("epoch_fraction", r["epoch"]) for r in rows], ys, **style)
        by_time.plot([r["elapsed"] for r in rows], ys, **style)
    by_epoch.set_xlabel("epoch")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    by_time.set_xlabel("training time (s)")
    by_epoch.set_ylabel(metric)
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    fig.suptitle(f"{metric} of {len(curves)} runs")
    _save(fig, path)
    return path


def grad_norms(steps: list[dict[str, float]], clip: float | None, path: Path, info: dict[str, Any]) -> Path:
    """The gradient norm before clipping at every step (faint) and smoothed, with the clipping threshold."""
    xs, ys = [s["step"] for s in steps], [s["grad_norm"] for s in steps]
    span = max(len(steps) // 50, 5)
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    ax.plot(*_thin(xs, ys), linewidth=0.6, alpha=0.35, color="tab:blue", label="per step (before clipping)")
    ax.plot(xs, smooth(ys, span), linewidth=1.6, color="tab:blue", label=f"smoothed ({span}-step EMA)")
    if clip is not None:
        ax.axhline(clip, color="red", linestyle="--", label=f"clip threshold ({clip:g})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("global L2 norm of the gradients")
    ax.set_title(title(info, "gradient norm per step"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)
    return path


def confusion(report: dict[str, Any], path: Path, info: dict[str, Any] | None = None) -> Path:
    """Rows: true class, normalized to recall; the numbers are counts, big enough to read in their cells."""
    classes = report["classes"]
    counts = report["confusion"]
    n = len(classes)
    norm = [[c / max(sum(row), 1) for c in row] for row in counts]
    size = max(5.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if counts[i][j]:
                ax.text(
                    j,
                    i,
                    counts[i][j],
                    ha="center",
                    va="center",
                    fontsize=9 if n <= 24 else 7,
                    color="white" if norm[i][j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    what = f"{report['split']} confusion ({report['checkpoint']} checkpoint), accuracy {report['acc']:.3f}"
    ax.set_title(title(info, what) if info else what)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class")
    _save(fig, path)
    return path


def study(s: Any, paths: dict[str, Path], metric: str) -> list[Path]:
    """Optuna's own figures of a study (its matplotlib backend), those asked for in `paths` (stem -> file):
    the optimization history, the parameters' importance, the parallel coordinates. A figure the trials
    cannot support (importance needs completed trials that differ) is left out."""
    import warnings

    from optuna.visualization import matplotlib as ov

    draw = {"history": ov.plot_optimization_history, "importance": ov.plot_param_importances,
            "parallel": ov.plot_parallel_coordinate}  # fmt: skip
    written = []
    for stem, path in paths.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw[stem](s, target_name=metric)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        fig = (ax[0] if hasattr(ax, "__len__") else ax).get_figure()
        fig.suptitle(f"study {s.study_name}: {stem}", fontsize=10)
        fig.set_size_inches(8, 5)
        _save(fig, path)
        written.append(path)
    return written

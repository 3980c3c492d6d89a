"""A saved run or an ensemble behind one interface (evaluate, predict, forecast; a run samples too), and
comparing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from rnnctl.config import flatten, plain, validate
from rnnctl.errors import ConfigError, RnnctlError, RunError, first_line
from rnnctl.runs import RunFolder, all_runs, compare_folder, now, runs_root, write_json
from rnnctl.tasks import get_task
from rnnctl.tasks.base import Forecasts, Predicts, Samples, Split, Task
from rnnctl.runtime import Precision, pick_device
from rnnctl.training import evaluate


NO_INPUTS = "nothing to predict: give INPUT arguments or --file with one input per line"


def evaluate_and_save(
    task: Task,
    model: torch.nn.Module,
    meta: dict[str, Any],
    split: Split,
    device: torch.device,
    batch_size: int,
    run: RunFolder,
    split_name: str,
    checkpoint: str,
    epoch: int,
    precision: Precision | None = None,
) -> tuple[dict[str, Any], Any]:
    """The detailed report of one checkpoint on one split, written to the run's eval/; returns it and its path.
    `precision`: the run's own during training (its final test); a saved run is evaluated in fp32."""
    meter = task.meter(meta, detailed=True)
    report = evaluate(model, split, meter, device, batch_size, precision=precision).report()
    when = {"split": split_name, "checkpoint": checkpoint, "created": now(), "epoch": epoch}
    report = {**when, "unit": task.unit, **report}  # unit: what the report's `n` counts
    return report, run.write_eval(split_name, checkpoint, report)


class Inference(Protocol):
    """What `eval` and `predict` ask of a saved run (LoadedRun) or of a sweep's or study's completed members
    (ensemble.Ensemble), so that a command never asks which of the two it has."""

    @property
    def name(self) -> str:
        """Its folder's name."""

    @property
    def used(self) -> str:
        """What a command says it used (on stderr: stdout may be data)."""

    def evaluate(self, split: str | None) -> tuple[dict[str, Any], Path]:
        """The report on one split (default: test, or val where there is no test split), and where it is saved."""

    def predict(self, inputs: list[str], top: int) -> list[dict[str, Any]]:
        """Each input's `top` classes with their probabilities."""

    def forecast(self, steps: int) -> dict[str, Any]:
        """The next `steps` values past the end of a series' data, saved with their plot."""


def using(run: RunFolder, checkpoint: str | None, epoch: int | None) -> str:
    """Which run and checkpoint a command works from (`checkpoint` None: a resume that starts over)."""
    if checkpoint is None:
        return f"using run {run.id}, no checkpoint yet: training starts over"
    return f"using run {run.id}, checkpoint {run.checkpoint_path(checkpoint).name} (epoch {epoch})"


class LoadedRun:
    """A run folder's config, task and model, restored from one of its checkpoints (an `Inference`)."""

    def __init__(self, ref: str, checkpoint: str = "best", device: str = "auto"):
        """`device`: where the model runs (auto: the machine's best); checkpoints load on the CPU first, so a run
        trained on a GPU loads on a machine without one."""
        self.device = pick_device(device, "--device")
        self.run = RunFolder.resolve(ref)
        self.checkpoint_name = checkpoint
        self.ckpt = self.run.load_checkpoint(checkpoint)
        try:
            self.cfg = validate(self.ckpt["config"], source=str(self.run.checkpoint_path(checkpoint)))
        except ConfigError as e:
            raise RunError(str(e)) from None
        self.task = get_task(self.cfg.task)
        self.meta = self.ckpt["meta"]
        path = self.run.checkpoint_path(checkpoint)
        try:
            self.model = self.task.build_model(self.cfg, self.meta).to(self.device)
            self.model.load_state_dict(self.ckpt["model"])
        except RnnctlError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:  # weights or meta not of this config
            raise RunError(f"{path}: does not fit its own config ({first_line(e)[:200]})") from None
        self.model.eval()

    @property
    def name(self) -> str:
        return self.run.id

    @property
    def used(self) -> str:
        return using(self.run, self.checkpoint_name, self.ckpt["epoch"])

    def evaluate(self, split: str | None) -> tuple[dict[str, Any], Path]:
        data = self.task.prepare(self.cfg, meta=self.meta)
        split = split or ("test" if "test" in data.splits else "val")  # a language model has no test split
        if split not in data.splits:
            raise RunError(f"--split {split!r}: expected one of {', '.join(data.splits)}")
        with self.run.lock():  # not while the run trains: one writer at a time
            return evaluate_and_save(
                self.task, self.model, self.meta, data.splits[split], self.device, self.cfg.train.batch_size,
                self.run, split, self.checkpoint_name, self.ckpt["epoch"],
            )  # fmt: skip

    def predict(self, inputs: list[str], top: int) -> list[dict[str, Any]]:
        if not isinstance(self.task, Predicts):
            raise RunError(f"{self.run.id} is a {self.cfg.task} run: it does not classify inputs; {self._instead()}")
        if not inputs:
            raise RunError(NO_INPUTS)
        return self.task.predict(self.model, self.meta, inputs, top)

    def forecast(self, steps: int) -> dict[str, Any]:
        """The next `steps` values after the end of a series run's data, from the checkpoint alone."""
        if not isinstance(self.task, Forecasts):
            raise RunError(f"{self.run.id} is a {self.cfg.task} run, not a time series: --horizon does not apply")
        result = self.task.forecast(self.model, self.meta, steps)  # {"time", "column", "rows", "history"}
        from rnnctl import plots

        with self.run.lock():  # not while the run trains: one writer at a time
            paths = self.run.write_forecast(
                steps, {"run": self.run.id, "checkpoint": self.checkpoint_name, **result},
                [result["time"], result["column"]], result["rows"],
            )  # fmt: skip
            plots.forecast(paths["json"], paths["png"])  # drawn from the file, like every plot
        return {**result, **{ext: str(p) for ext, p in paths.items()}}

    def sample(
        self, prompt: str, length: int, temperature: float, top_k: int, num: int, rng_seed: int | None
    ) -> Iterator[Iterator[str]]:
        """`num` character streams; one generator serves them all, so `rng_seed` fixes the whole output."""
        if not isinstance(self.task, Samples):
            raise RunError(f"{self.run.id} is a {self.cfg.task} run, not a language model: nothing to sample")
        generator = torch.Generator().manual_seed(rng_seed) if rng_seed is not None else None
        for _ in range(num):
            yield self.task.sample(self.model, self.meta, prompt, length, temperature, top_k, generator)

    def _instead(self) -> str:
        if isinstance(self.task, Samples):
            return "it generates text: use `rnnctl sample RUN --prompt TEXT`"
        if isinstance(self.task, Forecasts):
            return "it forecasts: use `rnnctl predict RUN --horizon N`"
        return "`rnnctl eval RUN` shows how well it fits"


def latest_language_model_run() -> str:
    """The id of the newest completed run whose task can sample text."""
    from rnnctl.tasks import task_names

    known = set(task_names())
    for run in reversed(all_runs()):
        info = run.info()
        if (
            info.get("status") == "completed"
            and info.get("task") in known
            and isinstance(get_task(info["task"]), Samples)
        ):
            return str(run.path)
    raise RunError(f"no completed language-model run in {runs_root()}/ (train one first)")


def compare_runs(refs: list[str], metric: str | None = None) -> tuple[str, list[dict[str, Any]], Any]:
    """Summaries of several runs on one metric (default: the first run's best-epoch metric), their
    curves drawn to a new folder `<runs>/compare/<time>/` (compare.png, compare.json)."""
    from rnnctl import plots

    if len(refs) < 2:
        raise RunError("compare: give at least two runs")
    runs = [RunFolder.resolve(r) for r in refs]
    infos = [r.info() for r in runs]
    metric = metric or (infos[0].get("best") or {}).get("metric") or "val_loss"
    table, curves = [], []
    for run, info in zip(runs, infos):
        all_rows = run.rows()
        rows = [r for r in all_rows if metric in r]
        if not rows:
            columns = ", ".join(all_rows[0]) if all_rows else "none"
            raise RunError(f"{run.id}: no {metric!r} in its metrics (columns: {columns})")
        best = (min if better(metric, info.get("best") or {}) == "min" else max)(rows, key=lambda r: r[metric])
        test = info.get("test") or {}
        table.append({
            "id": run.id, "task": info.get("task"), "parameters": info.get("parameters"),
            "best": best[metric], "best_epoch": best["epoch"], "final": rows[-1][metric],
            "test": test.get(metric.removeprefix("val_")), "epochs": info.get("epochs_done"),
            "duration": info.get("duration"), "status": info.get("status"),
        })  # fmt: skip
        curves.append(rows)
    differs = config_differences([run.config() for run in runs])
    for i, row in enumerate(table):  # a key the run has not (another task's) is left out: the others show it
        row["differs"] = " ".join(f"{key}={values[i]}" for key, values in differs.items() if values[i] != "-")
    labels = legend_labels([r["id"] for r in table], differs)
    out = compare_folder(len(runs))
    plots.compare(list(zip(labels, curves)), metric, out / "compare.png")
    write_json(out / "compare.json", {"metric": metric, "differs": differs, "labels": labels, "runs": table})
    return metric, table, out


HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "r2", "precision", "recall", "auc")  # a metric's last word; others: lower


def better(metric: str, best: dict[str, Any]) -> str:
    """Whether `metric` is better "min" or "max": the run's own mode for the metric that picked its best epoch
    (`best`: run.json's), else by its name (acc, f1, r2 up; a loss, an error, bits, perplexity down)."""
    if metric == best.get("metric") and best.get("mode") in ("min", "max"):
        return str(best["mode"])
    return "max" if metric.split("_")[-1] in HIGHER_IS_BETTER else "min"


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The config keys whose values are not the same in every run (`-`: a run without the key), each with
    its values in run order; the name (the folder's suffix) and what the data determined left out."""
    flat = [flatten({k: v for k, v in c.items() if k not in ("derived", "name")}) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    values = {k: [plain(f[k]) if k in f else "-" for f in flat] for k in keys}
    return {k: v for k, v in values.items() if len(set(v)) > 1}


def legend_labels(ids: list[str], differs: dict[str, list[str]], most: int = 3) -> list[str]:
    """What tells each run apart (`cell=lstm, seed=2`; a key shortened to its last part where that stays
    unique), or its id where nothing or not enough does."""
    short = {k: k.rsplit(".", 1)[-1] for k in differs}
    names = {k: s if list(short.values()).count(s) == 1 else k for k, s in short.items()}
    keys = list(differs)[:most]
    more = f" (+{len(differs) - most})" if len(differs) > most else ""
    labels = [", ".join(f"{names[k]}={differs[k][i]}" for k in keys) + more for i in range(len(ids))]
    if not keys or len(set(labels)) < len(labels):
        return [f"{run_id}: {label}" if label else run_id for run_id, label in zip(ids, labels)]
    return labels

"""series: forecast a real time series from a CSV (one value column, an optional date column).

Windows of `lookback` steps predict the next `horizon` steps. The rows are split in time order,
never shuffled across it: the first rows train, the next validate, the last test; a window belongs
to the split that holds all its targets (its inputs may reach back into earlier rows, which were
known by then). The transform (`log` or none) and the scaling are fitted on the training rows only
and stored in the checkpoint. With `relative` windows the model sees each window minus its last
value and predicts the change from it, so a level it never saw in training is no harder than one it
did (the airline series grows out of its training range).

Two naive forecasts are scored by the same code on validation and test: the last value, and the
value one season earlier (`season`, inferred from the dates: 12 for monthly data).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from rnnctl.config import Config, DataConfig, ModelConfig
from rnnctl.data import locate, read_csv
from rnnctl.errors import DataError, RunError, clip
from rnnctl.models import SequenceRegressor
from rnnctl.tasks.base import Prepared
from rnnctl.tasks.regression import RegressionMeter, Scale, Windows

HISTORY = 2000  # values of the series' end kept in checkpoints for the forecast plot


class SeriesData(DataConfig):
    column: str | None = None  # the value column's header; null: the last column
    date_column: str | None = None  # null: the first column, if it is not the value column and not numbers
    lookback: int = Field(12, ge=1)  # input steps per window
    horizon: int = Field(1, ge=1)  # steps predicted at once from each window
    test_fraction: float = Field(0.2, gt=0, lt=1)  # the last rows; validation is the val_fraction before them
    transform: Literal["none", "log"] = "none"  # log: for positive series whose swings grow with the level
    relative: bool = False  # model each window relative to its last value (forecast the change)
    season: int | None = Field(None, ge=0)  # for the seasonal naive forecast; null: from the dates, 0: none


class SeriesModel(ModelConfig):
    cell: str = "lstm"
    hidden_size: int = Field(32, ge=1)


class SeriesTask:
    name = "series"
    data_config = SeriesData
    model_config = SeriesModel
    monitor, monitor_mode = "loss", "min"
    averages = "values"  # in an ensemble of its runs
    unit = "values"  # a batch's size counts predicted values
    report_splits = ("val", "test")  # both get a prediction-vs-truth plot at the end

    def prepare(self, cfg: Config, meta: dict[str, Any] | None = None) -> Prepared:
        data: SeriesData = cfg.data  # type: ignore[assignment]
        path = locate("airline", data.path)
        if path.is_dir():
            path = _one_csv(path)
        values, dates, column, lines = read_series(path, data.column, data.date_column)
        if data.transform == "log" and (bad := next((i for i, v in enumerate(values) if v <= 0), None)) is not None:
            raise DataError(
                f"{path}: row {lines[bad]}: the value {values[bad]:g} is not positive; data.transform: log needs "
                "every value > 0 (set data.transform: none for this series)"
            )
        n = len(values)
        if meta is not None and meta.get("rows", n) != n:  # eval on a file that changed since training
            raise DataError(
                f"{path}: {n} rows, but the run was trained on {meta['rows']}: its splits would move "
                f"(point data.path at the file it was trained on)"
            )
        n_test = max(round(n * data.test_fraction), data.horizon)
        n_val = max(round(n * data.val_fraction), data.horizon)
        n_train = n - n_val - n_test
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
        need = data.lookback + data.horizon
        if n_train < need:
            raise DataError(
                f"{path}: {n} rows are too few: training needs at least data.lookback + data.horizon = {need} rows "
                f"besides the {n_val} validation and {n_test} test rows"
            )
        v = torch.tensor(values, dtype=torch.float64)
        if meta is None:  # fitted on the training rows only
            f = v[:n_train].log() if data.transform == "log" else v[:n_train]
            scale = Scale(
                float(f.mean()), float(f.std()) if n_train > 1 and float(f.std()) > 0 else 1.0, data.transform == "log"
            )
        else:
            scale = Scale(**meta["scale"])
        step = time_step(dates)
        season = data.season if data.season is not None else _season(step)
        z = scale.forward(v)
        splits = {
            name: windows(z, v, lo, hi, data.lookback, data.horizon, data.relative, season)
            for name, (lo, hi) in bounds.items()
        }
        if meta is None:
            tail = slice(max(n - max(HISTORY, data.lookback), 0), n)  # forecasts start from the last lookback
            meta = {
                "rows": n,
                "scale": scale.to_dict(),
                "lookback": data.lookback,
                "horizon": data.horizon,
                "relative": data.relative,
                "column": column,
                "dates": dates,
                "step": step,
                "history": {"values": values[tail], "dates": dates[tail] if dates else None, "start": tail.start},
            }
        derived = {
            "column": column,
            "rows": {k: hi - lo for k, (lo, hi) in bounds.items()},
            "windows": {k: len(s) for k, s in splits.items()},
            "first_row": {k: (dates[lo] if dates else lo) for k, (lo, _) in bounds.items()},
            "scale": scale.to_dict(),
            "season": season,
        }
        return Prepared(meta=meta, splits=splits, derived=derived)

    def build_model(self, cfg: Config, meta: dict[str, Any], init: Any = None) -> torch.nn.Module:
        return SequenceRegressor(cfg.model, input_size=1, horizon=meta["horizon"])

    def meter(self, meta: dict[str, Any], detailed: bool = False) -> RegressionMeter:
        return RegressionMeter(Scale(**meta["scale"]), per_step=False, detailed=detailed, dates=meta["dates"])

    @torch.no_grad()
    def forecast(self, model: torch.nn.Module, meta: dict[str, Any], steps: int) -> dict[str, Any]:
        """The next `steps` values after the end of the series, each window's forecast fed back as input."""
        if steps < 1:
            raise RunError(f"--horizon {steps}: must be at least 1")
        scale, lookback = Scale(**meta["scale"]), meta["lookback"]
        history = meta["history"]
        values = list(history["values"])
        device = next(model.parameters()).device
        model.eval()
        out: list[float] = []
        while len(out) < steps:
            z = scale.forward(torch.tensor(values[-lookback:], dtype=torch.float64))
            base = z[-1] if meta["relative"] else torch.tensor(0.0, dtype=torch.float64)
            x = (z - base).float().view(1, lookback, 1).to(device)
            pred = model(x).logits[0].double().cpu() + base  # (horizon,)
            new = scale.inverse(pred).tolist()[: steps - len(out)]
            out += new
            values += new
        dates = future_dates(history["dates"], meta["step"], steps)
        end = history["start"] + len(history["values"])  # row index after the last row of the data
        labels = dates or [str(end + i) for i in range(steps)]
        return {
            "time": "date" if dates else "step",
            "column": meta["column"],
            "rows": [[t, v] for t, v in zip(labels, out)],
            "history": history,
        }


def windows(z, v, lo: int, hi: int, lookback: int, horizon: int, relative: bool, season: int) -> Windows:
    """The windows whose targets all lie in rows [lo, hi): inputs (N, lookback, 1), targets (N, horizon)."""
    starts = torch.arange(max(lo, lookback), hi - horizon + 1)  # first target row of each window
    ahead = torch.arange(horizon)
    inputs = z[starts.unsqueeze(1) + torch.arange(-lookback, 0)]  # (N, lookback)
    targets = z[starts.unsqueeze(1) + ahead]  # (N, horizon)
    base = z[starts - 1] if relative else torch.zeros(len(starts), dtype=z.dtype)
    naive = {}
    if lo > 0 and len(starts):  # validation and test: the naive forecasts, in original units
        naive["last"] = v[starts - 1].unsqueeze(1).expand(-1, horizon)  # the last value, held
        if season and int(starts.min()) >= season:  # the latest value of the same season, e.g. month last year
            naive["seasonal"] = v[starts.unsqueeze(1) - season + ahead % season]
    return Windows(
        (inputs - base.unsqueeze(1)).float().unsqueeze(-1), (targets - base.unsqueeze(1)).float(), base.float(),
        starts.unsqueeze(1) + ahead, {k: t.float() for k, t in naive.items()},
    )  # fmt: skip


def read_series(
    path: Path, column: str | None, date_column: str | None
) -> tuple[list[float], list[str] | None, str, list[int]]:
    """(values, dates or None, the value column's name, each value's line in the file) from a CSV with or
    without a header row. Dates that parse must increase: the split is by time."""
    rows = read_csv(path)
    if not rows:
        raise DataError(f"{path}: no rows (expected a CSV with a numeric column)")
    first = [f.strip() for f in rows[0][1]]
    header = not all(_is_number(f) for f in first[1:] or first)  # a row whose value fields are not numbers
    names = first if header else [str(i + 1) for i in range(len(first))]
    if header:
        rows = rows[1:]
    if column is None:
        col = len(names) - 1
    elif column in names:
        col = names.index(column)
    else:
        raise DataError(f"data.column: {clip(column)} is not a column of {path} (columns: {_columns(names)})")
    if date_column is not None:
        if date_column not in names:
            raise DataError(
                f"data.date_column: {clip(date_column)} is not a column of {path} (columns: {_columns(names)})"
            )
        dcol = names.index(date_column)
    else:
        dcol = 0 if col != 0 and rows and not _is_number(rows[0][1][0].strip()) else None
    values, dates, lines = [], [], []
    for line, fields in rows:
        if len(fields) != len(names):
            raise DataError(f"{path}: row {line}: expected {len(names)} fields, got {len(fields)}")
        raw = fields[col].strip()
        if not raw:
            raise DataError(f"{path}: row {line}: missing value in column {clip(names[col])}")
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{path}: row {line}: {clip(raw)} in column {clip(names[col])} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{path}: row {line}: {clip(raw)} in column {clip(names[col])} is not a finite number")
        values.append(value)
        lines.append(line)
        if dcol is not None:
            dates.append(fields[dcol].strip())
    if len(values) < 3:
        raise DataError(f"{path}: {len(values)} values are too few for a series")
    if dcol is not None and (t := _parse_dates(dates)) is not None:
        bad = np.flatnonzero(np.diff(t) <= np.timedelta64(0))
        if len(bad):
            i = int(bad[0]) + 1
            raise DataError(
                f"{path}: row {lines[i]}: date {clip(dates[i])} does not come after {clip(dates[i - 1])} "
                f"(the rows must be in time order, oldest first)"
            )
    return values, (dates if dcol is not None else None), names[col], lines


def _parse_dates(dates: list[str]) -> np.ndarray | None:
    try:
        return np.array(dates, dtype="datetime64")
    except ValueError:
        return None


def time_step(dates: list[str] | None) -> dict[str, Any] | None:
    """The series' usual step from ISO dates: a numpy unit and a count, plus the day within the month for
    monthly data written with days ("2001-01-01", "2001-02-01" is 1 month, not 31 days); None if the
    dates do not parse."""
    t = _parse_dates(dates) if dates else None
    if t is None or len(t) < 2:
        return None
    unit = np.datetime_data(t.dtype)[0]
    day = None
    if unit == "D":
        months = t.astype("datetime64[M]")
        within = (t - months.astype("datetime64[D]")).astype(np.int64)  # days into each month
        if (within == within[0]).all() and (np.diff(months) > np.timedelta64(0)).all():
            t, unit, day = months, "M", int(within[0])  # the same day of every month: monthly (or coarser)
    diffs = np.diff(t).astype(np.int64)
    values, counts = np.unique(diffs, return_counts=True)
    step: dict[str, Any] = {"unit": unit, "n": int(values[counts.argmax()])}
    if day is not None:
        step["day"] = day
    return step


def future_dates(dates: list[str] | None, step: dict[str, Any] | None, n: int) -> list[str] | None:
    if not dates or not step:
        return None
    unit = step["unit"]
    last = np.datetime64(dates[-1]).astype(f"datetime64[{unit}]")
    out = [last + np.timedelta64(step["n"] * (i + 1), unit) for i in range(n)]
    if "day" in step:  # written with a day, as the data is
        return [str(t.astype("datetime64[D]") + np.timedelta64(step["day"], "D")) for t in out]
    return [str(t) for t in out]


def _season(step: dict[str, Any] | None) -> int:
    if not step or step["n"] != 1:
        return 0
    return {"M": 12, "W": 52, "D": 365, "h": 24}.get(step["unit"], 0)


def _columns(names: list[str]) -> str:
    """The header row as an error lists it: on one line, cut to a short length."""
    text = ", ".join(names)
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:80] + "..."


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _one_csv(folder: Path) -> Path:
    csvs = sorted(p for p in folder.iterdir() if ".csv" in p.name)
    if len(csvs) != 1:
        raise DataError(f"data.path: {folder}: expected one CSV file, found {len(csvs)} (point data.path at the file)")
    return csvs[0]

"""Sequence regression: sine/sincos (generated waves, carried state) and series (a CSV time series)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, assert_one_line_error, monthly_csv, run_dirs

from rnnctl import loop, training, views
from rnnctl.config import ModelConfig
from rnnctl.config import load_config
from rnnctl.models import SequenceRegressor
from rnnctl.tasks import get_task
from rnnctl.tasks.regression import RegressionMeter, Scale, Streams, regression_metrics
from rnnctl.tasks.series import future_dates, read_series, time_step

SERIES_TINY = CONFIGS / "smoke" / "series_tiny.yaml"
SINCOS_TINY = CONFIGS / "smoke" / "sincos_tiny.yaml"


def series_cfg(path: Path, *more: str):
    return load_config(SERIES_TINY, [f"data.path={path}", *more])


# -- the real CLI, end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_summary_names_a_naive_forecast_that_beats_the_model(cli, tmp_path, isolated):
    """One epoch at a tiny learning rate on absolute values: holding the last value forecasts far better."""
    csv = monthly_csv(tmp_path / "air.csv")
    more = ["train.epochs=1", "data.relative=false", "optim.lr=0.0001"]
    result = cli("train", SERIES_TINY, "--set", f"data.path={csv}", *[a for m in more for a in ("--set", m)])
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    report = json.loads((run / "eval" / "test-best.json").read_text())
    assert report["naive"]["last"]["rmse"] < report["rmse"]
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    last, model = report["naive"]["last"]["rmse"], report["rmse"]
    assert note == f"note: the naive forecast 'last value' (RMSE {last:.4g}) beats the model (RMSE {model:.4g}) on test"


def test_no_note_when_the_model_wins_or_there_is_no_naive_forecast():
    naive = {"last": {"rmse": 25.6, "mae": 20.0}, "seasonal": {"rmse": 30.1}}
    assert views.naive_note({"split": "test", "rmse": 4.1, "naive": naive}) is None  # the model wins
    assert views.naive_note({"split": "test", "acc": 0.4, "macro_f1": 0.3}) is None  # a classifier's report
    assert views.naive_note({"split": "test", "rmse": float("nan"), "naive": naive}) is None  # a diverged model
    beaten = views.naive_note({"split": "test", "rmse": 28.0, "naive": naive})
    assert beaten == "note: the naive forecast 'last value' (RMSE 25.6) beats the model (RMSE 28) on test"


def test_series_train_eval_predict_through_the_cli(cli, tmp_path, isolated):
    csv = monthly_csv(tmp_path / "air.csv")
    result = cli("train", SERIES_TINY, "--set", f"data.path={csv}")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    report = json.loads((run / "eval" / "test-best.json").read_text())
    for key in ("mse", "mae", "rmse", "r2"):
        assert math.isfinite(report[key])
    assert set(report["naive"]) == {"last", "seasonal"}  # monthly dates: the season is 12
    assert report["series"]["dates"][0] == "2007-06"  # test: the last 20% of 96 rows, from row 77 = 2001-01 + 77 months
    for name in ("prediction_val.png", "prediction_test.png", "loss.png", "mae.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "train_mse", "train_mae", "val_loss", "val_mse", "val_mae"} <= set(rows[0])

    result = cli("eval", run.name)
    assert result.exit_code == 0, result.output
    assert "rmse" in result.stdout and "naive forecast (seasonal)" in result.stdout
    test = json.loads((run / "run.json").read_text())["test"]
    again = json.loads((run / "eval" / "test-best.json").read_text())
    assert again["rmse"] == pytest.approx(test["rmse"], rel=1e-9) and again["r2"] == pytest.approx(test["r2"], rel=1e-9)

    result = cli("predict", run.name, "--horizon", "5")
    assert result.exit_code == 0, result.output
    lines = (run / "forecast" / "forecast-5.csv").read_text().splitlines()
    assert lines[0] == "date,Passengers"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["2009-01", "2009-02", "2009-03", "2009-04", "2009-05"]
    assert all(math.isfinite(float(ln.split(",")[1])) for ln in lines[1:])
    assert (run / "forecast" / "forecast-5.png").stat().st_size > 1000
    assert cli("predict", run.name, "--horizon", "5").exit_code == 0
    assert (run / "forecast" / "forecast-5.csv").read_text().splitlines() == lines  # deterministic


@pytest.mark.slow
def test_runs_lists_a_regressor_by_its_mse_in_the_datas_units(cli, tmp_path, isolated, monkeypatch):
    """A series run picks its best epoch by the loss in scaled units; `runs` shows that epoch's MSE in the
    data's units (as a sweep ranks it), and its test MSE."""
    monkeypatch.setenv("COLUMNS", "80")
    csv = monthly_csv(tmp_path / "air.csv")
    assert cli("train", SERIES_TINY, "--set", f"data.path={csv}", "--set", "train.epochs=2").exit_code == 0
    (run,) = run_dirs(isolated)
    info = json.loads((run / "run.json").read_text())
    row = next(
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["step"] == info["best"]["step"]
    )
    assert abs(row["val_mse"] - row["val_loss"]) > 1e-3  # the two are not the same number here
    expected = f"mse {row['val_mse']:.4f} @{info['best']['epoch']}"
    for sort in ("created", "best"):
        result = cli("runs", "--sort", sort)
        assert result.exit_code == 0, result.output
        line = next(line for line in result.stdout.splitlines() if line.startswith(run.name))
        assert expected in line and f"mse {info['test']['mse']:.4f}" in line and "loss" not in line, line


def test_sincos_train_and_eval_through_the_cli(cli, isolated):
    result = cli("train", SINCOS_TINY)
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["test"]["mse"] < 0.5  # cos has variance 0.5: it learned something
    assert (run / "plots" / "prediction_test.png").exists()
    result = cli("eval", run.name)  # a carried state again: windows in order from a fresh state per stream group
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "test-best.json").read_text())
    assert report["mse"] == pytest.approx(info["test"]["mse"], rel=1e-9)  # eval reproduces the end-of-training test
    assert_one_line_error(cli("predict", run.name, "--horizon", "3"), "not a time series")
    assert_one_line_error(cli("predict", run.name, "x"), "rnnctl eval")


@pytest.mark.slow
def test_predict_needs_inputs_or_horizon(cli, tmp_path, isolated):
    assert cli("train", SERIES_TINY, "--set", f"data.path={monthly_csv(tmp_path / 'a.csv')}").exit_code == 0
    (run,) = run_dirs(isolated)
    assert "INPUT" not in assert_one_line_error(cli("predict", run.name), "it forecasts", "--horizon N")
    assert_one_line_error(cli("predict", run.name, "x"), "--horizon")
    assert_one_line_error(cli("predict", run.name, "x", "--horizon", "2"), "no INPUTS")
    assert_one_line_error(cli("predict", run.name, "--horizon", "0"), "--horizon 0")


@pytest.mark.slow
def test_predict_without_inputs_says_what_a_run_that_cannot_classify_does(cli, isolated):
    """`predict RUN` on a sincos run asked for INPUT arguments it would then refuse: it says what the run does."""
    assert cli("train", SINCOS_TINY, "--quiet").exit_code == 0
    (run,) = run_dirs(isolated)
    error = assert_one_line_error(cli("predict", run.name), "is a sincos run", "does not classify", "rnnctl eval RUN")
    assert "INPUT" not in error and "--horizon" not in error, error


@pytest.mark.slow
def test_same_config_same_numbers(tmp_path):
    csv = monthly_csv(tmp_path / "a.csv")
    a = loop.train(series_cfg(csv), command="a", loggers=[], root=tmp_path / "r1")
    b = loop.train(series_cfg(csv), command="b", loggers=[], root=tmp_path / "r2")
    assert a["test"] == b["test"]


# -- chronological split and normalization ------------------------------------------------------


def test_split_is_chronological_and_never_leaks(tmp_path):
    csv = monthly_csv(tmp_path / "a.csv", n=120)
    task = get_task("series")
    data = task.prepare(series_cfg(csv, "data.lookback=12", "data.horizon=3"))
    rows = {"train": (0, 84), "val": (84, 96), "test": (96, 120)}  # 10% val, 20% test of 120 rows
    assert data.derived["rows"] == {k: hi - lo for k, (lo, hi) in rows.items()}
    last = -1
    for name in ("train", "val", "test"):
        split = data.splits[name]
        lo, hi = rows[name]
        targets = split.time  # (N, horizon): the rows each window predicts
        assert int(targets.min()) >= lo and int(targets.max()) < hi  # every target inside its own split
        assert int(targets.min()) > last  # after every target of the previous split
        last = int(targets.max())
    # a window's inputs are the rows just before its first target, never the targets themselves
    z = Scale(**data.meta["scale"]).forward(torch.tensor(read_series(csv, None, None)[0], dtype=torch.float64))
    split = data.splits["test"]
    start = int(split.time[0, 0])
    torch.testing.assert_close(
        split.x[0, :, 0].double() + split.base[0].double(), z[start - 12 : start].float().double()
    )


def test_scale_is_fitted_on_training_rows_only(tmp_path):
    values = [float(10 + i % 7) for i in range(100)]
    a = get_task("series").prepare(series_cfg(monthly_csv(tmp_path / "a.csv", values=values)))
    spoiled = values[:70] + [1e6] * 30  # only validation and test rows change
    b = get_task("series").prepare(series_cfg(monthly_csv(tmp_path / "b.csv", values=spoiled)))
    assert a.meta["scale"] == b.meta["scale"]
    train = torch.tensor(values[:70]).double().log()
    assert a.meta["scale"]["mean"] == pytest.approx(float(train.mean()))
    assert a.meta["scale"]["std"] == pytest.approx(float(train.std()))


def test_naive_baselines_on_a_straight_line(tmp_path):
    """v_t = t: holding the last value is off by k+1 at step k; the value a season (12) back is off by 12."""
    csv = monthly_csv(tmp_path / "line.csv", n=60, values=[float(i + 1) for i in range(60)])
    cfg = series_cfg(csv, "data.horizon=2", "data.transform=none", "data.relative=false")
    task = get_task("series")
    data = task.prepare(cfg)
    meter = task.meter(data.meta, detailed=True)
    model = task.build_model(cfg, data.meta)
    training.evaluate(model, data.splits["test"], meter, torch.device("cpu"), 8)
    naive = meter.report()["naive"]
    assert naive["last"]["mae"] == pytest.approx(1.5)  # errors 1 and 2
    assert naive["seasonal"]["mae"] == pytest.approx(12.0)


def test_regression_metrics():
    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
    assert m["mse"] == pytest.approx(4 / 3) and m["mae"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / (((torch.tensor([1.0, 2, 5]) - 8 / 3) ** 2).sum().item()))


def test_meter_reports_original_units():
    scale = Scale(mean=100.0, std=10.0)
    meter = RegressionMeter(scale, per_step=False)
    from rnnctl.models import Output
    from rnnctl.tasks.regression import WindowBatch

    batch = WindowBatch(
        torch.zeros(2, 3, 1), torch.tensor([[0.0], [1.0]]), torch.zeros(2), torch.zeros(2, dtype=torch.int64),
        torch.tensor([[5], [6]]),
    )  # fmt: skip
    meter.update(batch, Output(torch.tensor([[0.5], [1.0]]), None))
    got = meter.compute()
    assert got["loss"] == pytest.approx(0.125)  # model space
    assert got["mse"] == pytest.approx(12.5) and got["mae"] == pytest.approx(2.5)  # x10 in original units


def test_dates_give_the_step_and_the_season():
    assert time_step(["1949-01", "1949-02", "1949-03"]) == {"unit": "M", "n": 1}
    assert time_step(["1981-01-01", "1981-01-02", "1981-01-04"]) == {"unit": "D", "n": 1}  # a gap is not the step
    assert time_step(["a", "b"]) is None and time_step(None) is None
    monthly = ["2000-11-01", "2000-12-01", "2001-01-01", "2001-02-01"]  # monthly data written with days
    assert time_step(monthly) == {"unit": "M", "n": 1, "day": 0}
    assert future_dates(monthly, time_step(monthly), 3) == ["2001-03-01", "2001-04-01", "2001-05-01"]
    quarterly = ["2000-01-15", "2000-04-15", "2000-07-15"]
    assert future_dates(quarterly, time_step(quarterly), 2) == ["2000-10-15", "2001-01-15"]
    assert future_dates(["1960-11", "1960-12"], {"unit": "M", "n": 1}, 2) == ["1961-01", "1961-02"]


def test_monthly_dates_with_days_keep_the_seasonal_baseline(tmp_path):
    path = tmp_path / "days.csv"
    values = [100 + 10 * math.sin(i) + i for i in range(60)]
    path.write_text("date,v\n" + "".join(f"{2001 + i // 12}-{i % 12 + 1:02d}-01,{v}\n" for i, v in enumerate(values)))
    data = get_task("series").prepare(series_cfg(path))
    assert data.derived["season"] == 12 and "seasonal" in data.splits["test"].naive


def test_rows_out_of_time_order_are_one_line(cli, tmp_path, isolated):
    path = tmp_path / "newest-first.csv"
    path.write_text("date,v\n" + "".join(f"{2010 - i}-01-01,{i}\n" for i in range(40)))
    assert_one_line_error(cli("train", SERIES_TINY, "--set", f"data.path={path}"), "row 3", "time order")
    assert run_dirs(isolated) == []


def test_a_value_the_log_transform_cannot_take_is_one_plain_line(cli, tmp_path, isolated):
    values = [round(100 + 10 * math.sin(i), 1) for i in range(96)]
    values[40] = 0
    path = monthly_csv(tmp_path / "zero.csv", values=values)
    args = ["train", SERIES_TINY, "--set", f"data.path={path}", "--set", "data.transform=log"]
    line = assert_one_line_error(cli(*args), str(path), "row 42: the value 0 is not positive", "data.transform: none")
    assert "<=" not in line and ", and" not in line, line
    assert run_dirs(isolated) == []


def test_eval_on_a_changed_file_is_one_line(cli, tmp_path, isolated):
    csv = monthly_csv(tmp_path / "a.csv")
    assert cli("train", SERIES_TINY, "--set", f"data.path={csv}").exit_code == 0
    (run,) = run_dirs(isolated)
    monthly_csv(csv, n=120)  # the file grew since training
    assert_one_line_error(cli("eval", run.name), "120 rows", "trained on 96")


def test_shipped_airline_config_reads_the_packaged_series(monkeypatch):
    """RNNCTL_DATA holds other data sets (the fixture's empty folder): the packaged airline copy is used."""
    data = get_task("series").prepare(load_config(CONFIGS / "series_airline.yaml"))
    assert data.derived["rows"] == {"train": 101, "val": 14, "test": 29}
    assert data.derived["first_row"]["test"] == "1958-08" and data.derived["season"] == 12
    monkeypatch.delenv("RNNCTL_DATA")
    again = get_task("series").prepare(load_config(CONFIGS / "series_airline.yaml"))
    assert again.meta["scale"] == data.meta["scale"]


# -- bad CSVs and configs: one line, exit 1, no run folder -----------------------------------------


@pytest.mark.parametrize(
    "body, needles",
    [
        ('"Month","P"\r\n"2001-01",1\r\n"2001-02",abc\r\n"2001-03",2', ["row 3", "'abc'", "not a number"]),
        ('"Month","P"\r\n"2001-01",1\r\n"2001-02",\r\n"2001-03",2', ["row 3", "missing value"]),
        ('"Month","P"\r\n"2001-01",1\r\n"2001-02",nan\r\n"2001-03",2', ["row 3", "finite"]),
        ('"Month","P"\r\n"2001-01",1\r\n"2001-02",5,6\r\n"2001-03",2', ["row 3", "expected 2 fields"]),
        ('"Month","P"\r\n"2001-01",1\r\n"2001-02",3\r\n"2001-03",2', ["3 rows are too few", "data.lookback"]),
    ],
)
def test_bad_csv_is_one_line(cli, tmp_path, isolated, body, needles):
    path = tmp_path / "bad.csv"
    path.write_text(body, encoding="utf-8")
    assert_one_line_error(cli("train", SERIES_TINY, "--set", f"data.path={path}"), str(path), *needles)
    assert run_dirs(isolated) == []


def test_bad_series_keys(cli, tmp_path, isolated):
    csv = monthly_csv(tmp_path / "a.csv")
    args = ["train", SERIES_TINY, "--set", f"data.path={csv}"]
    assert_one_line_error(cli(*args, "--set", "data.column=Pax"), "data.column", "'Pax'", "Month, Passengers")
    assert_one_line_error(cli(*args, "--set", "data.date_column=Day"), "data.date_column")
    assert_one_line_error(cli(*args, "--set", "data.lookback=0"), "data.lookback")
    assert_one_line_error(cli(*args, "--set", "data.transform=sqrt"), "data.transform")
    negative = monthly_csv(tmp_path / "neg.csv", values=[5.0] * 40 + [-1.0] + [5.0] * 40)
    assert_one_line_error(cli("train", SERIES_TINY, "--set", f"data.path={negative}"), "row 42", "log")  # line 42
    assert_one_line_error(cli("train", SINCOS_TINY, "--set", "model.bidirectional=true"), "model: bidirectional")
    sine = CONFIGS / "sine_rnn.yaml"  # its target is the next input: a backward direction would read it
    assert_one_line_error(cli("train", sine, "--set", "model.bidirectional=true"), "model: bidirectional")
    assert_one_line_error(cli("train", SINCOS_TINY, "--set", "data.window=500"), "window")
    assert run_dirs(isolated) == []


def test_headerless_csv_uses_the_last_column(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(f"{i},{i * 2.5}" for i in range(30)), encoding="utf-8")
    values, dates, column, _ = read_series(path, None, None)
    assert values[:3] == [0.0, 2.5, 5.0] and dates is None and column == "2"


# -- carried state (sincos) ----------------------------------------------------------------------


def test_streams_serve_every_window_once_and_in_order_per_group():
    x = torch.arange(5 * 40, dtype=torch.float32).view(5, 40, 1)
    split = Streams(x, x.squeeze(-1), window=10, carry=True)
    seen = []
    groups: dict[tuple, list[int]] = {}
    batches = list(split.batches(2, torch.Generator().manual_seed(0)))
    assert len(batches) == split.num_batches(2) == 3 * 4  # 3 groups of streams (2, 2, 1) x 4 windows
    for b in batches:
        key = tuple(b.stream.tolist())
        groups.setdefault(key, []).append(int(b.time[0, 0]))
        assert b.fresh == (int(b.time[0, 0]) == 0)
        seen += [(s, int(t)) for s, row in zip(b.stream.tolist(), b.time) for t in row]
    assert sorted(seen) == [(s, t) for s in range(5) for t in range(40)]  # every value exactly once
    assert all(times == [0, 10, 20, 30] for times in groups.values())  # each group walks its streams in order
    shuffled = Streams(x, x.squeeze(-1), window=10, carry=False)
    got = sorted((s, int(t)) for b in shuffled.batches(3, torch.Generator().manual_seed(0))
                 for s, row in zip(b.stream.tolist(), b.time) for t in row)  # fmt: skip
    assert got == [(s, t) for s in range(5) for t in range(40)]


def test_carried_state_is_detached_between_windows():
    torch.manual_seed(0)
    model = SequenceRegressor(ModelConfig(cell="rnn", hidden_size=6, layers=2), input_size=1, carry=True)
    calls = []
    forward = model.forward

    def wrapped(*args, state=None, **kwargs):
        out = forward(*args, state=state, **kwargs)
        calls.append({"in": state, "out": out.state, "fresh": kwargs["fresh"]})
        return out

    model.forward = wrapped
    x = torch.randn(4, 50, 1)
    split = Streams(x, x.squeeze(-1).roll(1, dims=1), window=10, carry=True)
    meter = RegressionMeter(Scale(), per_step=True)
    training.train_epoch(
        model, split, meter, torch.optim.Adam(model.parameters(), lr=0.01), torch.device("cpu"), 4,
        torch.Generator().manual_seed(0), grad_clip=1.0,
    )  # fmt: skip
    assert len(calls) == 5 and calls[0]["fresh"] and not any(c["fresh"] for c in calls[1:])
    for prev, call in zip(calls, calls[1:]):
        assert call["in"].grad_fn is None and not call["in"].requires_grad  # detached...
        assert prev["out"].grad_fn is not None
        assert torch.equal(call["in"], prev["out"])  # ...but carried, values intact


def test_fresh_window_ignores_a_carried_state():
    torch.manual_seed(0)
    model = SequenceRegressor(ModelConfig(cell="gru", hidden_size=5), input_size=1, carry=True)
    x = torch.randn(2, 7, 1)
    stale = torch.randn(1, 2, 5)
    assert torch.equal(model(x, state=stale, fresh=True).logits, model(x).logits)
    assert not torch.equal(model(x, state=stale).logits, model(x).logits)
    plain = SequenceRegressor(ModelConfig(cell="gru", hidden_size=5), input_size=1, carry=False)
    assert plain(x).state is None  # nothing to carry: the loop passes None back


def test_sine_targets_are_the_next_clean_value():
    cfg = load_config(CONFIGS / "sine_rnn.yaml", ["data.noise=0"])
    data = get_task("sine").prepare(cfg)
    split = data.splits["train"]
    assert not split.carry
    torch.testing.assert_close(split.y[:, :-1], split.x[:, 1:, 0], atol=1e-6, rtol=0)  # y_t = x_{t+1}

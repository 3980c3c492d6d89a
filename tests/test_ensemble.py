"""Ensembles: `rnnctl eval SWEEP|STUDY` and `rnnctl predict SWEEP|STUDY` average the members' probabilities
(classifiers, language models) or predictions (regressors), optionally of the top K by validation metric."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, TINY, assert_one_line_error, monthly_csv

SERIES_TINY = CONFIGS / "smoke" / "series_tiny.yaml"
CHARLM_TINY = CONFIGS / "smoke" / "charlm_tiny.yaml"


def _config(where: Path, base: Path, data: dict, **train) -> Path:
    raw = yaml.safe_load(base.read_text())
    raw["data"] = {**(raw.get("data") or {}), **data}
    raw["train"].update(train)
    path = where / f"{base.stem}-ensemble.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(cli, isolated: Path, config: Path, *grid: str) -> Path:
    args = [a for g in grid for a in ("--grid", g)]
    result = cli("sweep", config, *args)
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    return folder


def _members(folder: Path) -> list[Path]:
    return sorted((folder / "runs").iterdir())


@pytest.fixture
def names_sweep(cli, names_files, isolated):
    config = _config(isolated.parent, TINY, {"path": str(names_files.train), "test_path": str(names_files.test)},
                     epochs=2)  # fmt: skip
    return _sweep(cli, isolated, config, "train.seed=1,2,3")


@pytest.mark.slow
def test_eval_of_a_sweep_averages_the_members_probabilities(cli, names_files, names_sweep):
    from rnnctl.ensemble import EVERY_CLASS
    from rnnctl.inference import LoadedRun

    result = cli("eval", names_sweep.name)
    assert result.exit_code == 0, result.output
    assert f"using sweep {names_sweep.name}: all 3 completed members" in result.stderr
    report = json.loads((names_sweep / "eval" / "test-ensemble-best.json").read_text())
    assert [m["run"] for m in report["members"]] == sorted(
        (p.name for p in _members(names_sweep)),
        key=lambda r: -json.loads((names_sweep / "runs" / r / "run.json").read_text())["best"]["value"],
    )  # best validation first
    for m in report["members"]:  # each member's own test figures, as its training's final test had them
        test = json.loads((names_sweep / "runs" / m["run"] / "run.json").read_text())["test"]
        assert m["acc"] == pytest.approx(test["acc"]) and m["loss"] == pytest.approx(test["loss"], rel=1e-5)
    assert "ensemble" in result.stdout and all(m["run"] in result.stdout for m in report["members"])

    # the same ensemble by another road: each member's `predict` on the raw test names, probabilities averaged
    with names_files.test.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    names, labels = [r[0] for r in rows], [r[1] for r in rows]
    mean: list[dict[str, float]] = [{} for _ in names]
    for member in _members(names_sweep):
        ranked = LoadedRun(str(member)).predict(names, EVERY_CLASS)
        for i, row in enumerate(ranked):
            for label, p in row["top"]:
                mean[i][label] = mean[i].get(label, 0.0) + p / 3
    correct = sum(max(m, key=m.get) == y for m, y in zip(mean, labels))
    nll = -sum(math.log(m[y]) for m, y in zip(mean, labels)) / len(labels)
    assert report["ensemble"]["n"] == len(labels)
    assert report["ensemble"]["acc"] == pytest.approx(correct / len(labels))
    assert report["ensemble"]["loss"] == pytest.approx(nll, rel=1e-4)
    member_losses = [m["loss"] for m in report["members"]]
    assert report["ensemble"]["loss"] <= sum(member_losses) / 3  # Jensen: the mixture's NLL is never worse
    assert sum(c["support"] for c in report["ensemble"]["per_class"]) == len(labels)


@pytest.mark.slow
def test_top_members_and_predict_of_a_sweep(cli, names_sweep):
    result = cli("eval", names_sweep.name, "--top-members", "1", "--split", "val")
    assert result.exit_code == 0, result.output
    assert "the top 1 of 3 completed members by val_acc" in result.stderr
    report = json.loads((names_sweep / "eval" / "val-ensemble-best-top1.json").read_text())
    (only,) = report["members"]
    infos = {p.name: json.loads((p / "run.json").read_text()) for p in _members(names_sweep)}
    assert infos[only["run"]]["best"]["value"] == max(i["best"]["value"] for i in infos.values())
    assert only["acc"] == pytest.approx(infos[only["run"]]["best"]["value"])  # its validation accuracy, again
    assert report["ensemble"]["acc"] == pytest.approx(only["acc"])  # an ensemble of one is that member
    assert report["ensemble"]["loss"] == pytest.approx(only["loss"], rel=1e-5)

    # predict: the members' mean probabilities, ranked; with --top-members 1, the best member's own
    one = cli("predict", names_sweep.name, "McKola", "Petrov", "--top-members", "1", "--top", "2")
    alone = cli("predict", only["run"], "McKola", "Petrov", "--top", "2")
    assert one.exit_code == 0 and alone.exit_code == 0, one.output + alone.output
    assert one.stdout == alone.stdout
    every = cli("predict", names_sweep.name, "McKola", "--top", "4")
    assert every.exit_code == 0, every.output
    assert "using sweep" in every.stderr and "McKola" in every.stdout
    shares = [float(cell.rstrip("%")) for cell in every.stdout.split() if cell.endswith("%")]
    assert len(shares) == 4 and sum(shares) == pytest.approx(100, abs=0.3) and shares == sorted(shares, reverse=True)


@pytest.mark.slow
def test_members_that_do_not_share_the_data_are_refused(cli, names_files, isolated):
    config = _config(isolated.parent, TINY, {"path": str(names_files.train), "test_path": str(names_files.test)},
                     epochs=1)  # fmt: skip
    folder = _sweep(cli, isolated, config, "data.val_fraction=0.1,0.2")
    for args in (["eval", folder.name], ["predict", folder.name, "Smith"]):
        assert_one_line_error(cli(*args), "do not share the task and the data", "data.val_fraction")
    assert not (folder / "eval").exists()


def test_ensemble_argument_errors(cli, copy_run, isolated):
    assert_one_line_error(cli("eval", copy_run.name, "--top-members", "2"), "--top-members", "is a run")
    assert_one_line_error(cli("eval", "no-such-thing"), "unknown run", "nor is it a sweep or a study")
    assert_one_line_error(cli("eval", copy_run.name, "--top-members", "0"), "--top-members")  # K >= 1
    empty = isolated / "sweeps" / "empty"
    (empty / "runs").mkdir(parents=True)
    (empty / "study.json").write_text('{"kind": "sweep"}')
    assert_one_line_error(cli("eval", "empty"), "no completed member")


@pytest.mark.slow
def test_a_series_sweep_averages_predictions_and_forecasts(cli, tmp_path, isolated):
    config = _config(isolated.parent, SERIES_TINY, {"path": str(monthly_csv(tmp_path / "air.csv"))})
    folder = _sweep(cli, isolated, config, "train.seed=1,2")
    forecasts = []
    for member in _members(folder):
        assert cli("predict", member.name, "--horizon", "4").exit_code == 0
        rows = (member / "forecast" / "forecast-4.csv").read_text().splitlines()[1:]
        forecasts.append([float(r.split(",")[1]) for r in rows])
    result = cli("predict", folder.name, "--horizon", "4")
    assert result.exit_code == 0, result.output
    rows = (folder / "forecast" / "ensemble-best-4.csv").read_text().splitlines()
    assert rows[0] == "date,Passengers" and len(rows) == 5
    mean = [(a + b) / 2 for a, b in zip(*forecasts)]
    assert [float(r.split(",")[1]) for r in rows[1:]] == pytest.approx(mean, rel=1e-9)
    assert (folder / "forecast" / "ensemble-best-4.png").stat().st_size > 1000

    result = cli("eval", folder.name)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "eval" / "test-ensemble-best.json").read_text())
    assert report["averages"] == "values" and math.isfinite(report["ensemble"]["rmse"])
    # the mean prediction's squared error is at most the members' mean squared error (convexity)
    assert report["ensemble"]["loss"] <= sum(m["loss"] for m in report["members"]) / 2 + 1e-12


@pytest.mark.slow
def test_a_language_model_sweep_mixes_next_character_distributions(cli, tmp_path, isolated):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. a dog ate the hat. " * 40)
    config = _config(isolated.parent, CHARLM_TINY, {"path": str(text)}, epochs=1)
    folder = _sweep(cli, isolated, config, "train.seed=1,2")
    result = cli("eval", folder.name)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "eval" / "val-ensemble-best.json").read_text())
    losses = [m["loss"] for m in report["members"]]
    for m in report["members"]:  # each member's figure is its own validation loss
        best = json.loads((folder / "runs" / m["run"] / "run.json").read_text())["best"]["value"]
        assert m["loss"] == pytest.approx(best, rel=1e-5)
    assert report["ensemble"]["loss"] <= sum(losses) / 2  # the mixture's NLL (Jensen)
    assert report["ensemble"]["loss"] != pytest.approx(losses[0], rel=1e-6)  # the mixture is not member 0


def test_a_saved_run_and_an_ensemble_have_one_interface():
    """`eval` and `predict` call the same names with the same arguments on either (inference.Inference): a
    property where the protocol has one, a method with the protocol's parameters where it has a method."""
    import inspect

    from rnnctl.ensemble import Ensemble
    from rnnctl.inference import Inference, LoadedRun

    names = [n for n in vars(Inference) if not n.startswith("_")]
    assert {"name", "used", "evaluate", "predict", "forecast"} <= set(names)
    for name in names:
        wanted = inspect.getattr_static(Inference, name)
        for cls in (LoadedRun, Ensemble):
            found = inspect.getattr_static(cls, name)
            assert type(found) is type(wanted), (cls.__name__, name)
            if not isinstance(wanted, property):
                assert inspect.signature(found).parameters.keys() == inspect.signature(wanted).parameters.keys()


def test_combine_is_the_log_of_the_mean_probability():
    from rnnctl.ensemble import combine

    a, b = torch.randn(5, 3), torch.randn(5, 3)
    mixed = combine([a, b], "probabilities")
    assert torch.allclose(mixed.softmax(-1), (a.softmax(-1) + b.softmax(-1)) / 2, atol=1e-6)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(5), atol=1e-6)  # already normalized: log-probabilities
    assert torch.equal(combine([a, b], "values"), (a + b) / 2)


@pytest.mark.slow
def test_a_search_study_is_an_ensemble_of_its_completed_trials(cli, names_files, isolated):
    space = ["--space", "optim.lr=choice(0.01,0.02)", "--space", "train.seed=int(1,9)"]
    result = cli("search", TINY, *names_files.set_args(), "--set", "train.epochs=1", *space, "--trials", "2",
                 "--pruner", "none")  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = isolated / "studies" / "names_tiny"
    result = cli("eval", "names_tiny", "--split", "val")
    assert result.exit_code == 0, result.output
    assert "using study names_tiny: all 2 completed members" in result.stderr
    report = json.loads((folder / "eval" / "val-ensemble-best.json").read_text())
    assert report["study"] == "names_tiny" and len(report["members"]) == 2
    assert {m["run"] for m in report["members"]} == {p.name for p in (folder / "runs").iterdir()}

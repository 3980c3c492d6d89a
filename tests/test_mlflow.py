"""log.mlflow: the real CLI trains the tiny names config into a local MLflow store in the run folder, and
MLflow's own client reads back the params, each epoch's metrics, the test metrics and the status."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY, CtrlCAtEpoch, QuietLogger, assert_one_line_error, run_dirs, tiny_config

from rnnctl import loop
from rnnctl.runs import RunFolder

mlflow_client = pytest.importorskip("mlflow.tracking")  # the `mlflow` extra (mlflow-skinny is enough)


def mlflow_run(run):
    record = json.loads((run / "run.json").read_text())["mlflow"]
    client = mlflow_client.MlflowClient(tracking_uri=record["uri"])
    return client, client.get_run(record["run_id"])


@pytest.mark.slow
def test_cli_run_reads_back_with_mlflows_client(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=2", "--set", "log.mlflow=true")
    assert result.exit_code == 0, result.output
    assert "mlflow" not in result.stderr.lower()  # MLflow's own INFO lines (creating tables) stay quiet
    (run,) = run_dirs(isolated)
    assert (run / "mlflow" / "mlflow.db").is_file()
    client, got = mlflow_run(run)
    info = json.loads((run / "run.json").read_text())
    assert got.info.run_name == info["id"] and got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "names_tiny"
    params = got.data.params
    assert params["task"] == "names" and params["model.cell"] == "gru" and params["train.epochs"] == "2"
    assert params["data.max_examples"] == "1500" and params["train.grad_clip"] == "null"
    rows = RunFolder(run).rows()
    history = client.get_metric_history(got.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["val_acc"])) for r in rows]
    assert len(client.get_metric_history(got.info.run_id, "train_loss")) == len(rows) == 2
    assert got.data.metrics["test_acc"] == pytest.approx(info["test"]["acc"])
    assert got.data.tags["rnnctl.status"] == "completed"


@pytest.mark.slow
def test_off_by_default(names_files, isolated):
    loop.train(tiny_config(names_files, "train.epochs=1"), command="no mlflow", loggers=[])
    (run,) = run_dirs(isolated)
    assert not (run / "mlflow").exists()
    assert "mlflow" not in json.loads((run / "run.json").read_text())


@pytest.mark.slow
def test_interrupted_is_killed_and_resume_goes_on_with_the_same_run(cli, names_files, isolated):
    cfg = tiny_config(names_files, "train.epochs=3", "log.mlflow=true")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, command="cut", loggers=[CtrlCAtEpoch(2)])
    (run,) = run_dirs(isolated)
    client, got = mlflow_run(run)
    assert got.info.status == "KILLED" and got.data.tags["rnnctl.status"] == "interrupted"
    first = got.info.run_id
    result = cli("train", "--resume", str(run), "--epochs", "4")  # a changed param is not logged again
    assert result.exit_code == 0, result.output
    client, got = mlflow_run(run)
    assert got.info.run_id == first and got.info.status == "FINISHED"
    assert len(client.search_runs([got.info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(first, "val_acc")]
    assert sorted(set(steps)) == [r["step"] for r in RunFolder(run).rows()]  # every epoch, 1 to 4


class FailAtEpoch(QuietLogger):
    def epoch(self, row):
        raise RuntimeError("boom")


@pytest.mark.slow
def test_a_failed_run_in_a_store_named_by_uri(names_files, isolated, tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()
    cfg = tiny_config(names_files, "train.epochs=2", "log.mlflow=true", f"log.mlflow_uri={uri}", "name=mine")
    with pytest.raises(RuntimeError, match="boom"):
        loop.train(cfg, command="fail", loggers=[FailAtEpoch()])
    (run,) = run_dirs(isolated)
    assert not (run / "mlflow").exists()  # the store is the one named
    client, got = mlflow_run(run)
    assert client.tracking_uri == uri and got.info.status == "FAILED" and got.data.tags["rnnctl.status"] == "failed"
    assert client.get_experiment(got.info.experiment_id).name == "mine"
    assert [m.step for m in client.get_metric_history(got.info.run_id, "val_acc")] == [RunFolder(run).rows()[0]["step"]]


def test_missing_extra_is_one_line_and_no_run_folder(cli, names_files, isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    result = cli("train", TINY, *names_files.set_args(), "--set", "log.mlflow=true")
    assert_one_line_error(result, "log.mlflow", "rnnctl[mlflow]")
    assert run_dirs(isolated) == []


def test_unreachable_store_is_one_line(cli, names_files, isolated, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # a database under a file: it cannot exist
    result = cli("train", TINY, *names_files.set_args(), "--set", "log.mlflow=true", "--set", f"log.mlflow_uri={uri}")
    assert_one_line_error(result, "log.mlflow", uri)

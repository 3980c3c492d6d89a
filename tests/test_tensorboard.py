"""log.tensorboard: event files that hold the same numbers as the metrics files, and a clear error without the extra."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY, CtrlCAtEpoch, assert_one_line_error, run_dirs, tiny_config

from rnnctl import loop
from rnnctl.runs import RunFolder

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_events_hold_the_metrics_files_numbers(names_files, isolated):
    loop.train(tiny_config(names_files, "train.epochs=3", "log.tensorboard=true"), command="tb", loggers=[])
    (run,) = run_dirs(isolated)
    got = scalars(run)
    rows = RunFolder(run).rows()
    for key, tag in [("val_acc", "val/acc"), ("train_loss", "train/loss"), ("lr", "run/lr")]:
        assert got[tag] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]  # float32 in the events
    steps = RunFolder(run).steps()
    assert [s for s, _ in got["step/loss"]] == [r["step"] for r in steps]
    assert [v for _, v in got["step/grad_norm"]] == [pytest.approx(r["grad_norm"], rel=1e-6) for r in steps]
    test = json.loads((run / "run.json").read_text())["test"]
    assert got["test/acc"] == [(rows[-1]["step"], pytest.approx(test["acc"], rel=1e-6))]


def test_off_by_default(names_files, isolated):
    loop.train(tiny_config(names_files, "train.epochs=1"), command="no tb", loggers=[])
    (run,) = run_dirs(isolated)
    assert not (run / "tensorboard").exists()


@pytest.mark.slow
def test_resumed_run_continues_the_same_curves(names_files, isolated, cli):
    cfg = tiny_config(names_files, "train.epochs=4", "log.tensorboard=true")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, command="cut", loggers=[CtrlCAtEpoch(2)])
    (run,) = run_dirs(isolated)
    result = cli("train", "--resume", str(run))
    assert result.exit_code == 0, result.output
    got = scalars(run)
    assert [s for s, _ in got["val/acc"]] == [r["step"] for r in RunFolder(run).rows()]  # each epoch once, in order
    assert len(got["step/loss"]) == len(RunFolder(run).steps())


@pytest.mark.slow
def test_resume_purges_events_logged_past_the_checkpoint(names_files, isolated, cli):
    """Rows inside an epoch (eval_every) are logged after last.pt: Ctrl-C there, and the resumed run
    trains that part again. Its old events are purged, so every step shows once, with the new values."""
    cfg = tiny_config(names_files, "train.epochs=3", "train.eval_every=1", "log.tensorboard=true")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, command="cut", loggers=[CtrlCAtEpoch(3)])  # on epoch 3's first partial row
    (run,) = run_dirs(isolated)
    assert cli("train", "--resume", str(run)).exit_code == 0
    steps = [s for s, _ in scalars(run)["val/acc"]]
    assert steps == [r["step"] for r in RunFolder(run).rows()]
    assert len(steps) == len(set(steps))


def test_missing_extra_is_one_line_and_no_run_folder(cli, names_files, isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    result = cli("train", TINY, *names_files.set_args(), "--set", "log.tensorboard=true")
    assert_one_line_error(result, "log.tensorboard", "rnnctl[tensorboard]")
    assert run_dirs(isolated) == []


def test_hparams_view_holds_the_config_and_the_final_metrics(names_files, isolated):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    loop.train(tiny_config(names_files, "train.epochs=2", "log.tensorboard=true"), command="tb", loggers=[])
    (run,) = run_dirs(isolated)
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    data = {tag: HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["model.cell"].string_value == "gru" and start["task"].string_value == "names"
    assert start["train.epochs"].number_value == 2 and start["optim.lr"].number_value == pytest.approx(0.01)
    assert "train.grad_clip" not in start  # null: not a scalar
    info = json.loads((run / "run.json").read_text())
    best = f"best/{info['best']['metric']}"  # names monitors val_acc
    experiment = data["_hparams_/experiment"].experiment
    assert {m.name.tag for m in experiment.metric_infos} == {f"test/{k}" for k in info["test"] if k != "n"} | {best}
    got = scalars(run)  # the metrics' values: scalars at the last row's step, where the view reads them
    last = RunFolder(run).rows()[-1]["step"]
    assert got[best] == [(last, pytest.approx(info["best"]["value"], rel=1e-6))]
    assert got["test/acc"] == [(last, pytest.approx(info["test"]["acc"], rel=1e-6))]

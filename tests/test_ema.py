"""train.ema: a moving average of the weights that validation, the checkpoints and every later use read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, CtrlCAtEpoch, assert_one_line_error, metrics, run_dirs, tiny_config

from rnnctl import loop
from rnnctl.runs import RunFolder
from rnnctl.training import WeightAverage


def test_the_average_follows_the_formula_and_copies_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    expected = start.clone()
    for n in range(1, 30):
        with torch.no_grad():
            model[0].weight.add_(0.1)
            model[1].running_mean.add_(1.0)
        avg.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model[0].weight.detach()
    assert torch.allclose(avg.model[0].weight, expected, atol=1e-6)
    assert not torch.allclose(avg.model[0].weight, model[0].weight)  # it lags the trained weights
    assert torch.equal(avg.model[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in avg.model.parameters())


@pytest.mark.slow
def test_checkpoints_hold_the_average_and_a_resumed_run_equals_an_uncut_one(cli, names_files, isolated):
    more = ["train.ema=0.9", "model.dropout=0.3"]
    loop.train(tiny_config(names_files, "model.dropout=0.3", "name=plain"), command="plain", loggers=[])
    loop.train(tiny_config(names_files, *more, "name=ref"), command="ref", loggers=[])
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(names_files, *more, "name=cut"), command="cut", loggers=[CtrlCAtEpoch(2)])
    plain, ref, cut = (next(d for d in run_dirs(isolated) if d.name.endswith(n)) for n in ("-plain", "-ref", "-cut"))

    ckpt = RunFolder(cut).load_checkpoint("last")
    assert ckpt["average"]["updates"] == ckpt["step"]  # one update per optimizer step
    assert set(ckpt["trained"]) == set(ckpt["model"])
    assert any(not torch.equal(ckpt["trained"][k], ckpt["model"][k]) for k in ckpt["model"])
    plain_rows, ref_rows = RunFolder(plain).rows(), RunFolder(ref).rows()
    assert [r["train_loss"] for r in plain_rows] == [r["train_loss"] for r in ref_rows]  # training is the same
    assert [r["val_loss"] for r in plain_rows] != [r["val_loss"] for r in ref_rows]  # validation reads the average

    result = cli("train", "--resume", str(cut))
    assert result.exit_code == 0, result.output
    assert metrics(cut) == metrics(ref)
    assert json.loads((cut / "run.json").read_text())["test"] == json.loads((ref / "run.json").read_text())["test"]
    # eval reads the checkpoint's "model": the average, as the run's own test did
    result = cli("eval", str(ref), "--split", "val")
    assert result.exit_code == 0, result.output
    best = RunFolder(ref).load_checkpoint("best")
    saved = json.loads(RunFolder(ref).eval_path("val", "best").read_text())
    assert saved["loss"] == pytest.approx(next(r["val_loss"] for r in ref_rows if r["epoch"] == best["epoch"]))


def test_a_checkpoint_without_its_trained_weights_is_a_one_line_error(cli, names_files, isolated):
    loop.train(tiny_config(names_files, "train.ema=0.9", "name=ema"), command="ema", loggers=[])
    (run,) = [d for d in run_dirs(isolated) if d.name.endswith("-ema")]
    folder = RunFolder(run)
    ckpt = folder.load_checkpoint("last")
    del ckpt["trained"]
    folder.save_checkpoint(["last"], ckpt)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    result = cli("train", "--resume", str(run))
    assert result.exit_code == 1
    assert "last.pt" in result.output and "does not fit its own config" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key,value", [("train.ema", "1"), ("train.ema", "-0.1"), ("model.word_dropout", "1.5")])
def test_an_average_or_word_dropout_out_of_range_is_a_one_line_error(cli, names_files, isolated, key, value):
    result = cli("train", TINY, *names_files.set_args(), "--set", f"{key}={value}")
    assert_one_line_error(result, key)
    assert not run_dirs(isolated)  # refused before any run folder exists

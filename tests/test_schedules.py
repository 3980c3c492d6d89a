"""Learning-rate schedules and early stopping: the lr follows the declaration, and a resume continues them."""

from __future__ import annotations

import json
import math

import pytest
from conftest import CtrlCAtEpoch, metrics, run_dirs, tiny_config

from rnnctl import loop
from rnnctl.config import EarlyStopConfig, ScheduleConfig
from rnnctl.runs import RunFolder
from rnnctl.schedules import EarlyStopping, LRSchedule


def test_step_cosine_warmup_and_plateau_give_the_declared_lr():
    step = LRSchedule(
        ScheduleConfig(name="step", step_size=2, gamma=0.5), 1.0, epochs=6, steps_per_epoch=10, mode="max"
    )
    assert [step.lr(s) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cos = LRSchedule(ScheduleConfig(name="cosine", min_lr=0.1), 1.0, epochs=2, steps_per_epoch=50, mode="max")
    assert cos.lr(0) == pytest.approx(1.0) and cos.lr(50) == pytest.approx(0.55) and cos.lr(100) == pytest.approx(0.1)
    warm = LRSchedule(ScheduleConfig(warmup_steps=4), 2.0, epochs=1, steps_per_epoch=10, mode="max")
    assert [warm.lr(s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    plateau = LRSchedule(ScheduleConfig(name="plateau", patience=1, gamma=0.1, min_lr=0.001), 1.0, 9, 10, mode="min")
    lrs = []
    for value in (1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95):
        plateau.epoch_end(value)
        lrs.append(plateau.lr(0))
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    for _ in range(10):
        plateau.epoch_end(2.0)
    assert plateau.lr(0) == 0.001  # the floor


def test_early_stopping_counts_epochs_without_enough_improvement():
    stop = EarlyStopping(EarlyStopConfig(patience=2, min_delta=0.01), mode="max")
    assert [stop.should_stop(v) for v in (0.5, 0.6, 0.605, 0.7, 0.7, 0.705)] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert not any(EarlyStopping(EarlyStopConfig(), "max").should_stop(0.0) for _ in range(5))  # off by default


def test_metrics_lr_follows_the_schedule(names_files, isolated):
    cfg = tiny_config(names_files, "train.epochs=3", "optim.lr=0.01", "train.schedule.name=step",
                      "train.schedule.step_size=1", "train.schedule.gamma=0.5")  # fmt: skip
    loop.train(cfg, command="t", loggers=[])
    (run,) = run_dirs(isolated)
    assert [r["lr"] for r in RunFolder(run).rows()] == pytest.approx([0.01, 0.005, 0.0025])


def test_early_stop_ends_the_run_completed(names_files, isolated):
    cfg = tiny_config(names_files, "train.epochs=10", "train.early_stop.patience=1", "train.early_stop.min_delta=1.0")
    summary = loop.train(cfg, command="t", loggers=[])
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert summary["stopped_early"] == {"epoch": 2, "patience": 1}
    (run,) = run_dirs(isolated)
    assert len(RunFolder(run).rows()) == 2 and (run / "eval" / "test-best.json").exists()


@pytest.mark.slow
def test_resume_continues_warmup_cosine_and_plateau_exactly(names_files, isolated, cli):
    common = ["train.epochs=4", "train.schedule.warmup_steps=5"]
    # plateau: a learning rate too small to move the validation accuracy, so every epoch decays it
    for sched, lr in (("cosine", 0.02), ("plateau", 1e-6)):
        extra = [
            f"train.schedule.name={sched}",
            "train.schedule.patience=0",
            "train.schedule.gamma=0.5",
            f"optim.lr={lr}",
        ]
        loop.train(tiny_config(names_files, *common, *extra, f"name=ref-{sched}"), command="r", loggers=[])
        with pytest.raises(KeyboardInterrupt):
            loop.train(
                tiny_config(names_files, *common, *extra, f"name=cut-{sched}"), command="c", loggers=[CtrlCAtEpoch(2)]
            )
        (ref,) = [d for d in run_dirs(isolated) if d.name.endswith(f"ref-{sched}")]
        (cut,) = [d for d in run_dirs(isolated) if d.name.endswith(f"cut-{sched}")]
        assert cli("train", "--resume", str(cut)).exit_code == 0
        assert metrics(cut) == metrics(ref)
        lrs = [r["lr"] for r in RunFolder(ref).rows()]
        assert len(set(lrs)) > 1 and all(math.isfinite(x) for x in lrs)  # the schedule did change the lr
        assert json.loads((cut / "run.json").read_text())["status"] == "completed"

"""rnnctl sweep: every grid combination as its own run, a failing member reported, --resume finishes it."""

from __future__ import annotations

import json

from conftest import TINY, assert_one_line_error


def test_sweep_2x2_with_a_failing_member_then_resume(cli, names_files, isolated):
    import yaml

    config = isolated.parent / "sweep.yaml"  # the tiny config with the generated data in it
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {**(raw.get("data") or {}), "path": str(names_files.train), "test_path": str(names_files.test)}
    raw["train"]["epochs"] = 2
    config.write_text(yaml.safe_dump(raw))
    result = cli("sweep", config, "--grid", "model.layers=1,0", "--grid", "train.seed=1,2", "--jobs", "2")
    assert result.exit_code == 1, result.output  # two members failed
    (folder,) = (isolated / "sweeps").iterdir()
    state = json.loads((folder / "sweep.json").read_text())
    statuses = {(m["set"]["model.layers"], m["set"]["train.seed"]): m["status"] for m in state["members"]}
    assert statuses == {("1", "1"): "completed", ("1", "2"): "completed", ("0", "1"): "failed", ("0", "2"): "failed"}
    assert all("model.layers" in m["error"] for m in state["members"] if m["status"] == "failed")
    runs = sorted(p.name for p in (folder / "runs").iterdir())
    assert len(runs) == 2 and len({m["run"] for m in state["members"] if m["run"]}) == 2  # one folder each
    summary = json.loads((folder / "summary.json").read_text())
    (group,) = summary["groups"]  # grouped by the swept keys other than the seed
    assert group["group"] == "model.layers=1" and group["n"] == 2 and group["std"] >= 0
    accs = [json.loads((folder / "runs" / r / "run.json").read_text())["test"]["acc"] for r in runs]
    assert abs(group["mean"] - sum(accs) / 2) < 1e-12 and summary["metric"] == "test_acc"
    assert (folder / "summary.png").stat().st_size > 0
    assert "2/4 members completed" in result.stdout and "--resume" in result.stdout

    # a member that never ran (the sweep was stopped): --resume trains it and only it
    state["members"][0].update(status="pending", run=None)
    (folder / "sweep.json").write_text(json.dumps(state))
    result = cli("sweep", "--resume", str(folder))
    state = json.loads((folder / "sweep.json").read_text())
    assert state["members"][0]["status"] == "completed"
    assert len(list((folder / "runs").iterdir())) == 3


def test_sweep_argument_errors(cli, isolated):
    assert_one_line_error(cli("sweep", TINY), "--grid")
    assert_one_line_error(cli("sweep", TINY, "--grid", "model.cell"), "key=value1,value2")
    assert_one_line_error(cli("sweep", TINY, "--grid", "modle.cell=gru,lstm"), "modle")
    assert_one_line_error(cli("sweep", "--resume", "nope"), "unknown sweep")
    assert not (isolated / "sweeps").exists()

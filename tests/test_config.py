"""Configs: every shipped YAML validates; --set overrides; each kind of mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, TINY, assert_one_line_error

from rnnctl.config import apply_overrides, load_config
from rnnctl.errors import ConfigError

ALL_CONFIGS = sorted(p for ext in ("*.yaml", "*.yml") for p in CONFIGS.rglob(ext))


def test_configs_folder_has_the_smoke_config():
    assert TINY in ALL_CONFIGS
    assert len(ALL_CONFIGS) >= 2


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_validates(path: Path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert cfg.task == raw["task"]
    assert cfg.name == raw.get("name", path.stem)

    # every value the file sets survives validation unchanged
    def check(raw_part: dict, resolved_part: dict, prefix: str) -> None:
        for key, value in raw_part.items():
            if isinstance(value, dict):  # a nested section (train.schedule): the keys it sets, the rest defaults
                check(value, resolved_part[key], f"{prefix}{key}.")
            else:
                assert resolved_part[key] == value, f"{prefix}{key}"

    check({k: v for k, v in raw.items() if isinstance(v, dict)}, cfg.to_dict(), "")


def test_tiny_config_is_tiny():
    cfg = load_config(TINY)
    assert (cfg.model.cell, cfg.model.layers, cfg.model.hidden_size, cfg.model.embedding_size) == ("gru", 1, 16, 8)
    assert cfg.train.device == "cpu" and cfg.train.epochs <= 3 and cfg.train.batch_size == 32


def test_overrides_apply_with_dotted_keys():
    cfg = load_config(
        TINY, ["model.cell=lstm", "optim.lr=3e-4", "train.epochs=7", "model.bidirectional=true", "name=exp"]
    )
    assert cfg.model.cell == "lstm"
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.model.bidirectional is True
    assert cfg.name == "exp"
    # untouched keys keep the file's values
    assert cfg.model.hidden_size == 16


def test_overrides_go_through_validation():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(TINY, ["optim.lr=0"])


def test_apply_overrides_does_not_mutate_input():
    raw = {"task": "names", "model": {"cell": "gru"}}
    out = apply_overrides(raw, ["model.cell=rnn", "data.bucket=false"])
    assert raw == {"task": "names", "model": {"cell": "gru"}}
    assert out["model"]["cell"] == "rnn" and out["data"]["bucket"] is False


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"--set task\.x: task is a value"):
        load_config(TINY, ["task.x=1"])


# -- errors: each one line, naming the --set or the file, and the key ----------------------------

BAD_OVERRIDES = [
    # (override, words the message must contain)
    ("model.hiden_size=8", ["model.hiden_size", "did you mean 'model.hidden_size'"]),
    ("modle.cell=lstm", ["modle", "did you mean 'model'"]),
    ("train.epochs=abc", ["train.epochs", "integer", "'abc'"]),
    ("optim.lr=0", ["optim.lr", "greater than 0"]),
    ("optim.lr=-1", ["optim.lr", "greater than 0"]),
    ("model.layers=0", ["model.layers", "greater than or equal to 1"]),
    ("model.dropout=1.0", ["model.dropout", "less than 1"]),
    ("model.dropout=-0.1", ["model.dropout", "greater than or equal to 0"]),
    ("model.cell=transformer", ["model.cell", "'transformer'", "lstm"]),
    ("task=nmes", ["task", "unknown task 'nmes'", "did you mean 'names'"]),
    ("train.epoch=2", ["unknown key 'train.epoch'", "did you mean 'train.epochs'"]),
    ("epochs=2", ["unknown key 'epochs'", "did you mean 'train.epochs'"]),  # another section's key
    ("train.lr=0.1", ["unknown key 'train.lr'", "did you mean 'optim.lr'"]),
    ("model=lstm", ["model is a section, not a value", "e.g. model.cell=lstm"]),
    ("train=3", ["train is a section, not a value", "e.g. train.epochs=3"]),
]


@pytest.mark.parametrize("override,needles", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_raises_config_error(override, needles):
    with pytest.raises(ConfigError) as info:
        load_config(TINY, [override])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"--set {override}: ")  # the --set is the mistake, not the config file
    assert str(TINY) not in msg and "Config" not in msg  # nor a class name of the code
    for n in needles:
        assert n in msg, (n, msg)


@pytest.mark.parametrize("override,needles", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_through_cli(cli, isolated, override, needles):
    result = cli("train", TINY, "--set", override)
    line = assert_one_line_error(result, f"--set {override}: ", *needles)
    assert "names_tiny.yaml" not in line and "instance of" not in line
    assert not isolated.exists() or not any(isolated.iterdir())


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path, cli):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("task: names\nmodel: gru\ntrain:\n  epochs: 3\n", encoding="utf-8")
    line = assert_one_line_error(
        cli("config", "show", cfg, "--set", "train.epochs=4"), f"{cfg}: ", "model is a section"
    )
    assert "--set" not in line and "Config" not in line


def test_missing_config_file(cli, isolated):
    missing = Path("no/such/config.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(missing)
    assert_one_line_error(cli("train", missing), "no/such/config.yaml", "not found")
    assert_one_line_error(cli("config", "show", missing), "no/such/config.yaml", "not found")
    assert not isolated.exists()


def test_yaml_syntax_error_names_the_line(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: names\nmodel:\n  cell: gru\n  layers: [1, 2\ntrain:\n  epochs: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    msg = str(info.value)
    assert str(bad) in msg and "invalid YAML" in msg and "line " in msg
    # the mark points into the file: at or after the unclosed bracket on line 4
    line = int(msg.split("line ")[1].split(",")[0])
    assert 4 <= line <= 6
    assert_one_line_error(cli("train", bad), str(bad), "invalid YAML", f"line {line}")


def test_yaml_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- task\n- names\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_missing_task_key(tmp_path):
    cfg = tmp_path / "notask.yaml"
    cfg.write_text("model:\n  cell: gru\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"missing key 'task'"):
        load_config(cfg)


def test_unknown_key_in_file_names_file_and_key(tmp_path, cli):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("task: names\ntrain:\n  epocs: 3\n", encoding="utf-8")
    assert_one_line_error(cli("config", "show", cfg), str(cfg), "train.epocs", "did you mean 'train.epochs'")


@pytest.mark.parametrize("item", ["model.cell", "=lstm", ""])
def test_set_without_equals(cli, item):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(TINY, [item])
    assert_one_line_error(cli("train", TINY, "--set", item), "--set", "expected key=value")


def test_config_show_prints_resolved_yaml(cli):
    result = cli("config", "show", TINY, "--set", "model.cell=lstm")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert "  cell: lstm\n" in result.stdout
    assert shown["model"]["cell"] == "lstm"
    assert shown["model"]["hidden_size"] == 16
    assert shown["data"]["bucket"] is True  # defaults are filled in
    assert shown["name"] == "names_tiny"
    assert result.stderr == ""
    # what `config show` prints is itself a valid config
    again = Path("shown.yaml")
    again.write_text(result.stdout, encoding="utf-8")
    assert load_config(again).to_dict() == {**shown}


@pytest.mark.parametrize("override, key", [
    ("train.seed=-1", "train.seed"), ("train.seed=10000000000000", "train.seed"), ("optim.lr=1e300", "optim.lr"),
])  # fmt: skip
def test_out_of_range_seed_and_lr(cli, override, key):
    assert_one_line_error(cli("config", "show", TINY, "--set", override), key)


@pytest.mark.parametrize(
    ("time", "minutes"),
    [(30, 30), ("30", 30), ("90:30", 91), ("2:00:00", 120), ("1-12", 2160), ("1-00:30", 1470), ("0-0:0:1", 1)],
)
def test_slurm_time_takes_minutes_and_sbatchs_forms(time, minutes):
    cfg = load_config(TINY, [f"slurm.time={time!r}" if isinstance(time, str) else f"slurm.time={time}"])
    assert cfg.slurm.minutes() == minutes


@pytest.mark.parametrize("time", ["0", "-5", "1h", "1:2:3:4", "1-"])
def test_a_bad_slurm_time_is_a_config_error(time):
    with pytest.raises(ConfigError, match="slurm.time"):
        load_config(TINY, [f"slurm.time={time!r}"])

"""Configs travel with the package: the wheel holds every config and data file, `rnnctl config list` and
`config cp` show and copy the shipped configs, and `train` / `config show` / `sweep` take a shipped name."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import CONFIGS, REPO, assert_one_line_error, run_dirs

from rnnctl.config import describe, shipped_configs

PACKAGE = REPO / "rnnctl"
SHIPPED = sorted(p.relative_to(CONFIGS).with_suffix("").as_posix() for p in CONFIGS.rglob("*.yaml"))


def test_the_repository_configs_folder_is_the_package_one():
    """`configs/` (the README's paths) and the package's configs are the same files."""
    assert CONFIGS.resolve() == (PACKAGE / "configs").resolve()
    assert sorted(shipped_configs()) == SHIPPED and "smoke/names_tiny" in SHIPPED


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build a wheel")
def test_the_wheel_holds_every_config_and_data_file(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build writes nothing into the repository
    shutil.copytree(PACKAGE, src / "rnnctl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "out", src],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "out").glob("rnnctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p for folder in ("configs", "datasets") for p in (PACKAGE / folder).rglob("*") if p.is_file()]
    data = [p.relative_to(REPO).as_posix() for p in data if "__pycache__" not in p.parts]
    assert {"rnnctl/configs/names_gru.yaml", "rnnctl/configs/smoke/charlm_tiny.yaml"} <= set(data)
    assert sorted(set(data) - names) == []


def test_every_shipped_config_has_a_one_line_description():
    for name, path in shipped_configs().items():
        text = describe(path)
        assert 20 <= len(text) <= 110, (name, text)  # a whole line of `config list` on a 132-column terminal


def test_config_list_shows_each_name_with_its_description(cli):
    result = cli("config", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in result.stdout.splitlines() if line.strip()}
    for name, path in shipped_configs().items():
        assert rows[name] == describe(path), name
    assert "Surname -> language" in rows["names_gru"]


def test_config_cp_copies_the_file_as_it_is(cli, tmp_path):
    result = cli("config", "cp", "names_gru")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "copied names_gru to names_gru.yaml"
    assert (tmp_path / "names_gru.yaml").read_bytes() == (CONFIGS / "names_gru.yaml").read_bytes()  # comments too
    # a smoke config by its name, into a folder and to a file of another name
    (tmp_path / "mine").mkdir()
    assert cli("config", "cp", "smoke/charlm_tiny", "mine").exit_code == 0
    assert cli("config", "cp", "sine_rnn.yaml", "mine/wave.yaml").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["charlm_tiny.yaml", "wave.yaml"]
    # the copy is a config like any other
    result = cli("config", "show", "mine/wave.yaml", "--set", "train.epochs=3")
    assert result.exit_code == 0 and "task: sine" in result.stdout and "name: wave" in result.stdout


def test_config_cp_never_overwrites(cli, tmp_path):
    mine = tmp_path / "names_gru.yaml"
    mine.write_text("task: names  # my own edits\n")
    assert_one_line_error(cli("config", "cp", "names_gru"), "names_gru.yaml exists", "not overwritten")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "names_gru.yaml").write_text("mine\n")
    assert_one_line_error(cli("config", "cp", "names_gru", "folder"), "folder/names_gru.yaml exists")
    assert mine.read_text() == "task: names  # my own edits\n"
    assert (tmp_path / "folder" / "names_gru.yaml").read_text() == "mine\n"


def test_config_cp_into_a_folder_named_with_a_slash(cli, tmp_path):
    result = cli("config", "cp", "names_gru", "mydir/")  # no such folder yet: made, not a file called mydir
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mydir").is_dir() and (tmp_path / "mydir" / "names_gru.yaml").is_file()
    assert cli("config", "cp", "sine_rnn", "mydir/").exit_code == 0  # an existing one
    assert sorted(p.name for p in (tmp_path / "mydir").iterdir()) == ["names_gru.yaml", "sine_rnn.yaml"]
    (tmp_path / "afile").write_text("mine\n")
    assert_one_line_error(cli("config", "cp", "names_gru", "afile/"), "afile/: a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_config_cp_mistakes_are_one_line(cli, tmp_path):
    assert_one_line_error(cli("config", "cp", "names_gr"), "unknown config 'names_gr'", "'names_gru'", "config list")
    assert_one_line_error(
        cli("config", "cp", "names_gru", "no/such/folder/x.yaml"), "no/such/folder/x.yaml", "cannot write"
    )
    assert list(tmp_path.glob("*.yaml")) == []


def test_show_takes_a_shipped_name(cli):  # train too: test_the_charlm_smoke_config_trains_as_shipped
    by_name, by_path = cli("config", "show", "names_gru"), cli("config", "show", CONFIGS / "names_gru.yaml")
    assert by_name.exit_code == 0 and by_name.stdout == by_path.stdout and "name: names_gru" in by_name.stdout
    assert cli("config", "show", "smoke/names_tiny.yaml").exit_code == 0  # `.yaml` may be added


def test_a_file_of_that_name_wins_over_the_shipped_config(cli, tmp_path):
    (tmp_path / "names_gru").write_text("task: hello\n")
    result = cli("config", "show", "names_gru")
    assert result.exit_code == 0 and "task: hello" in result.stdout


def test_an_unknown_name_is_one_line_with_the_closest_one(cli, isolated):
    assert_one_line_error(cli("train", "names_gr"), "names_gr: config file not found", "shipped config 'names_gru'")
    assert_one_line_error(cli("config", "show", "zzz"), "zzz: config file not found", "rnnctl config list")
    assert_one_line_error(cli("sweep", "zzz", "--grid", "train.seed=1,2"), "zzz: config file not found")
    assert run_dirs(isolated) == []


# -- smoke configs: seconds on data that ships in the package, as shipped -------------------------

SMOKE = sorted((CONFIGS / "smoke").glob("*.yaml"))
MAX_STEPS = 400  # optimizer steps in a whole smoke run; charlm_tiny on the whole of tiny Shakespeare took 15,686


@pytest.mark.parametrize("path", SMOKE, ids=lambda p: p.stem)
def test_every_smoke_config_as_shipped_is_a_few_hundred_steps_of_packaged_data(path):
    from rnnctl.config import load_config
    from rnnctl.tasks import get_task

    cfg = load_config(path)
    path = getattr(cfg.data, "path", None)  # the wave tasks generate their data: no path at all
    assert path is None or path.startswith("packaged:"), path  # null: the packaged copy (RNNCTL_DATA is empty)
    prepared = get_task(cfg.task).prepare(cfg)
    steps = prepared.splits["train"].num_batches(cfg.train.batch_size) * cfg.train.epochs
    assert 0 < steps <= MAX_STEPS, steps
    assert all(len(split) <= 20_000 for split in prepared.splits.values())  # evaluation is quick too


@pytest.mark.slow
def test_the_charlm_smoke_config_trains_as_shipped(cli, isolated):
    """`rnnctl train configs/smoke/charlm_tiny.yaml`, by its shipped name: the start of the packaged tiny
    Shakespeare, not all of it."""
    result = cli("train", "smoke/charlm_tiny", "--quiet")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    assert run.name.endswith("-charlm_tiny")
    steps = (run / "steps.csv").read_text().splitlines()[1:]
    assert 0 < len(steps) <= MAX_STEPS
    assert "characters:\n    train: 9000\n    val: 1000\n" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_the_readmes_test_command_ends_in_how_many_passed():
    """`pytest -q` as the README runs it: pyproject's addopts add no second -q (-qq drops pytest's summary)
    and no third-party warning is left to bury it. One quick test, on one process."""
    assert ".venv/bin/pytest -q\n" in (REPO / "README.md").read_text(encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_cli.py::test_version_and_short_help"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("1 passed in "), done.stdout
    assert "warnings summary" not in done.stdout, done.stdout

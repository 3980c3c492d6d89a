"""The real `rnnctl` CLI: train -> eval -> predict -> runs on generated data, and bad input."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import re
import shlex

import pytest
import torch
import yaml
from conftest import TINY, assert_one_line_error, gen_names, in_terminal, run_dirs, write_names

from rnnctl.errors import RunError
from rnnctl.runs import RunFolder, load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
CLASSES = ["Gaelic", "Iberic", "Nippon", "Slavic"]


# -- the run folder of `rnnctl train` ------------------------------------------------------------


def test_train_writes_config_with_derived(trained_run):
    cfg = yaml.safe_load((trained_run.dir / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["task"] == "names" and cfg["model"]["cell"] == "gru" and cfg["model"]["hidden_size"] == 16
    assert cfg["data"]["path"] == str(trained_run.files.train)
    assert cfg["data"]["test_path"] == str(trained_run.files.test)
    derived = cfg["derived"]
    assert derived["classes"] == CLASSES
    assert derived["num_classes"] == 4
    alphabet = set("".join(n for n, _ in gen_names(240, seed=1)))
    assert 2 < derived["alphabet_size"] <= len(alphabet) + 2  # + <pad>, <unk>
    assert derived["examples"] == {"train": 216, "val": 24, "test": 60}


def test_train_writes_run_json(trained_run):
    info = json.loads((trained_run.dir / "run.json").read_text(encoding="utf-8"))
    assert info["id"] == trained_run.dir.name
    assert info["status"] == "completed"
    assert info["task"] == "names"
    assert info["command"] == shlex.join(["rnnctl", "train", str(TINY), *trained_run.files.set_args()])
    assert set(info["versions"]) >= {"python", "torch", "rnnctl"}
    assert info["versions"]["torch"] == torch.__version__
    assert info["seed"] == 0
    assert info["epochs"] == 3 and info["epochs_done"] == 3
    assert info["best"]["metric"] == "val_acc" and info["best"]["epoch"] in (1, 2, 3)
    assert 0 <= info["test"]["acc"] <= 1 and info["test"]["loss"] > 0
    assert info["duration"] > 0 and info["finished"] >= info["created"]
    assert info["parameters"] > 0 and info["device"] == "cpu"


def test_train_writes_metrics_one_row_per_epoch(trained_run):
    rows = [json.loads(line) for line in (trained_run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm", "best_epoch", "samples_per_s"):
        assert all(key in r for r in rows), key
    assert [r["step"] for r in rows] == [7, 14, 21]  # ceil(216 / 32) batches per epoch
    with (trained_run.dir / "metrics.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    assert list(table[0]) == list(rows[0])
    for r, t in zip(rows, table):
        assert float(t["train_loss"]) == pytest.approx(r["train_loss"]) and int(t["epoch"]) == r["epoch"]
    info = json.loads((trained_run.dir / "run.json").read_text())
    best = max(rows, key=lambda r: r["val_acc"])  # first epoch with the highest val accuracy
    assert info["best"]["epoch"] == best["epoch"] and info["best"]["value"] == best["val_acc"]


def test_train_writes_checkpoints_plots_and_test_eval(trained_run):
    d = trained_run.dir
    last, best = load_checkpoint(d / "checkpoints" / "last.pt"), load_checkpoint(d / "checkpoints" / "best.pt")
    info = json.loads((d / "run.json").read_text())
    assert last["epoch"] == 3 and best["epoch"] == info["best"]["epoch"]
    for name in ("loss", "accuracy", "confusion"):
        png = d / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000
    report = json.loads((d / "eval" / "test-best.json").read_text())
    assert report["split"] == "test" and report["checkpoint"] == "best"
    assert report["n"] == 60
    assert report["classes"] == CLASSES
    assert sum(map(sum, report["confusion"])) == 60
    assert report["acc"] == pytest.approx(sum(report["confusion"][i][i] for i in range(4)) / 60)
    assert report["acc"] == info["test"]["acc"]
    assert not list(d.rglob("*.tmp"))  # atomic writes left nothing behind


def test_train_prints_one_plain_line_per_epoch(trained_run):
    # CliRunner's stdout is not a terminal: plain lines, not the live table
    lines = trained_run.stdout.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    assert all("val_acc" in line and " names/s " in line for line in epoch_lines)  # the task's unit, per second
    assert lines[0] == f"run {trained_run.dir.name} -> {trained_run.dir}"
    assert "\x1b[" not in trained_run.stdout  # no terminal escapes in a pipe
    assert any(line.startswith("completed in") and "3/3 epochs" in line for line in lines)
    assert f"run folder: {trained_run.dir}" in trained_run.stdout


def test_quiet_prints_no_epoch_lines(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=2", "--quiet")
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert "completed" in result.stdout and "2/2 epochs" in result.stdout
    (run,) = run_dirs(isolated)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the disk logger still writes


def test_name_option_sets_folder_suffix(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=1", "--name", "my exp", "-q")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    assert re.fullmatch(r"\d{8}-\d{6}-my-exp", run.name), run.name
    assert json.loads((run / "run.json").read_text())["name"] == "my exp"


def test_default_name_is_config_stem(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=1", "-q")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    assert run.name.endswith("-names_tiny")


def test_create_run_dir_never_reuses_a_folder(tmp_path):
    now = dt.datetime(2024, 5, 6, 7, 8, 9)
    dirs = [RunFolder.create("exp", tmp_path / "runs", now=now).path for _ in range(3)]
    assert [d.name for d in dirs] == ["20240506-070809-exp", "20240506-070809-exp-2", "20240506-070809-exp-3"]
    assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)
    assert RunFolder.create("a b/c", tmp_path / "runs", now=now).path.name == "20240506-070809-a-b-c"
    assert RunFolder.create("", tmp_path / "runs", now=now).path.name == "20240506-070809-run"


# -- eval, predict, runs -------------------------------------------------------------------------


def test_eval_latest_on_val_with_last_checkpoint(cli, copy_run):
    result = cli("eval", "latest", "--split", "val", "--checkpoint", "last")
    saved = copy_run / "eval" / "val-last.json"
    report = json.loads(saved.read_text())
    assert report["split"] == "val" and report["checkpoint"] == "last" and report["epoch"] == 3
    assert report["n"] == 24
    # the last checkpoint on val reproduces the val metrics logged for the last epoch
    last_row = json.loads((copy_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["acc"] == pytest.approx(last_row["val_acc"], abs=1e-9)
    assert report["loss"] == pytest.approx(last_row["val_loss"], abs=1e-5)
    assert "Traceback" not in result.output
    assert result.stderr == f"using run {copy_run.name}, checkpoint last.pt (epoch 3)\n"  # stdout is the report
    assert result.exit_code == 0, result.output
    assert f"accuracy {report['acc']:.4f}" in result.stdout
    assert f"saved: {saved}" in result.stdout
    for label in CLASSES:
        assert label in result.stdout  # the per-class table


def test_eval_default_is_test_best_and_matches_training(cli, copy_run):
    before = json.loads((copy_run / "eval" / "test-best.json").read_text())
    result = cli("eval", copy_run.name)
    after = json.loads((copy_run / "eval" / "test-best.json").read_text())
    assert after["acc"] == before["acc"] and after["confusion"] == before["confusion"]
    assert after["loss"] == pytest.approx(before["loss"], abs=1e-6)
    assert result.exit_code == 0, result.output
    assert f"accuracy {after['acc']:.4f}" in result.stdout


def test_predict_prints_top3_with_probabilities(cli, trained_run):
    result = cli("predict", str(trained_run.dir), "Petrovski", "McKolan")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "Petrovski" in rows and "McKolan" in rows
    for name in ("Petrovski", "McKolan"):
        cells = re.findall(r"(\w+) (\d+\.\d)%", rows[name])
        assert len(cells) == 3, rows[name]
        assert {label for label, _ in cells} <= set(CLASSES) and len({label for label, _ in cells}) == 3
        probs = [float(p) for _, p in cells]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.1
    assert "#1" in result.stdout and "#3" in result.stdout and "#4" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 50])
def test_predict_on_a_terminal_cuts_no_name_and_no_number(cli, columns):
    assert cli("train", "smoke/names_tiny", "-q").exit_code == 0  # the packaged names: 18 languages
    names = ["Nakamura", "Dostoevsky", "O'Neill"]
    shown = ANSI.sub("", in_terminal(["predict", "latest", *names], columns))
    lines = [line for line in shown.splitlines() if line.strip() and not line.startswith("using run")]
    assert all(len(line) <= columns for line in lines) and "…" not in shown, shown
    text = "\n".join(lines)
    starts = [re.search(rf"^ ?{re.escape(name)}\b", text, re.M).start() for name in names]  # each name whole
    for start, end in zip(starts, [*starts[1:], len(text)]):
        assert len(re.findall(r"\b[A-Z][a-z]+ \d+\.\d%(?=\s|$)", text[start:end])) == 3, text[start:end]


def test_predict_stacks_the_classes_when_they_do_not_fit_beside_the_input(cli, trained_run, monkeypatch):
    from rich.console import Console

    from rnnctl import cli as cli_module

    monkeypatch.setattr(cli_module, "out", Console(width=30, force_terminal=True, color_system=None, highlight=False))
    result = cli("predict", str(trained_run.dir), "Petrovski", "McKolan", "--top", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 30 for line in lines) and "…" not in result.stdout, result.stdout
    assert lines[0] == "Petrovski" and "McKolan" in lines
    classes = " ".join(lines[1 : lines.index("McKolan")])  # beneath their input, indented, each whole
    assert all(line.startswith("  ") for line in lines[1 : lines.index("McKolan")])
    assert len(re.findall(r"(?:Gaelic|Iberic|Nippon|Slavic) \d+\.\d%", classes)) == 4, result.stdout


def test_predict_in_a_pipe_keeps_every_column_and_the_whole_input(cli, trained_run, monkeypatch):
    from rich.console import Console

    from rnnctl import cli as cli_module

    monkeypatch.setattr(cli_module, "out", Console(width=160, force_terminal=False, highlight=False))  # cli's pipe
    long = "Mc" + "Kolan" * 40  # 202 characters
    result = cli("predict", str(trained_run.dir), long, "Petrovski", "--top", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["input", "#1", "#2", "#3", "#4"] and len(lines) == 3, result.stdout
    assert lines[1].startswith(long + "  ") and lines[2].startswith("Petrovski ")
    for line in lines[1:]:
        assert len(re.findall(r" \w+ \d+\.\d%", line)) == 4 and line.endswith("%"), line


def test_predict_top_option_and_unknown_chars(cli, trained_run):
    result = cli("predict", str(trained_run.dir), "Øtor", "--top", "2")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "Øtor" in line)
    assert "Øtor (unknown: Ø)" in line
    assert len(re.findall(r"\d+\.\d%", line)) == 2


def test_predict_file_for_names(cli, trained_run, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("Petrovski\n\nMcKolan\r\n  \n", encoding="utf-8")
    result = cli("predict", str(trained_run.dir), "--file", names, "--top", "1")
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()]
    assert rows == ["Petrovski", "McKolan"]


def test_predict_needs_inputs_and_an_existing_file(cli, trained_run, tmp_path):
    missing = tmp_path / "nope.txt"
    assert_one_line_error(cli("predict", str(trained_run.dir), "--file", missing), f"--file {missing}: file not found")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    for args in ([], ["--file", blank]):
        assert_one_line_error(cli("predict", str(trained_run.dir), *args), "nothing to predict")


def test_runs_lists_the_id(cli, copy_run):
    result = cli("runs")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if copy_run.name in line)
    assert "completed" in line and "3/3" in line


def test_runs_empty(cli):
    result = cli("runs")
    assert result.exit_code == 0 and "no runs yet" in result.stdout


def test_runs_marks_a_dead_running_run(cli, copy_run):
    info = json.loads((copy_run / "run.json").read_text())
    info.update(status="running", pid=2**22 + 12345)  # above the kernel's PID_MAX_LIMIT: never a live process
    (copy_run / "run.json").write_text(json.dumps(info))
    result = cli("runs")
    line = next(line for line in result.stdout.splitlines() if copy_run.name in line)
    assert "died" in line


def test_runs_shows_full_id_at_80_columns(cli, copy_run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("runs")
    assert result.exit_code == 0
    assert copy_run.name in result.stdout, result.stdout


def test_long_error_stays_one_line_at_80_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    missing = "no/such/folder/" + "very_long_experiment_name_" * 3 + ".yaml"
    assert_one_line_error(cli("train", missing), missing, "config file not found")


# -- bad input: exit 1, one line `error: ...`, no traceback, no run folder -----------------------


def test_unknown_run_id(cli, copy_run, isolated):
    for args in (["eval", "nope"], ["predict", "nope", "Smith"], ["eval", "--checkpoint", "last", "20990101"]):
        assert_one_line_error(cli(*args), "unknown run", "rnnctl runs")
    assert run_dirs(isolated) == [copy_run]
    assert sorted(p.name for p in (copy_run / "eval").iterdir()) == ["test-best.json"]


def test_eval_with_no_runs(cli, isolated):
    assert_one_line_error(cli("eval"), "no completed runs in")
    assert run_dirs(isolated) == []


def test_eval_bad_checkpoint_and_split_options(cli, copy_run):
    assert_one_line_error(cli("eval", copy_run.name, "--checkpoint", "middle"), "--checkpoint 'middle'", "best or last")
    assert_one_line_error(cli("eval", copy_run.name, "--split", "dev"), "--split 'dev'", "test", "val")


def test_eval_folder_that_is_not_a_run(cli, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    assert_one_line_error(cli("eval", tmp_path / "elsewhere"), "not a run folder")


def test_eval_truncated_checkpoint(cli, copy_run, isolated):
    best = copy_run / "checkpoints" / "best.pt"
    data = best.read_bytes()
    best.write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(cli("eval", copy_run.name), str(best), "not a readable checkpoint")
    assert len(line) < 400
    assert_one_line_error(cli("predict", copy_run.name, "Smith"), str(best), "not a readable checkpoint")
    # the last checkpoint is untouched and still works
    assert cli("predict", copy_run.name, "Smith", "--checkpoint", "last").exit_code == 0
    assert run_dirs(isolated) == [copy_run]


def test_eval_missing_checkpoint(cli, copy_run):
    (copy_run / "checkpoints" / "best.pt").unlink()
    assert_one_line_error(cli("eval", copy_run.name), "best.pt", "checkpoint not found")


def test_eval_random_bytes_checkpoint(cli, copy_run):
    best = copy_run / "checkpoints" / "best.pt"
    best.write_bytes(random.Random(0).randbytes(4096))
    assert_one_line_error(cli("eval", copy_run.name), str(best), "not a readable checkpoint")


def test_eval_torch_file_that_is_not_an_rnnctl_checkpoint(cli, copy_run):
    best = copy_run / "checkpoints" / "best.pt"
    torch.save({"weights": torch.zeros(3)}, best)
    assert_one_line_error(cli("eval", copy_run.name), str(best), "not an rnnctl checkpoint")


def test_eval_text_file_as_checkpoint(cli, copy_run):
    best = copy_run / "checkpoints" / "best.pt"
    best.write_text("hello world\nthis is not a checkpoint\n", encoding="utf-8")
    assert_one_line_error(cli("eval", copy_run.name), str(best), "not a readable checkpoint")


def test_load_checkpoint_garbage_is_always_a_run_error(tmp_path):
    path = tmp_path / "garbage.pt"
    escaped = []
    for seed in range(40):
        rnd = random.Random(seed)
        data = rnd.choice([b"", b"\x80\x02", b"PK\x03\x04", b"hello "]) + rnd.randbytes(rnd.choice([1, 16, 256]))
        path.write_bytes(data)
        try:
            load_checkpoint(path)
        except RunError:
            continue
        except Exception as e:  # noqa: BLE001
            escaped.append((seed, type(e).__name__))
    assert escaped == []


def test_train_bad_data_row(cli, tmp_path, names_files, isolated):
    rows = gen_names(40, seed=3)
    rows[5] = ("Smith", "Gaelic", "oops")
    bad = write_names(tmp_path / "bad.csv", rows)
    result = cli("train", TINY, "--set", f"data.path={bad}", "--set", f"data.test_path={names_files.test}")
    assert_one_line_error(result, str(bad), "row 7", "expected 2 fields")
    assert run_dirs(isolated) == []


def test_train_test_label_unseen(cli, tmp_path, names_files, isolated):
    test = write_names(tmp_path / "test.csv", [("Petrov", "Slavic"), ("Olsen", "Nordic")])
    result = cli("train", TINY, "--set", f"data.path={names_files.train}", "--set", f"data.test_path={test}")
    assert_one_line_error(result, str(test), "row 3", "'Nordic'", "does not occur in the training data")
    assert run_dirs(isolated) == []


def test_train_missing_data_file(cli, isolated):
    assert_one_line_error(
        cli("train", TINY, "--set", "data.path=missing.csv"), "data.path", "missing.csv", "does not exist"
    )
    assert run_dirs(isolated) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_without_cuda(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.device=cuda")
    assert_one_line_error(result, "train.device", "cuda")
    assert run_dirs(isolated) == []


# -- usage errors (typer's own checks) read like every other mistake: one line, exit code 1 -----------

USAGE_ERRORS = {
    "top-0": (["predict", "latest", "Smith", "--top", "0"], ["'--top'", "greater than or equal to 1"]),
    "num-0": (["sample", "--num", "0"], ["'--num'", "greater than or equal to 1"]),
    "length-negative": (["sample", "--length", "-1"], ["'--length'", "greater than or equal to 0"]),
    "top-k-negative": (["sample", "--top-k", "-1"], ["'--top-k'", "greater than or equal to 0"]),
    "jobs-0": (["sweep", TINY, "--grid", "train.seed=1,2", "--jobs", "0"], ["'--jobs'", "greater than or equal to 1"]),
    "not-an-integer": (["predict", "latest", "Smith", "--top", "three"], ["'--top'", "valid integer"]),
    "huge-integer": (["predict", "latest", "--top", "9" * 100_000], ["'--top'", "maximum size"]),
    "huge-argument": (["runs", "x" * 100_000], ["unexpected extra argument", "(100,000 characters)"]),
    "huge-option": (["runs", "--" + "y" * 100_000], ["no such option: --yyy", "(100,002 characters)"]),
    "temperature-nan": (["sample", "--temperature", "nan"], ["'--temperature'", "finite number", "'nan'"]),
    "temperature-text": (["sample", "--temperature", "warm"], ["'--temperature'", "'warm'"]),
    "unknown-option": (["sample", "--tmperature", "1"], ["no such option: --tmperature", "--temperature"]),
    "unknown-command": (["trian", "x.yaml"], ["no such command 'trian'", "'train'"]),
    "unknown-subcommand": (["config", "shw"], ["no such command 'shw'", "'show'"]),
    "missing-argument": (["compare"], ["missing argument 'RUN'"]),
    "missing-config": (["config", "show"], ["missing argument 'CONFIG'"]),
    "missing-option-value": (["predict", "latest", "--top"], ["'--top' requires an argument"]),
    "extra-argument": (["runs", "extra"], ["unexpected extra argument", "extra"]),
}


@pytest.mark.parametrize("args, needles", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_are_one_line(cli, isolated, args, needles):
    line = assert_one_line_error(cli(*args), *needles)
    assert len(line) < 200 and "Usage:" not in line and "╭" not in line, line
    assert run_dirs(isolated) == []


HINTS = {  # what a newcomer types, and what the one line must offer
    "lr": (["train", TINY, "--lr", "0.1"], "no such option: --lr (a config key: --set optim.lr=VALUE)"),
    "seed": (["train", TINY, "--seed", "2"], "no such option: --seed (a config key: --set train.seed=VALUE)"),
    "hidden": (["train", TINY, "--hidden", "8"], "--set model.hidden_size=VALUE"),
    "epoch": (["train", TINY, "--epoch", "2"], "no such option: --epoch. Did you mean --epochs?"),
    "ls": (["ls"], "no such command 'ls'. Did you mean 'rnnctl runs'?"),
    "list": (["list"], "no such command 'list'. Did you mean 'rnnctl runs'?"),
    "resume": (["resume", "latest"], "Did you mean 'rnnctl train --resume RUN'?"),
    "forecast": (["forecast"], "Did you mean 'rnnctl predict RUN --horizon N'?"),
    "config-ls": (["config", "ls"], "Did you mean 'rnnctl config list'?"),
}


@pytest.mark.parametrize("args, hint", HINTS.values(), ids=HINTS.keys())
def test_unknown_commands_and_options_get_a_useful_hint(cli, args, hint):
    assert_one_line_error(cli(*args), hint)


def test_an_unknown_option_gets_no_far_fetched_guess(cli):
    for args in (["eval", "--lr", "1"], ["predict", "latest", "x", "--seed", "1"]):
        line = assert_one_line_error(cli(*args), f"no such option: {args[-2]}")
        assert "Did you mean" not in line and "Possible options" not in line, line  # not --help, not --set


def test_usage_errors_point_to_the_commands_help(cli):
    assert assert_one_line_error(cli("predict", "latest", "--top", "0")).endswith("(see root predict --help)")
    assert assert_one_line_error(cli("config", "show")).endswith("(see root config show --help)")


def test_usage_error_from_the_installed_command(isolated):
    """The real entry point, not click's test runner: stderr, exit code, nothing on stdout."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from rnnctl.cli import main; main()", "sample", "--temperature", "nan"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert done.stdout == "" and done.stderr.splitlines() == [
        "error: invalid value for '--temperature': expected a finite number, got 'nan' (see -c sample --help)"
    ], done.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["predict", "--help"], ["config", "--help"], ["config", "show", "--help"]]
)
def test_help_still_works(cli, args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and "error" not in result.output.lower()


@pytest.mark.parametrize("args", [[], ["config"]])
def test_no_arguments_shows_the_help(cli, args):
    result = cli(*args)
    assert result.exit_code in (0, 2)  # click's choice for a bare group; what matters is the help text
    assert "Usage:" in result.output and "Commands" in result.output and "error:" not in result.output


def test_every_float_option_refuses_nan():
    """Each command's float options go through `finite` (nan and inf would reach the model otherwise)."""
    import typing

    from rnnctl.cli import app, config_app, finite

    floats = []
    for info in [*app.registered_commands, *config_app.registered_commands]:
        hints = typing.get_type_hints(info.callback, include_extras=True)
        for name, hint in hints.items():
            base, *meta = typing.get_args(hint) or (hint,)
            if typing.Optional[float] == base or base is float:
                floats.append(name)
                assert any(getattr(m, "parser", None) is finite for m in meta), f"{info.callback.__name__}: {name}"
    assert "temperature" in floats


def test_version_and_short_help(cli):
    from rnnctl import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"rnnctl {__version__}"
    for args in (["-h"], ["train", "-h"], ["config", "-h"]):
        result = cli(*args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


# -- help, completion ----------------------------------------------------------------------------


def command_paths() -> list[list[str]]:
    """Every command and group of the app, as the words that name it: [], ["train"], ["config", "cp"], ..."""
    import typer.main

    from rnnctl.cli import app

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


PANEL_ROW = {  # at 1,000 columns (conftest) every parameter is one row of its panel, opening like this
    "Arguments": re.compile(r"│ (\*)?\s+[A-Z][A-Z_]*(\|[A-Z][A-Z_]*)*\s"),  # RUN, or RUN|SWEEP|STUDY
    "Options": re.compile(r"│ (\*)?\s*--?[a-z]"),
    "Commands": re.compile(r"│ [a-z][a-z-]* +[A-Z]"),  # a description on one row: no line break of its own
}


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "rnnctl")
def test_help_of_every_command_reads_as_words(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.lstrip().startswith(f"Usage: root {' '.join(path)}".rstrip()), text
    assert not re.search(r"<[a-z][\w \[\]|,]*>", text), text  # typer's <list[str]>, <bool>, <int range>, <path>
    for line in text.splitlines():
        if "[default:" in line:
            assert re.search(r"\[default: [^\]]+\]", line), line  # whole on its line: a newline default is '\n'
    panel = None
    for line in text.splitlines():
        if line.startswith("╭─ "):
            panel = line.split()[1]
        elif line.startswith("╰"):
            panel = None
        elif panel in PANEL_ROW:
            assert PANEL_ROW[panel].match(line), (panel, line)  # no row broken in two, no type column of its own
            assert line.rstrip().endswith("│"), line


def test_train_help_says_epochs_works_without_resume(cli):
    row = next(line for line in cli("train", "--help").stdout.splitlines() if "--epochs" in line)
    assert "Train this many epochs in all" in row and "With --resume:" not in row, row


def test_sample_help_shows_the_prompt_and_its_newline_default(cli):
    text = cli("sample", "--help").stdout
    prompt = next(line for line in text.splitlines() if "--prompt" in line)
    assert "TEXT" in prompt and "[default: (a newline)]" in prompt, prompt
    assert re.search(r"--prompt,\s*--seed\s+TEXT", prompt) and "--rng-seed" in text  # --seed: another name of it
    train = cli("train", "--help").stdout
    assert re.search(r"--set\s+KEY=VALUE", train) and re.search(r"--quiet\s+-q\s+No per-epoch", train), train


def test_shell_completion(cli, monkeypatch, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    rnnctl = Path(sys.executable).with_name("rnnctl")
    if not rnnctl.exists():
        pytest.skip("needs the installed `rnnctl` script")
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # the shell as an argument
    shown = subprocess.run([rnnctl, "--show-completion", "bash"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "_rnnctl_completion" in shown.stdout and "complete " in shown.stdout, shown
    env.update(_RNNCTL_COMPLETE="complete_bash", COMP_WORDS="rnnctl config ", COMP_CWORD="2")
    done = subprocess.run([rnnctl], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["list", "cp", "show"], done
    env.update(COMP_WORDS="rnnctl sample --", COMP_CWORD="2")
    options = subprocess.run([rnnctl], env=env, capture_output=True, text=True, timeout=60).stdout.split()
    assert {"--prompt", "--seed", "--rng-seed"} <= set(options)  # --seed: another name of --prompt
    # the completion options keep usage errors to one line
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert_one_line_error(cli("--show-completion", "nosuchshell"), "'--show-completion'", "nosuchshell")


def test_runs_with_a_filter_that_matches_nothing(cli, copy_run):
    assert cli("runs", "--task", "sine").stdout.strip() == "no runs match"
    assert cli("runs", "--status", "failed").stdout.strip() == "no runs match"
    assert copy_run.name in cli("runs", "--task", "names").stdout


def test_runs_with_a_filter_that_cannot_match(cli, copy_run):
    assert_one_line_error(cli("runs", "--status", "bogus"), "--status 'bogus'", "completed", "interrupted")
    assert_one_line_error(cli("runs", "--task", "nosuch"), "--task 'nosuch'", "names", "charlm")


def test_a_run_by_its_name(cli, copy_run, isolated):
    import shutil

    newer = isolated / copy_run.name.replace("names_tiny", "names_tiny-2")  # the same second, the same name
    shutil.copytree(copy_run, newer)
    result = cli("eval", "names_tiny")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"using run {newer.name}, ")  # the newest of that name
    info = json.loads((newer / "run.json").read_text())
    (newer / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    assert cli("eval", "names_tiny").stderr.startswith(f"using run {copy_run.name}, ")  # the newest completed
    assert_one_line_error(cli("eval", "names_tin"), "unknown run 'names_tin'")


def test_an_empty_rnnctl_runs_is_unset(cli, names_files, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNCTL_RUNS", "")
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=1", "-q")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(tmp_path / "runs")  # ./runs, not the current folder itself
    assert not list(tmp_path.glob("2*-names_tiny"))
    assert cli("runs").stdout.count(run.name) == 1

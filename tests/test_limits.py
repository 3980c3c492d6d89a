"""Inputs and limits: hostile or huge configs, overrides and data files give one short line, never a hang,
a traceback or a multi-megabyte message."""

from __future__ import annotations

import csv
import time

import pytest
import yaml
from conftest import TINY, assert_one_line_error, run_dirs, write_names

from rnnctl.config import MAX_DEPTH, MAX_VALUES, load_config
from rnnctl.errors import clip, first_line

SHORT = 300  # characters: the most any of these error lines may take (paths included)


def billion_laughs(levels: int = 9, width: int = 9, home: str = "a{i}: {value}") -> str:
    """The classic alias bomb: a few hundred bytes that expand to width**levels values. `home` places the last
    level: a key of its own, or a value pydantic validates (and, before the limits, printed in full)."""
    lines = ["task: names", "a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        value = f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]"
        lines.append((home if i == levels - 1 else "a{i}: {value}").format(i=i, value=value))
    return "\n".join(lines) + "\n"


HOSTILE = {
    "billion-laughs": (billion_laughs(), ["invalid YAML", f"more than {MAX_VALUES:,} values"]),
    "bomb-in-a-value": (  # 10**8 values: on the code before, minutes and gigabytes
        billion_laughs(levels=8, width=10, home="model: {{cell: {value}}}"),
        ["invalid YAML", "values"],
    ),
    "deep-flow": ("task: names\nmodel: " + "[" * 5000 + "]" * 5000 + "\n", ["invalid YAML", f"{MAX_DEPTH} levels"]),
    "deep-block": (
        "task: names\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
        ["invalid YAML", "levels deep", "line "],
    ),
    "recursive-alias": ("task: names\nmodel: &m {cell: *m}\n", ["invalid YAML", "*m", "inside its own anchor"]),
    "bad-date": ("task: names\nname: 2001-13-45\n", ["invalid YAML", "line 2", "'2001-13-45'", "timestamp"]),
    "empty-int-tag": ("task: names\ntrain:\n  epochs: !!int\n", ["invalid YAML", "line 3", "'' as int"]),  # IndexError
    "bad-timestamp-tag": ("task: names\nname: !!timestamp soon\n", ["invalid YAML", "'soon' as timestamp"]),
    "bad-int-tag": ("task: names\ntrain: {epochs: !!int ten}\n", ["invalid YAML", "'ten'", "as int"]),
    "too-many-digits": ("task: names\ntrain: {seed: " + "9" * 5000 + "}\n", ["invalid YAML", "as int", "5,000 char"]),
    "nan-lr": ("task: names\noptim: {lr: .nan}\n", ["optim.lr", "finite number"]),
    "inf-grad-clip": ("task: names\ntrain: {grad_clip: .inf}\n", ["train.grad_clip", "finite number"]),
    "huge-string-value": ("task: names\nmodel: {cell: " + "x" * 200_000 + "}\n", ["model.cell", "200,000 characters"]),
    "long-key": ("task: names\ntrain:\n  " + "k" * 1000 + ": 1\n", ["unknown key 'train.kkkk", "..."]),  # YAML: <= 1024
    "huge-task": ("task: " + "t" * 100_000 + "\n", ["unknown task", "100,000 characters"]),
    "huge-list-value": ("task: names\nname: [" + ", ".join(["1"] * 5000) + "]\n", ["name", "..."]),
    "newline-in-a-key": ('task: names\ntrain: {"a\\nb": 1}\n', ["unknown key 'train.a\\nb'"]),
}


@pytest.mark.parametrize("text, needles", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_config_is_one_short_line_fast(cli, tmp_path, isolated, text, needles):
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    for command in (["config", "show", path], ["train", path]):
        line = assert_one_line_error(cli(*command), str(path), *needles)
        assert len(line) < SHORT, line
    assert time.perf_counter() - start < 10  # before the limits, the bomb did not finish in minutes
    assert run_dirs(isolated) == []


def test_many_errors_are_capped(cli, tmp_path):
    path = tmp_path / "typos.yaml"
    path.write_text("task: names\ntrain:\n" + "".join(f"  typo{i}: 1\n" for i in range(500)), encoding="utf-8")
    result = cli("config", "show", path)
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and all(line.startswith(f"error: {path}: ") for line in lines)
    assert len(lines) == 11 and lines[-1].endswith("and 490 more errors"), lines[-3:]


def test_a_file_too_big_for_a_config(cli, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("task: names\n" + "# padding\n" * 200_000, encoding="utf-8")
    assert_one_line_error(cli("config", "show", path), str(path), "too big for a config")


def test_a_config_that_cannot_be_read(cli, tmp_path, monkeypatch):
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    assert_one_line_error(cli("config", "show", folder), str(folder), "not found")  # is_file: a folder is not one
    path = tmp_path / "unreadable.yaml"
    path.write_text("task: names\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_text", denied)  # mode 0 would not stop root, who runs these tests
    assert_one_line_error(cli("config", "show", path), str(path), "cannot read: Permission denied")


def test_anchors_and_merge_keys_a_real_config_uses_still_load(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "task: names\noptim: &o {lr: 0.01}\nmodel:\n  <<: {cell: lstm, hidden_size: 16}\n  layers: 2\n",
        encoding="utf-8",
    )
    cfg = load_config(path, ["train.epochs=2"])
    assert (cfg.model.cell, cfg.model.hidden_size, cfg.model.layers, cfg.optim.lr) == ("lstm", 16, 2, 0.01)


def test_an_override_does_not_change_the_sections_aliased_with_it(tmp_path):
    from rnnctl.config import apply_overrides, load_yaml

    raw = load_yaml("a: &s {x: 1}\nb: *s\n")
    assert raw["a"] is raw["b"]  # how YAML aliases load
    out = apply_overrides(raw, ["a.x=2"])
    assert out == {"a": {"x": 2}, "b": {"x": 1}} and raw == {"a": {"x": 1}, "b": {"x": 1}}


@pytest.mark.parametrize("override, needles", [
    ("name=" + "n" * 100_000, ["name", "at most 100 characters", "100,000 characters"]),  # a folder's name
    ("model.cell=" + "c" * 100_000, ["model.cell", "100,000 characters"]),
    ("optim.lr=.nan", ["optim.lr", "finite number"]),
    ("optim.lr=-.inf", ["optim.lr", "finite number"]),
    ("k" * 100_000 + "=1", ["unknown key 'kkkk", "..."]),
    ("train.epochs.x" + "y" * 100_000 + "=1", ["--set train.epochs.xyyy", "train.epochs is a value"]),
    ("=" + "v" * 100_000, ["--set '=vvvv", "100,001 characters", "expected key=value"]),
    ("model.cell=&a [*a]", ["model.cell", "unknown cell '&a [*a]'"]),  # not YAML (a recursive alias): text
])  # fmt: skip
def test_hostile_override_is_one_short_line(cli, override, needles):
    line = assert_one_line_error(cli("config", "show", TINY, "--set", override), *needles)
    assert len(line) < SHORT, line


def test_clip_keeps_a_message_short():
    assert clip("abc") == "'abc'"
    assert clip("x" * 1000) == repr("x" * 60) + "... (1,000 characters)"
    assert clip("a\nb") == "'a\\nb'"  # one line
    assert len(clip(list(range(10**5)))) < 80 and len(clip({"a": {"b": {"c": {"d": 1}}}})) < 80
    assert len(clip(b"z" * 10**5)) < 80
    assert clip(10**5000) == "an int too long to show"


def test_first_line_of_an_exception():
    assert first_line(ValueError("\n  bad value\nmore detail")) == "bad value"
    assert first_line(RuntimeError()) == "RuntimeError"  # no text: its type's name
    assert first_line(ValueError("  ")) == "ValueError"


# -- data files ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_review_longer_than_the_csv_field_limit_is_read(cli, tmp_path, isolated):
    long_review = "word " * 40_000  # 200,000 characters: over csv's default limit of 131,072
    rows = [(f"a good film {i} " if i % 2 else f"a bad film {i} ", "pos" if i % 2 else "neg") for i in range(40)]
    rows[0] = (long_review, "neg")
    train = tmp_path / "reviews.csv"
    train.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows), encoding="utf-8")
    from rnnctl.data import read_csv

    read = read_csv(train)
    assert read[1][1][0] == long_review and len(read) == 41
    result = cli(
        "train", TINY.parent / "sentiment_tiny.yaml", "--set", f"data.path={train}", "--set", "train.epochs=1", "-q"
    )
    assert result.exit_code == 0, result.output


def test_the_field_limit_is_raised_without_overflow(monkeypatch, tmp_path):
    """csv.field_size_limit takes a C long; where that is 32 bits, a bigger limit overflows: halve until it fits."""
    from rnnctl import data

    current = csv.field_size_limit()
    calls = []

    def limited(n=None):
        if n is None:
            return current
        calls.append(n)
        if n > 2**31 - 1:
            raise OverflowError("Python int too large to convert to C long")
        return current

    monkeypatch.setattr(data.csv, "field_size_limit", limited)
    data._field_limit(2**40)
    assert calls[0] == 2**40 and calls[-1] <= 2**31 - 1 and len(calls) > 1


def test_a_damaged_gzip_file_is_a_data_error(cli, tmp_path, names_files, isolated):
    import gzip

    good = gzip.compress(names_files.train.read_bytes(), mtime=0)
    damaged = tmp_path / "damaged.csv.gz"
    damaged.write_bytes(good[:10] + bytes(b ^ 0x55 for b in good[10:40]) + good[40:])
    result = cli("train", TINY, "--set", f"data.path={damaged}", "--set", f"data.test_path={names_files.test}")
    assert_one_line_error(result, str(damaged), "cannot read")
    assert run_dirs(isolated) == []


def test_a_huge_label_is_cut_in_the_message(cli, tmp_path, names_files, isolated):
    test = write_names(tmp_path / "test.csv", [("Smith", "L" * 100_000)])
    result = cli("train", TINY, "--set", f"data.path={names_files.train}", "--set", f"data.test_path={test}")
    line = assert_one_line_error(result, str(test), "row 2", "label 'LLLL", "100,000 characters")
    assert len(line) < SHORT


def test_a_huge_series_value_is_cut_in_the_message(cli, tmp_path, isolated):
    path = tmp_path / "series.csv"
    path.write_text("t,v\n1,1\n2,2\n3," + "9" * 50_000 + "x\n4,4\n", encoding="utf-8")
    series = TINY.parent / "series_tiny.yaml"
    line = assert_one_line_error(cli("train", series, "--set", f"data.path={path}"), str(path), "row 4", "not a number")
    assert len(line) < SHORT


def test_yaml_of_the_shipped_tiny_configs_is_plain(tmp_path):
    """The limits stay far above what a real config needs."""
    for path in TINY.parent.glob("*.yaml"):
        assert yaml.safe_load(path.read_text()) is not None
        load_config(path)


@pytest.mark.parametrize("text, needle", [
    ("task: *" + "a" * 100_000 + "\n", "found undefined alias 'aaaa"),  # PyYAML quotes the alias in full
    ("task: !" + "t" * 100_000 + " x\n", "could not determine a constructor for the tag '!ttt"),
])  # fmt: skip
def test_yaml_errors_that_quote_the_input_are_cut(cli, tmp_path, text, needle):
    path = tmp_path / "quoting.yaml"
    path.write_text(text, encoding="utf-8")
    line = assert_one_line_error(cli("config", "show", path), str(path), "invalid YAML", needle, "characters)")
    assert len(line) < SHORT, line

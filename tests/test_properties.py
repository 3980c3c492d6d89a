"""Property-based tests (hypothesis) of what reads user input: the config loader, the --set overrides and the
data readers. Whatever the input, each either returns what it promises or raises rnnctl's own error with a
short message; any other exception is a bug (the CLI would print a traceback)."""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rnnctl import cells
from rnnctl.config import MAX_ERRORS, apply_overrides, dump_yaml, load_config
from rnnctl.data import read_csv, read_text
from rnnctl.errors import ConfigError, DataError, RnnctlError
from rnnctl.tasks import task_names
from rnnctl.tasks.series import read_series
from rnnctl.tasks.text import read_examples

# fast and deterministic enough for every run: no deadline (a cold import or a slow CI machine is not a bug);
# examples write one file under tmp_path, overwritten each time (hence the function-scoped fixture is fine)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LONGEST_LINE = 400  # characters of one error line, its file path included


def assert_short_error(e: RnnctlError, *starts: str) -> None:
    """The message is one short line per problem (at most MAX_ERRORS + 1), each naming where."""
    lines = str(e).splitlines()
    assert 1 <= len(lines) <= MAX_ERRORS + 1, lines
    for line in lines:
        assert len(line) <= LONGEST_LINE, line
        if starts:
            assert line.startswith(starts), (starts, line)


# -- strategies ----------------------------------------------------------------------------------

KEYS = [
    "task", "name", "data", "model", "optim", "train", "log", "derived", "path", "test_path", "val_fraction",
    "cell", "layers", "hidden_size", "bidirectional", "dropout", "lr", "momentum", "epochs", "batch_size", "seed",
    "schedule", "early_stop", "patience", "device", "tensorboard", "column", "lookback", "horizon", "<<",
]  # fmt: skip
TRICKY = [
    "2001-13-45", "2001-02-03", "1e400", "-1e400", ".nan", ".inf", "0x1F", "0o17", "0b101", "1_000", "190:20:30",
    "~", "null", "yes", "No", "on", "=", "[", "{", "*a", "&a", "!!int x", "9" * 5000, "", " ", "\t", "\x00",
    "\ufeff", "é", "ß" * 3, "a\nb", "a: b", "#", "- x", "'", '"', "\\",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # nan and inf included
    st.text(max_size=20),
    st.sampled_from([*task_names(), *cells.names(), *TRICKY]),
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), inner, max_size=5),
    ),
    max_leaves=16,
)
SECTIONS = st.fixed_dictionaries(
    {"task": st.one_of(st.sampled_from(task_names()), SCALARS)},
    optional={k: TREES for k in ("name", "data", "model", "optim", "train", "log", "derived", "other")},
)
# a section made mostly of keys and values the configs really have, so validation is reached past the first key
REALISTIC = st.fixed_dictionaries(
    {"task": st.sampled_from(task_names())},
    optional={
        "model": st.dictionaries(st.sampled_from(["cell", "layers", "hidden_size", "dropout", "stepwise"]), SCALARS),
        "optim": st.dictionaries(st.sampled_from(["name", "lr", "momentum", "weight_decay"]), SCALARS),
        "train": st.dictionaries(st.sampled_from(["epochs", "batch_size", "seed", "grad_clip", "device"]), SCALARS),
        "data": st.dictionaries(st.sampled_from(["path", "val_fraction", "bptt", "lookback", "header"]), SCALARS),
    },
)
FRAGMENTS = [
    "task: names\n", "task: charlm\n", "model:\n", "  cell: ", "  layers: ", "train: ", "optim: {lr: ", "\n", "  ",
    "&a ", "*a", "&b ", "*b", "<<: ", "!!int ", "!!float ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ",
    "!!python/object:os.system ", "!!str ", "!custom ", "[", "]", "{", "}", ", ", ": ", "- ", "? ", "'", '"', "|\n",
    ">\n", "# c\n", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t", "\x00", "\ufeff", "\r\n", "\x85",
]  # fmt: skip
YAML_SOUP = st.lists(st.sampled_from(FRAGMENTS + TRICKY), max_size=30).map("".join)


# -- the config loader ---------------------------------------------------------------------------


def _load_file(path: Path, overrides: list[str] = ()) -> None:
    """load_config gives a Config that survives `config show` and back, or a short ConfigError naming the file."""
    try:
        cfg = load_config(path, overrides)
    except RnnctlError as e:
        assert isinstance(e, ConfigError), repr(e)
        assert_short_error(e, str(path), "--set")
        return
    shown = path.with_name("shown.yaml")
    shown.write_text(dump_yaml(cfg.to_dict()), encoding="utf-8")
    assert load_config(shown).to_dict() == cfg.to_dict()  # `rnnctl config show` prints a config that loads


@PROPERTY
@given(text=st.one_of(st.text(max_size=300), YAML_SOUP))
def test_any_text_as_a_config_file(tmp_path, text):
    path = tmp_path / "any.yaml"
    path.write_text(text, encoding="utf-8")
    _load_file(path)


@PROPERTY
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_config_file(tmp_path, data):
    path = tmp_path / "bytes.yaml"
    path.write_bytes(data)
    _load_file(path)


@PROPERTY
@given(raw=st.one_of(SECTIONS, REALISTIC, TREES))
@example(raw={"task": "charlm", "log": "\r"})  # a section given a control character: the error stayed one line
def test_any_yaml_data_as_a_config_file(tmp_path, raw):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    _load_file(path)


@PROPERTY
@given(raw=REALISTIC, aliases=st.integers(1, 12), width=st.integers(2, 12))
def test_aliases_load_or_are_refused_quickly(tmp_path, raw, aliases, width):
    """Chains of aliases: small ones load like their expansion, big ones are refused (never walked)."""
    lines = ["a0: &a0 [1, 2]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, aliases)]
    text = yaml.safe_dump(raw, sort_keys=False) + "\n".join(f"x-{line}" for line in lines) + "\n"
    path = tmp_path / "aliases.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:  # x-a0... are unknown keys, or the expansion is too big
        load_config(path)
    assert_short_error(info.value, str(path))
    if 2 * width ** (aliases - 1) > 20_000:
        assert "values" in str(info.value)


# -- overrides -----------------------------------------------------------------------------------

DOTTED = st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), min_size=1, max_size=4).map(".".join)
VALUES = st.one_of(st.text(max_size=20), st.sampled_from(TRICKY + FRAGMENTS), YAML_SOUP)
OVERRIDES = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", DOTTED, VALUES), st.text(max_size=30)),
    max_size=4,
)


@PROPERTY
@given(raw=st.one_of(REALISTIC, SECTIONS), overrides=OVERRIDES)
def test_any_overrides(tmp_path, raw, overrides):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    _load_file(path, overrides)


@PROPERTY
@pytest.mark.slow
@given(raw=st.dictionaries(st.sampled_from(KEYS), st.one_of(TREES, REALISTIC)), overrides=OVERRIDES)
def test_overrides_set_what_they_say_and_leave_the_input_alone(raw, overrides):
    assume(not any(isinstance(v, float) and math.isnan(v) for v in _leaves(raw)))  # nan != nan
    before = repr(raw)
    try:
        out = apply_overrides(raw, overrides)
    except RnnctlError as e:
        assert isinstance(e, ConfigError) and str(e).startswith("--set ")
        assert_short_error(e, "--set ")
        return
    assert repr(raw) == before
    for item in overrides:  # the last override of a key wins; check those not overridden later
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        later = [o.partition("=")[0].strip().split(".") for o in overrides[overrides.index(item) + 1 :]]
        if any(p[: len(parts)] == parts or parts[: len(p)] == p for p in later):
            continue
        node = out
        for part in parts:
            node = node[part]
        if text.strip() in ("1", "lstm", "0.5"):
            assert node == yaml.safe_load(text)


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@PROPERTY
@given(key=DOTTED, value=st.sampled_from(["1", "lstm", "0.5"]))
def test_a_well_formed_override_lands_on_its_key(key, value):
    assume(all(part for part in key.strip().split(".")) and "=" not in key)  # the key is stripped, not its parts
    try:
        out = apply_overrides({"train": {"epochs": 3}}, [f"{key}={value}"])
    except ConfigError as e:  # only a key through the one value there is an error
        assert key.strip().startswith("train.epochs.") and "train.epochs is a value, not a section" in str(e)
        return
    node = out
    try:
        for part in key.strip().split("."):
            node = node[part]
    except (KeyError, TypeError):
        pytest.fail(f"{key}={value} did not land: {out}")
    assert node == yaml.safe_load(value)


@pytest.mark.slow
@PROPERTY
@given(
    text=st.one_of(YAML_SOUP, st.one_of(SECTIONS, REALISTIC).map(lambda r: yaml.safe_dump(r, sort_keys=False))),
    overrides=OVERRIDES,
)
def test_config_show_prints_a_config_or_one_line_per_problem(cli, tmp_path, text, overrides):
    """Through the real command: exit 0 and a YAML mapping, or exit 1 and only `error: ...` lines."""
    path = tmp_path / "shown.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("config", "show", path, *[f"--set={o}" for o in overrides])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 0:
        assert isinstance(yaml.safe_load(result.stdout), dict) and result.stderr == ""
    else:
        lines = result.stderr.splitlines()
        assert result.exit_code == 1 and 1 <= len(lines) <= MAX_ERRORS + 1, result.stderr
        assert all(line.startswith("error: ") and len(line) <= LONGEST_LINE for line in lines), lines


# -- data readers ---------------------------------------------------------------------------------

FIELD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", ",", '"', "\n", "\r", "\r\n", "a,b", 'say "hi"', "1", "-2.5", "nan", "inf", "1e400"]),
    st.sampled_from(["2001-01", "2001-02", "2001-01-31", "1999-12-31T23:59", "name", "label", "text", "Month"]),
    st.floats(allow_nan=False).map(str),
)
ROWS = st.lists(st.lists(FIELD_TEXT, max_size=4), max_size=12)


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


CONTENT = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    ROWS.map(lambda rows: _csv(rows).encode("utf-8")),
    ROWS.map(lambda rows: gzip.compress(_csv(rows).encode("utf-8"), mtime=0)),
    st.binary(max_size=60).map(lambda b: b"\x1f\x8b" + b),  # gzip's magic, then anything
    st.binary(max_size=60).map(lambda b: gzip.compress(b"a,b\n" * 5, mtime=0)[:20] + b),  # damaged gzip
)


def _reads(fn, path: Path, *args):
    """fn(path, *args), or None after a short DataError naming the file."""
    try:
        return fn(path, *args)
    except RnnctlError as e:
        assert isinstance(e, DataError), repr(e)
        assert_short_error(e)
        assert str(path) in str(e) or str(e).startswith(("data.column", "data.date_column")), str(e)
        return None


@PROPERTY
@given(content=CONTENT)
def test_read_text_and_read_csv_on_any_file(tmp_path, content):
    path = tmp_path / "any.csv"
    path.write_bytes(content)
    text = _reads(read_text, path)
    if text is not None:
        assert "\r" not in text
    rows = _reads(read_csv, path)
    if rows is not None:
        assert text is not None
        lines = [line for line, _ in rows]
        assert lines == sorted(lines) and len(set(lines)) == len(lines)
        assert all(row and any(f.strip() for f in row) for _, row in rows)


@PROPERTY
@given(rows=ROWS, crlf=st.booleans(), gz=st.booleans(), quote_all=st.booleans())
def test_read_csv_gives_back_the_rows_written(tmp_path, rows, crlf, gz, quote_all):
    # csv.writer quotes a field with a character of its line terminator; with "\n" it leaves a "\r" bare,
    # which every reader (and read_text's universal newlines) takes for the end of a line
    assume(crlf or quote_all or not any("\r" in f for row in rows for f in row))
    buf = io.StringIO()
    quoting = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=quoting).writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path = tmp_path / "rows.csv"
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    expected = [
        [f.replace("\r\n", "\n").replace("\r", "\n") for f in row]  # universal newlines, inside quotes too
        for row in rows
        if row and any(f.strip() for f in row)
    ]
    if expected and expected[0][0].startswith("\ufeff"):
        expected[0][0] = expected[0][0][1:]  # a leading byte-order mark is not data
    assert [row for _, row in read_csv(path)] == expected


def test_a_field_longer_than_csvs_default_limit(tmp_path):
    path = tmp_path / "long.csv"
    long = "x" * 300_000
    path.write_text(f'"{long}",pos\nshort,neg\n', encoding="utf-8")
    assert [row for _, row in read_csv(path)] == [[long, "pos"], ["short", "neg"]]


@PROPERTY
@given(
    content=CONTENT,
    header=st.sampled_from(["auto", "yes", "no"]),
    strip=st.booleans(),
)
def test_read_examples_on_any_file(tmp_path, content, header, strip):
    path = tmp_path / "examples.csv"
    path.write_bytes(content)
    examples = _reads(read_examples, path, header, {"name", "text", "label"}, "name,label", strip)
    for e in examples or []:
        assert e.text.strip() and e.label and e.label == e.label.strip() and str(path) in e.where


@PROPERTY
@given(pairs=st.lists(st.tuples(FIELD_TEXT, FIELD_TEXT), max_size=10))
def test_read_examples_gives_back_well_formed_pairs(tmp_path, pairs):
    path = tmp_path / "pairs.csv"
    path.write_text(_csv([["text", "label"], *pairs]), encoding="utf-8")
    examples = _reads(read_examples, path, "yes", {"text", "label"}, "text,label", False)
    clean = [
        (t.replace("\r\n", "\n").replace("\r", "\n"), lab.replace("\r\n", "\n").replace("\r", "\n")) for t, lab in pairs
    ]
    clean = [(t, lab) for t, lab in clean if t.strip() or lab.strip()]  # blank rows are skipped
    if all(t.strip() and lab.strip() for t, lab in clean):
        assert examples is not None
        assert [(e.text, e.label) for e in examples] == [(t, lab.strip()) for t, lab in clean]
    else:
        assert examples is None  # an empty text or label is an error that names the row


@PROPERTY
@given(
    content=st.one_of(CONTENT, ROWS.map(lambda r: _csv([["Month", "Passengers"], *r]).encode())),
    column=st.one_of(st.none(), FIELD_TEXT),
    date_column=st.one_of(st.none(), FIELD_TEXT),
)
def test_read_series_on_any_file(tmp_path, content, column, date_column):
    path = tmp_path / "series.csv"
    path.write_bytes(content)
    got = _reads(read_series, path, column, date_column)
    if got is not None:
        values, dates, name, lines = got
        assert len(values) >= 3 and len(lines) == len(values) and all(math.isfinite(v) for v in values)
        assert dates is None or len(dates) == len(values)
        assert lines == sorted(lines)


@PROPERTY
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=3, max_size=30),
    start=st.integers(1900, 2100),
)
def test_read_series_gives_back_a_monthly_series(tmp_path, values, start):
    path = tmp_path / "monthly.csv"
    rows = [[f"{start + i // 12}-{i % 12 + 1:02d}", repr(v)] for i, v in enumerate(values)]
    path.write_text(_csv([["Month", "Passengers"], *rows]), encoding="utf-8")
    got, dates, name, lines = read_series(path, None, None)
    assert got == values and dates == [r[0] for r in rows] and name == "Passengers"
    assert lines == list(range(2, len(values) + 2))

"""The names task's data: file layouts, encodings, bad rows, splits and batching."""

from __future__ import annotations

import gzip

import pytest
import torch
from conftest import TINY, Spy, assert_one_line_error, gen_names, pairs, tiny_config, write_names

from rnnctl.data import read_text, stratified_split
from rnnctl.errors import DataError
from rnnctl.tasks import get_task
from rnnctl.tasks.classification import SequenceSplit, pad
from rnnctl.tasks.names import NamesData
from rnnctl.tasks.names import load_examples as _load_examples
from rnnctl.tasks.text import Example, sample

TASK = get_task("names")
ROWS = gen_names(80, seed=5)
TEST_ROWS = gen_names(20, seed=6)


def load_examples(data: NamesData):
    """(train, test) examples, whatever else load_examples returns between them."""
    found = _load_examples(data)
    return found[0], found[-1]


# -- file formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_csv_formats_read_the_same_rows(tmp_path, header, gz, newline):
    suffix = ".csv.gz" if gz else ".csv"
    train = write_names(tmp_path / f"train{suffix}", ROWS, header=header, gz=gz, newline=newline)
    test = write_names(tmp_path / f"test{suffix}", TEST_ROWS, header=header, gz=gz, newline=newline)
    if gz:
        assert train.read_bytes()[:2] == b"\x1f\x8b"
    if newline == "\r\n":
        assert b"\r\n" in (gzip.decompress(train.read_bytes()) if gz else train.read_bytes())
    got_train, got_test = load_examples(NamesData(path=str(train), test_path=str(test)))
    assert pairs(got_train) == ROWS
    assert pairs(got_test) == TEST_ROWS
    assert not any("\r" in e.text or "\r" in e.label for e in got_train)


def test_explicit_header_setting(tmp_path):
    # header: no keeps a first row that looks like a header; header: yes drops a first row that doesn't
    rows = [("name", "label"), *ROWS]
    train = write_names(tmp_path / "train.csv", rows, header=False)
    test = write_names(tmp_path / "test.csv", TEST_ROWS, header=False)
    assert pairs(load_examples(NamesData(path=str(train), test_path=str(test), header="no"))[0]) == rows
    assert pairs(load_examples(NamesData(path=str(train), test_path=str(test), header="auto"))[0]) == ROWS
    plain = write_names(tmp_path / "plain.csv", ROWS, header=False)
    assert pairs(load_examples(NamesData(path=str(plain), test_path=str(test), header="yes"))[0]) == ROWS[1:]


def test_folder_with_train_and_test_csv(tmp_path):
    write_names(tmp_path / "d" / "names_train.csv.gz", ROWS, gz=True)
    write_names(tmp_path / "d" / "names_test.csv.gz", TEST_ROWS, gz=True)
    train, test = load_examples(NamesData(path=str(tmp_path / "d")))
    assert pairs(train) == ROWS and pairs(test) == TEST_ROWS


def test_folder_of_label_txt_files_carves_a_test_split(tmp_path):
    folder = tmp_path / "names"
    by_label: dict[str, list[str]] = {}
    for name, label in ROWS:
        by_label.setdefault(label, []).append(name)
    for label, names in by_label.items():
        (folder / f"{label}.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{label}.txt").write_text("\n".join(names) + "\n\n", encoding="utf-8")
    cfg = tiny_config_for(folder)
    prepared = TASK.prepare(cfg)
    assert prepared.meta["classes"] == sorted(by_label)
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    assert sizes["train"] + sizes["val"] + sizes["test"] == len(ROWS)
    # test carved with test_fraction 0.2, stratified: every class is in it
    assert sizes["test"] == sum(round(0.2 * len(v)) for v in by_label.values())
    assert set(prepared.splits["test"].labels.tolist()) == set(range(len(by_label)))
    # the layout has no test split: every row is read as training data, and the pipeline carves from it
    train, test = load_examples(cfg.data)
    assert test is None and sorted(pairs(train)) == sorted(ROWS)


def tiny_config_for(path, *more):
    from rnnctl.config import load_config

    return load_config(TINY, [f"data.path={path}", *more])


def test_max_examples_samples_each_split_by_class(names_files):
    train = gen_names(240, seed=1)
    examples = [Example(name, label, f"row {i}") for i, (name, label) in enumerate(train)]
    class_id = {c: i for i, c in enumerate(sorted({label for _, label in train}))}
    picked = sample(examples, class_id, 100, 3)
    assert len(picked) == 100 and [e.label for e in picked].count("Slavic") == 25  # 60 of 240 -> 25 of 100
    assert [examples.index(e) for e in picked] == sorted(examples.index(e) for e in picked)  # in file order
    assert pairs(sample(examples, class_id, 100, 3)) == pairs(picked) != pairs(sample(examples, class_id, 100, 4))
    assert sample(examples, class_id, 240, 3) is examples and sample(None, class_id, 5, 0) is None
    cfg = tiny_config(names_files, "data.max_examples=100", "data.split_seed=3")
    p = TASK.prepare(cfg)
    assert p.derived["examples"] == {"train": 92, "val": 8, "test": 60}  # test (60 rows) is whole; val from the 100
    assert TASK.prepare(cfg).splits["train"].labels.tolist() == p.splits["train"].labels.tolist()  # seeded


def test_a_sample_keeps_every_class_then_goes_by_size():
    rows = [Example(f"n{i}", label, "") for i, label in enumerate(["a"] * 70 + ["b"] * 25 + ["c"] * 5)]
    labels = lambda n: sorted(e.label for e in sample(rows, {"a": 0, "b": 1, "c": 2}, n, 0))  # noqa: E731
    assert labels(10) == ["a"] * 6 + ["b"] * 3 + ["c"]  # one each, then 7 as 69:24:4 -> 4.98, 1.73, 0.29 -> 5, 2, 0
    assert labels(2) == ["a", "b"]  # too few for one of each: by size alone, 1.4 and 0.5 -> 1 and 1


def test_packaged_data_by_name(tmp_path, names_files):
    cfg = tiny_config_for("packaged:names", "data.test_path=packaged:names/names_test.csv.gz", "data.max_examples=200")
    p = TASK.prepare(cfg)
    assert p.derived["examples"]["test"] == 200 and p.derived["examples"]["train"] + p.derived["examples"]["val"] == 200
    assert len(p.meta["classes"]) == 18 and set(p.splits["train"].labels.tolist()) == set(range(18))
    for bad in ("packaged:nope", "packaged:names/nope.csv", "packaged:names/../airline", "packaged:/etc"):
        with pytest.raises(DataError, match=r"data\.path: no packaged data .*\(packaged data sets: airline, names, "):
            TASK.prepare(tiny_config_for(bad))
    with pytest.raises(DataError, match=r"data\.test_path: .*names is not a file"):
        TASK.prepare(tiny_config_for(names_files.train, "data.test_path=packaged:names"))


def test_read_text_tolerates_bom_and_old_mac_newlines(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b"\xef\xbb\xbfa,b\rc,d\r\ne,f\n")
    assert read_text(p) == "a,b\nc,d\ne,f\n"


# -- accented names and unknown characters -------------------------------------------------------


def test_accented_names_and_unknown_characters(tmp_path):
    rows = [*ROWS, ("Åbel", "Gaelic"), ("Dvořák", "Slavic"), ("Åbel", "Gaelic"), ("Dvořák", "Slavic")]
    train = write_names(tmp_path / "train.csv", rows)
    test = write_names(tmp_path / "test.csv", [("Ĳssel", "Gaelic"), ("Dvořák", "Slavic")])
    cfg = tiny_config_for(train, f"data.test_path={test}", "data.val_fraction=0.01")
    prepared = TASK.prepare(cfg)
    alphabet = prepared.meta["alphabet"]
    assert alphabet[:2] == ["<pad>", "<unk>"]
    for ch in "Åřá":
        assert ch in alphabet
    assert "Ĳ" not in alphabet
    stoi = {c: i for i, c in enumerate(alphabet)}
    test_split = prepared.splits["test"]
    encoded = {int(test_split.labels[i]): test_split.x[i, : int(test_split.lengths[i])].tolist() for i in range(2)}
    gaelic, slavic = prepared.meta["classes"].index("Gaelic"), prepared.meta["classes"].index("Slavic")
    assert encoded[slavic] == [stoi[c] for c in "Dvořák"]
    assert encoded[gaelic][0] == 1  # Ĳ never seen in training: <unk>
    assert encoded[gaelic][1:] == [stoi[c] for c in "ssel"]

    # at predict time, unseen characters go to id 1 as well, and are reported
    spy = Spy(len(prepared.meta["classes"]))
    out = TASK.predict(spy, prepared.meta, ["Åbel", "Ωmega"], top=2)
    x, lengths = spy.seen[0]
    assert lengths.tolist() == [4, 5]
    assert x[0, :4].tolist() == [stoi[c] for c in "Åbel"]
    assert x[1, 0].item() == 1 and x[1, 1:5].tolist() == [stoi.get(c, 1) for c in "mega"]
    assert out[0]["unknown_chars"] == [] and out[1]["unknown_chars"] == ["Ω"]
    assert len(out[0]["top"]) == 2


def test_predict_rejects_empty_name():
    meta = {"alphabet": ["<pad>", "<unk>", "a"], "classes": ["A", "B"]}
    model = TASK.build_model(tiny_config_for("x"), meta)
    with pytest.raises(DataError, match="empty name"):
        TASK.predict(model, meta, ["a", "  "], 2)


# -- bad data ------------------------------------------------------------------------------------


def test_row_with_wrong_number_of_fields_names_file_and_row(tmp_path, names_files):
    rows = list(ROWS)
    rows[3] = ("Smith", "Gaelic", "extra")  # with the header on line 1, this is line 5
    bad = write_names(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as info:
        load_examples(NamesData(path=str(bad), test_path=str(names_files.test)))
    assert str(info.value) == f"{bad}: row 5: expected 2 fields (name,label), got 3"


def test_row_with_one_field(tmp_path, names_files):
    bad = tmp_path / "bad.csv"
    bad.write_text("Petrov,Slavic\nMcCoy\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv: row 2: expected 2 fields \(name,label\), got 1"):
        load_examples(NamesData(path=str(bad), test_path=str(names_files.test)))


def test_empty_name_or_label(tmp_path, names_files):
    bad = write_names(tmp_path / "bad.csv", [*ROWS[:3], ("Petrov", " ")])
    with pytest.raises(DataError, match=r"row 5: empty label"):
        load_examples(NamesData(path=str(bad), test_path=str(names_files.test)))


@pytest.mark.parametrize("content", ["", "name,label\n", "\n\n  \n"], ids=["empty", "header-only", "blank-lines"])
def test_empty_data_set(tmp_path, names_files, content):
    empty = tmp_path / "empty.csv"
    empty.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: no examples"):
        load_examples(NamesData(path=str(empty), test_path=str(names_files.test)))
    with pytest.raises(DataError, match=r"empty\.csv: no examples"):
        load_examples(NamesData(path=str(names_files.train), test_path=str(empty)))


def test_test_label_not_in_training(tmp_path, names_files):
    test = write_names(tmp_path / "test.csv", [*TEST_ROWS[:4], ("Olsen", "Nordic")])
    cfg = tiny_config_for(names_files.train, f"data.test_path={test}")
    with pytest.raises(DataError) as info:
        TASK.prepare(cfg)
    msg = str(info.value)
    assert f"{test}: row 6" in msg and "'Nordic'" in msg and "does not occur in the training data" in msg


def test_missing_data_file(tmp_path, names_files):
    with pytest.raises(DataError, match=r"data\.path: .*nope\.csv does not exist"):
        TASK.prepare(tiny_config_for(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"data\.test_path: .*nope\.csv does not exist"):
        TASK.prepare(tiny_config_for(names_files.train, f"data.test_path={tmp_path / 'nope.csv'}"))


def test_default_path_uses_rnnctl_data(tmp_path, monkeypatch, names_files):
    # the autouse fixture points RNNCTL_DATA at an empty folder: without names/ there, the packaged copy
    train, test = load_examples(NamesData())
    assert len(train) == 13374 and len(test) == 6700
    local = tmp_path / "local"
    write_names(local / "names" / "names_train.csv", ROWS)
    write_names(local / "names" / "names_test.csv", TEST_ROWS)
    monkeypatch.setenv("RNNCTL_DATA", str(local))
    train, test = load_examples(NamesData())
    assert pairs(train) == ROWS and pairs(test) == TEST_ROWS


def test_a_wrong_rnnctl_data_is_an_error_not_the_packaged_copy(tmp_path, monkeypatch, cli, isolated):
    monkeypatch.setenv("RNNCTL_DATA", str(tmp_path / "no-such-folder"))
    with pytest.raises(DataError, match=r"\$RNNCTL_DATA: .*no-such-folder is not a folder"):
        load_examples(NamesData())
    assert_one_line_error(cli("train", "smoke/names_tiny"), "$RNNCTL_DATA", "no-such-folder", "not a folder")
    assert not isolated.exists() or not any(isolated.iterdir())  # no run folder
    monkeypatch.setenv("RNNCTL_DATA", "")  # set but empty: as if unset
    assert len(load_examples(NamesData())[0]) == 13374


def test_not_utf8(tmp_path, names_files):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("Dvořák,Slavic\n".encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(NamesData(path=str(bad), test_path=str(names_files.test)))


# -- splits --------------------------------------------------------------------------------------


def test_stratified_split_is_seeded_and_keeps_every_class_in_both_parts():
    labels = torch.tensor([0] * 30 + [1] * 7 + [2] * 2 + [3] * 1)
    keep, held = stratified_split(labels, 0.1, seed=3)
    keep2, held2 = stratified_split(labels, 0.1, seed=3)
    assert torch.equal(keep, keep2) and torch.equal(held, held2)
    other = [stratified_split(labels, 0.1, seed=s)[1] for s in range(4, 9)]
    assert any(not torch.equal(held, h) for h in other)
    # a partition of all indices
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(labels)))
    for c, n in ((0, 30), (1, 7), (2, 2)):  # classes with >= 2 examples: in both parts
        assert (labels[keep] == c).any() and (labels[held] == c).any()
    assert (labels[held] == 0).sum() == 3 and (labels[held] == 1).sum() == 1
    assert 39 in keep.tolist() and 39 not in held.tolist()  # the single example stays in keep


def test_val_split_through_prepare_is_seeded(names_files):
    def val_names(*more):
        prepared = TASK.prepare(tiny_config(names_files, *more))
        val = prepared.splits["val"]
        return prepared, sorted(
            val.x[i, : int(val.lengths[i])].tolist() + [int(val.labels[i])] for i in range(len(val))
        )

    p1, v1 = val_names()
    _, v2 = val_names("train.seed=5")  # the split does not follow the training seed
    _, v3 = val_names("data.split_seed=1")
    assert v1 == v2
    assert v1 != v3
    n_classes = len(p1.meta["classes"])
    for part in ("train", "val"):
        assert set(p1.splits[part].labels.tolist()) == set(range(n_classes))
    assert len(p1.splits["val"]) == 24 and len(p1.splits["train"]) == 216
    assert p1.derived["examples"] == {"train": 216, "val": 24, "test": 60}
    assert p1.derived["alphabet_size"] == len(p1.meta["alphabet"])


# -- batching ------------------------------------------------------------------------------------


def make_split(lengths: list[int], bucket: bool) -> SequenceSplit:
    x, lens = pad([[i % 7 + 2] * n for i, n in enumerate(lengths)])
    return SequenceSplit(x, lens, torch.arange(len(lengths)), bucket)  # label i = example i


LENGTHS = [((i * 37) % 11) + 1 for i in range(103)]


@pytest.mark.parametrize("bucket", [True, False], ids=["bucket", "no-bucket"])
@pytest.mark.parametrize("shuffled", [True, False], ids=["train", "eval"])
def test_every_example_once_per_epoch(bucket, shuffled):
    split = make_split(LENGTHS, bucket)
    gen = torch.Generator().manual_seed(0) if shuffled else None
    for _ in range(3):  # several epochs from the same generator
        order = split.order(16, gen)
        assert sorted(torch.cat(order).tolist()) == list(range(len(LENGTHS)))
        assert all(len(b) <= 16 for b in order)
        assert sum(len(b) == 16 for b in order) == len(LENGTHS) // 16
        served = []
        for batch in split.batches(16, gen):
            served += batch.targets.tolist()
            # each batch is cut to its own longest sequence, and holds the right rows
            assert batch.x.size(1) == int(batch.lengths.max())
            for row, label in zip(batch.x, batch.targets.tolist()):
                assert row[: LENGTHS[label]].tolist() == [label % 7 + 2] * LENGTHS[label]
                assert (row[LENGTHS[label] :] == 0).all()
        assert sorted(served) == list(range(len(LENGTHS)))


def test_bucketing_groups_by_length_and_is_seeded():
    bucketed, plain = make_split(LENGTHS, True), make_split(LENGTHS, False)

    def intervals(split, seed):
        return [
            (int(split.lengths[b].min()), int(split.lengths[b].max()))
            for b in split.order(16, torch.Generator().manual_seed(seed))
        ]

    spans = sorted(intervals(bucketed, 0))
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2  # batches are slices of the length-sorted order

    def padding(split):
        return sum(
            int(split.lengths[b].max()) * len(b) - int(split.lengths[b].sum())
            for b in split.order(16, torch.Generator().manual_seed(0))
        )

    assert padding(bucketed) < padding(plain)
    # seeded: the same seed serves the same batches; another seed does not
    order = lambda split, seed: [b.tolist() for b in split.order(16, torch.Generator().manual_seed(seed))]  # noqa: E731
    for split in (bucketed, plain):
        assert order(split, 0) == order(split, 0)
        assert order(split, 0) != order(split, 1)
    # eval order is by length, deterministic
    ev = torch.cat(bucketed.order(16, None))
    assert bucketed.lengths[ev].tolist() == sorted(LENGTHS)


@pytest.mark.skipif("val_path" not in NamesData.model_fields, reason="no data.val_path in this version")
def test_explicit_val_file(tmp_path, names_files):
    val = write_names(tmp_path / "val.csv", gen_names(12, seed=9))
    prepared = TASK.prepare(tiny_config(names_files, f"data.val_path={val}"))
    assert len(prepared.splits["val"]) == 12 and len(prepared.splits["train"]) == 240
    bad = write_names(tmp_path / "badval.csv", [("Olsen", "Nordic")])
    with pytest.raises(DataError, match=r"badval\.csv: row 2: label 'Nordic' does not occur"):
        TASK.prepare(tiny_config(names_files, f"data.val_path={bad}"))

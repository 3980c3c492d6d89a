"""The charlm task: train -> sample through the real CLI, bad input, text streams, truncated BPTT, generate.

Text is generated (seeded pseudo-English) into temporary folders; nothing reads ../shared.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, TINY, Terminal, _isolate, assert_one_line_error, run_dirs, screen

from rnnctl import inference, training
from rnnctl.live import one_line
from rnnctl.config import load_config
from rnnctl.errors import ConfigError
from rnnctl.models import CharLM
from rnnctl.tasks import get_task
from rnnctl.tasks.charlm import CharLMModel, StreamSplit
from rnnctl.tasks.tokens import LMMeter

CHARLM_TINY = CONFIGS / "smoke" / "charlm_tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"

WORDS = [
    "the",
    "a",
    "cab",
    "bad",
    "abba",
    "was",
    "and",
    "bob",
    "ran",
    "to",
    "back",
    "at",
    "dawn",
    "baby",
    "crab",
    "sat",
    "by",
    "bay",
    "old",
    "sea",
]


def gen_text(n_chars: int, seed: int = 0) -> str:
    """Seeded pseudo-English: lines of 3-8 words, some ending with a full stop. Lowercase only."""
    rnd = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 8))) + rnd.choice(["", "."])
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- one trained charlm run, shared read-only ----------------------------------------------------


@dataclass
class CharRun:
    dir: Path
    text: str
    text_path: Path
    stdout: str

    @property
    def vocab(self) -> set[str]:
        return set(self.text)


@pytest.fixture(scope="session")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> CharRun:
    """`rnnctl train configs/smoke/charlm_tiny.yaml` on 4 KB of generated text, once per session.
    Do not modify it: copy it first."""
    from typer.testing import CliRunner

    from rnnctl.cli import app

    base = tmp_path_factory.mktemp("charlm-run")
    text = gen_text(4000, seed=0)
    path = write_text(base / "data" / "text.txt", text)
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, base)
        mp.chdir(base)
        args = ["train", str(CHARLM_TINY), "--set", f"data.path={path}"]
        mp.setattr(sys, "argv", ["rnnctl", *args])
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(base / "runs")
    return CharRun(run, text, path, result.stdout)


def copy_char_run(char_run: CharRun, root: Path, name: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(char_run.dir, root / (name or char_run.dir.name)))


# -- 1. smoke through the real CLI ---------------------------------------------------------------


def test_train_writes_a_language_model_run(char_run):
    d = char_run.dir
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for split in ("train", "val"):
            loss = r[f"{split}_loss"]
            assert loss > 0
            assert r[f"{split}_bpc"] == pytest.approx(loss / math.log(2), rel=1e-9)
            assert r[f"{split}_ppl"] == pytest.approx(math.exp(loss), rel=1e-9)
    vocab_size = len(char_run.vocab)
    assert rows[-1]["val_loss"] < math.log(vocab_size) - 0.5  # it learned something: well below uniform

    assert (d / "checkpoints" / "best.pt").is_file() and (d / "checkpoints" / "last.pt").is_file()
    assert (d / "plots" / "loss.png").read_bytes()[:8] == PNG

    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "completed" and info["task"] == "charlm"
    assert "test" not in info  # a language model has no test split
    assert info["best"]["metric"] == "val_loss" and info["epochs_done"] == 2
    assert not (d / "eval").exists()

    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["task"] == "charlm" and cfg["data"]["bptt"] == 16
    assert cfg["derived"]["vocab_size"] == vocab_size
    chars = cfg["derived"]["characters"]
    assert chars["train"] + chars["val"] == len(char_run.text)
    assert "completed" in char_run.stdout and "2/2 epochs" in char_run.stdout


def test_sample_prints_the_prompt_then_length_characters(cli, char_run):
    result = cli("sample", char_run.dir, "--prompt", "ab", "--length", "50", "--rng-seed", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("ab")
    assert len(out) == 2 + 50 + 1 and out.endswith("\n")
    generated = out[2:-1]
    assert set(generated) <= char_run.vocab, set(generated) - char_run.vocab


def test_seed_is_another_name_of_prompt(cli, char_run):
    """`rnnctl sample --seed h` is how users write the text to start from: the same as --prompt, without a note."""
    new = cli("sample", char_run.dir, "--prompt", "ab", "--length", "30", "--rng-seed", "2")
    old = cli("sample", char_run.dir, "--seed", "ab", "--length", "30", "--rng-seed", "2")
    assert old.exit_code == new.exit_code == 0 and old.stdout == new.stdout and old.stdout.startswith("ab")
    (used,) = old.stderr.splitlines()  # which run: nothing else on stderr
    assert used.startswith(f"using run {char_run.dir.name}, checkpoint best.pt (epoch ") and old.stderr == new.stderr


# -- 2. sampling: determinism, --num, the default run --------------------------------------------


def test_sample_same_rng_seed_same_text_other_seed_differs(cli, char_run):
    def sample(seed: int) -> str:
        result = cli("sample", char_run.dir, "--prompt", "the ", "--length", "200", "--rng-seed", seed)
        assert result.exit_code == 0, result.output
        return result.stdout

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c
    assert len(a) == len(c) == 4 + 200 + 1


def test_sample_num_prints_headed_samples(cli, char_run):
    result = cli("sample", char_run.dir, "--prompt", "a", "--length", "30", "--num", "3", "--rng-seed", "0")
    assert result.exit_code == 0, result.output
    headers = re.findall(r"^--- sample (\d)/(\d) ---$", result.stdout, flags=re.M)
    assert headers == [("1", "3"), ("2", "3"), ("3", "3")]
    parts = re.split(r"^--- sample \d/3 ---\n", result.stdout, flags=re.M)
    assert parts[0] == ""
    samples = parts[1:]
    assert len(samples) == 3
    for i, s in enumerate(samples):
        body = s[:-1] if i == 2 else s[:-2]  # samples are separated by a blank line
        assert body.startswith("a") and len(body) == 1 + 30, repr(s)
        assert set(body) <= char_run.vocab
    # one generator runs through all three: the samples are not copies of each other
    assert len(set(samples[:2] + [samples[2] + "\n"])) == 3


@pytest.mark.slow
def test_sample_default_is_newest_completed_language_model(cli, char_run, names_files, isolated):
    old = copy_char_run(char_run, isolated, "20000101-000000-charlm-old")
    good = copy_char_run(char_run, isolated, "20000101-000001-charlm-good")
    bad = copy_char_run(char_run, isolated, "20000101-000002-charlm-interrupted")
    # runs the default must skip break if picked: no checkpoints
    shutil.rmtree(old / "checkpoints")
    shutil.rmtree(bad / "checkpoints")
    info = json.loads((bad / "run.json").read_text())
    (bad / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    trained = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=1", "-q")  # the newest run
    assert trained.exit_code == 0, trained.output
    newest = run_dirs(isolated)[-1]
    assert "names" in newest.name and json.loads((newest / "run.json").read_text())["status"] == "completed"

    assert inference.latest_language_model_run() == str(good)
    default = cli("sample", "--prompt", "ab", "--length", "40", "--rng-seed", "3")
    explicit = cli("sample", good.name, "--prompt", "ab", "--length", "40", "--rng-seed", "3")
    assert default.exit_code == 0, default.output
    assert default.stdout == explicit.stdout and len(default.stdout) == 43


# -- 3. bad input: one line `error: ...`, exit code 1 --------------------------------------------


def test_sample_prompt_outside_vocabulary(cli, char_run):
    line = assert_one_line_error(
        cli("sample", char_run.dir, "--prompt", "aZ~b"), "--prompt", "vocabulary", "'Z'", "'~'"
    )
    assert "'a'" not in line and "'b'" not in line


@pytest.mark.parametrize("temperature, needle", [
    ("0", "> 0"), ("-1", "> 0"), ("1e-300", "at least 1e-06"),  # 1e-300: inf logits crashed torch.multinomial
    ("nan", "expected a finite number, got 'nan'"), ("inf", "got 'inf'"), ("-Infinity", "got '-Infinity'"),
])  # fmt: skip
def test_sample_temperature_must_be_a_positive_finite_number(cli, char_run, temperature, needle):
    assert_one_line_error(cli("sample", char_run.dir, "--temperature", temperature), "--temperature", needle)


def test_the_smallest_temperature_samples_greedily(cli, char_run):
    texts = {cli("sample", char_run.dir, "--prompt", "a", "--length", "30", "--temperature", "1e-6", "--rng-seed", s).stdout
             for s in ("1", "2", "3")}  # fmt: skip
    assert len(texts) == 1  # the argmax every step, whatever the seed


@pytest.mark.parametrize("seed, needle", [("-1", "greater than or equal to 0"), (str(2**64), "less than or equal")])
def test_sample_rng_seed_out_of_range(cli, char_run, seed, needle):  # 2**64 was a ValueError from torch
    assert_one_line_error(cli("sample", char_run.dir, "--rng-seed", seed), "--rng-seed", needle)


def test_sample_on_names_run(cli, trained_run):
    assert_one_line_error(cli("sample", trained_run.dir), "not a language model")


def test_predict_on_charlm_run_points_to_sample(cli, char_run):
    assert_one_line_error(cli("predict", char_run.dir, "abc"), "rnnctl sample")


def test_sample_without_runs(cli, isolated):
    assert_one_line_error(cli("sample"), "no completed language-model run")


def test_sample_skips_incomplete_runs(cli, char_run, isolated):
    run = copy_char_run(char_run, isolated)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    assert_one_line_error(cli("sample"), "no completed language-model run")


PREVIEW_PIECE = r"(?:\\[nt\\]|[^\\\n])"  # one character as a preview shows it: an escape or a plain character


@pytest.mark.slow
def test_the_preview_is_one_readable_line_in_a_pipe_and_on_a_terminal(cli, tmp_path, isolated):
    """The sample shown each epoch: in a pipe and on an 80-column terminal the same way, newlines, tabs and
    backslashes as escapes on one line, no repr quotes; on the terminal cut to its width between escapes."""
    text = tmp_path / "text.txt"
    text.write_text("ab\\c\td\n" * 600)  # every character the preview escapes, over and over
    args = ["train", CHARLM_TINY, "--set", f"data.path={text}", "--set", "train.epochs=1"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "\n" in row["preview"] and "\\" in row["preview"]  # what there is to show
    (shown,) = [line for line in result.stdout.splitlines() if line.startswith("  preview: ")]
    assert shown == f"  preview: {one_line(row['preview'])}" and "'" not in shown and '"' not in shown
    assert re.fullmatch(f"{PREVIEW_PIECE}+", shown.removeprefix("  preview: ")), shown

    term = Terminal(args, 80)
    code, raw = term.finish(120)
    lines = screen(raw, 80)
    assert code == 0, "\n".join(lines)
    (run,) = [r for r in run_dirs(isolated) if r.name != run.name]
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith("preview (epoch 1): "))
    body = lines[at].removeprefix("preview (epoch 1): ")
    assert re.fullmatch(f"{PREVIEW_PIECE}+…", body) and len(lines[at]) <= 80 - 2, "\n".join(lines)  # cut, whole
    assert one_line(row["preview"]).startswith(body.removesuffix("…"))


def test_train_bidirectional_charlm_is_refused(cli, tmp_path, isolated):
    text = write_text(tmp_path / "t.txt", gen_text(500))
    result = cli("train", CHARLM_TINY, "--set", f"data.path={text}", "--set", "model.bidirectional=true")
    assert_one_line_error(result, "model.bidirectional")
    assert run_dirs(isolated) == []


def test_train_on_empty_text_is_refused(cli, tmp_path, isolated):
    empty = write_text(tmp_path / "empty.txt", "")
    result = cli("train", CHARLM_TINY, "--set", f"data.path={empty}")
    assert_one_line_error(result, str(empty), "no text")
    assert run_dirs(isolated) == []


def test_max_chars_reads_the_beginning_of_the_text(tmp_path):
    text = gen_text(3000, seed=5)
    path = write_text(tmp_path / "t.txt", text)
    task = get_task("charlm")
    cut = task.prepare(load_config(CHARLM_TINY, [f"data.path={path}", "data.max_chars=1000"]))
    assert cut.derived["characters"] == {"train": 900, "val": 100}
    assert cut.meta["vocab"] == sorted(set(text[:1000]))
    whole = task.prepare(load_config(CHARLM_TINY, [f"data.path={path}"]))  # the shipped 10,000 > 3,000: all of it
    assert sum(whole.derived["characters"].values()) == len(text) > 1000
    with pytest.raises(ConfigError, match=r"data\.max_chars: Input should be greater than or equal to 2"):
        load_config(CHARLM_TINY, ["data.max_chars=1"])


def test_eval_charlm_run_on_val(cli, char_run, isolated):
    run = copy_char_run(char_run, isolated)
    result = cli("eval", run.name, "--split", "val")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "val-best.json").read_text())
    best = json.loads((run / "run.json").read_text())["best"]
    assert report["loss"] == pytest.approx(best["value"], abs=1e-5)
    assert "bpc" in result.stdout or "loss" in result.stdout


# -- 4. StreamSplit: B parallel streams, chunk by chunk ------------------------------------------


def test_streams_tile_the_text_in_order():
    ids = torch.arange(1000, 1203)  # 203 "characters": each id names its position
    bptt, B = 16, 4
    n = (len(ids) - 1) // B  # 50 characters per stream
    batches = list(StreamSplit(ids, bptt).batches(B))
    assert len(batches) == math.ceil(n / bptt)
    assert sum(b.x.size(1) for b in batches) == n
    for k, batch in enumerate(batches):
        width = batch.x.size(1)
        assert batch.x.shape == batch.targets.shape == (B, width)
        assert batch.size == B * width
        for b in range(B):
            start = b * n + k * bptt
            assert torch.equal(batch.x[b], ids[start : start + width])
            assert torch.equal(batch.targets[b], ids[start + 1 : start + 1 + width])
    # again: evaluation order never changes
    again = list(StreamSplit(ids, bptt).batches(B))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.targets, b.targets) for a, b in zip(batches, again))


def test_stream_targets_are_the_next_characters_of_the_text(tmp_path):
    text = gen_text(1500, seed=3)
    cfg = load_config(CHARLM_TINY, [f"data.path={write_text(tmp_path / 't.txt', text)}"])
    task = get_task("charlm")
    prepared = task.prepare(cfg)
    vocab = prepared.meta["vocab"]
    assert vocab == sorted(set(text))
    raw = text
    n_train = prepared.derived["characters"]["train"]
    train = prepared.splits["train"]
    assert len(train) == n_train - 1
    B = cfg.train.batch_size
    n = (n_train - 1) // B
    for k, batch in enumerate(train.batches(B)):
        assert batch.x.size(0) == B
        assert torch.equal(batch.x[:, 1:], batch.targets[:, :-1])  # each target is the next input
        for b in range(B):
            start = b * n + k * cfg.data.bptt
            width = batch.x.size(1)
            assert "".join(vocab[i] for i in batch.x[b]) == raw[start : start + width]
            assert "".join(vocab[i] for i in batch.targets[b]) == raw[start + 1 : start + 1 + width]
    # validation is the end of the text, never seen in training
    val = prepared.splits["val"]
    first = next(val.batches(1))
    assert "".join(vocab[i] for i in first.x[0]) == raw[n_train : n_train + first.x.size(1)]


def test_shuffled_pass_starts_at_a_random_offset_below_bptt():
    ids = torch.arange(2000)
    bptt, B = 16, 4
    split = StreamSplit(ids, bptt)
    g = torch.Generator().manual_seed(0)
    offsets = []
    for _ in range(30):
        batches = list(split.batches(B, g))
        offset = int(batches[0].x[0, 0])
        offsets.append(offset)
        assert 0 <= offset < bptt
        assert all(b.x.size(0) == B for b in batches)
        n = (len(ids) - offset - 1) // B
        assert int(batches[0].x[1, 0]) == offset + n  # streams stay contiguous from the offset
        assert torch.equal(batches[0].targets, batches[0].x + 1)
    assert len(set(offsets)) > 3  # chunk boundaries move from call to call


def test_shuffled_pass_over_a_text_shorter_than_bptt_still_trains():
    split = StreamSplit(torch.arange(20), bptt=100)
    g = torch.Generator().manual_seed(0)
    assert all(len(list(split.batches(4, g))) >= 1 for _ in range(20))


# -- 5. truncated BPTT: the carried state is detached --------------------------------------------


def record_forward(model: torch.nn.Module, calls: list[dict]) -> None:
    """Wrap the model's forward: record the state each call receives and the state it returns."""
    forward = model.forward

    def wrapped(*args, state=None, **kwargs):
        out = forward(*args, state=state, **kwargs)
        calls.append({"state_in": state, "state_out": out.state, "graph_in": graph_size(state)})
        return out

    model.forward = wrapped


def graph_size(state) -> int:
    """Autograd nodes reachable from a state (tensor or tuple of tensors); 0 when detached."""
    tensors = [] if state is None else [state] if isinstance(state, torch.Tensor) else list(state)
    seen: set = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return len(seen)


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def run_epoch(model: CharLM, ids: torch.Tensor, bptt: int, batch_size: int, progress=None) -> dict:
    torch.manual_seed(0)
    return training.train_epoch(
        model, StreamSplit(ids, bptt), LMMeter(), torch.optim.Adam(model.parameters(), lr=0.01),
        torch.device("cpu"), batch_size, torch.Generator().manual_seed(0), grad_clip=1.0, on_batch=progress,
    )  # fmt: skip


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_train_epoch_carries_a_detached_state(cell):
    torch.manual_seed(0)
    model = CharLM(CharLMModel(cell=cell, embedding_size=8, hidden_size=12, layers=2), 11)
    calls: list[dict] = []
    record_forward(model, calls)
    ids = torch.randint(11, (600,), generator=torch.Generator().manual_seed(1))
    result = run_epoch(model, ids, bptt=10, batch_size=4)
    assert result["steps"] == len(calls) >= 10
    assert calls[0]["state_in"] is None  # each epoch starts from zeros
    for prev, call in zip(calls, calls[1:]):
        state = as_tuple(call["state_in"])
        assert len(state) == (2 if cell == "lstm" else 1)
        for s, before in zip(state, as_tuple(prev["state_out"])):
            assert s.grad_fn is None and not s.requires_grad
            assert before.grad_fn is not None  # what the model returned did have a history...
            assert torch.equal(s, before)  # ...and the same values were carried, not reset
            assert s.shape == (2, 4, 12)


def test_detach_tuple_tensor_and_none():
    w = torch.ones(3, requires_grad=True)
    h, c = w * 2, w * 3
    out = training.detach((h, c))
    assert type(out) is tuple and len(out) == 2
    for a, b in zip(out, (h, c)):
        assert isinstance(a, torch.Tensor) and a.grad_fn is None and not a.requires_grad
        assert torch.equal(a, b)
    single = training.detach(h)
    assert single.grad_fn is None and torch.equal(single, h)
    assert training.detach(None) is None
    assert h.grad_fn is not None  # the originals keep their history


# -- 6. memory stays flat over a long text -------------------------------------------------------


def test_state_history_does_not_grow_over_many_chunks():
    torch.manual_seed(0)
    model = CharLM(CharLMModel(cell="lstm", embedding_size=4, hidden_size=8), 9)
    calls: list[dict] = []
    record_forward(model, calls)
    bptt, B = 4, 2
    ids = torch.randint(9, (200 * bptt * B + bptt + 1,), generator=torch.Generator().manual_seed(2))
    run_epoch(model, ids, bptt=bptt, batch_size=B)
    assert len(calls) >= 200
    sizes = [c["graph_in"] for c in calls]
    assert sizes == [0] * len(sizes)  # nothing of the previous chunks' graphs reaches the next forward
    # the counter does see a history where there is one: each returned state has a graph of fixed size
    out_sizes = {graph_size(c["state_out"]) for c in calls[1:]}
    assert len(out_sizes) == 1 and out_sizes.pop() > 0


def test_train_epoch_progress_total_is_the_number_of_batches():
    model = CharLM(CharLMModel(cell="gru", embedding_size=4, hidden_size=8), 9)
    seen: list[tuple[int, int]] = []
    ids = torch.randint(9, (400,), generator=torch.Generator().manual_seed(2))
    run_epoch(model, ids, bptt=10, batch_size=4, progress=lambda done, total: seen.append((done, total)))
    done, total = seen[-1]
    assert done == total


# -- 7. CharLM.generate --------------------------------------------------------------------------


@pytest.fixture
def sampled_probs(monkeypatch):
    """The probability vectors that torch.multinomial is asked to sample from, in order."""
    probs: list[torch.Tensor] = []
    multinomial = torch.multinomial

    def recording(p, *args, **kwargs):
        probs.append(p.detach().clone())
        return multinomial(p, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording)
    return probs


def stepwise_logits(model: CharLM, ids: list[int], state=None):
    """Feed ids one at a time, carrying the state; the last step's logits (V,) and the state."""
    with torch.no_grad():
        for i in ids:
            out = model(torch.tensor([[i]]), state=state)
            state = out.state
    return out.logits[0, -1], state


def tiny_lm(cell: str) -> CharLM:
    torch.manual_seed(0)
    return CharLM(CharLMModel(cell=cell, embedding_size=6, hidden_size=10, layers=2), 7).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_generate_warms_up_on_the_whole_seed(cell, sampled_probs):
    model = tiny_lm(cell)
    seed = [1, 2, 3]
    g = torch.Generator().manual_seed(0)
    generated = list(model.generate(seed, 3, temperature=1.0, generator=g))
    assert len(generated) == 3 and len(sampled_probs) == 3
    # the first distribution is the one after reading "abc" step by step, state carried
    logits, state = stepwise_logits(model, seed)
    assert torch.allclose(sampled_probs[0], logits.softmax(-1), atol=1e-6)
    # and not the one after the last seed character alone (the warm-up state matters)
    alone, _ = stepwise_logits(model, seed[-1:])
    assert not torch.allclose(sampled_probs[0], alone.softmax(-1), atol=1e-4)
    # later steps continue from that state with the sampled characters
    for step in (1, 2):
        logits, state = stepwise_logits(model, [generated[step - 1]], state)
        assert torch.allclose(sampled_probs[step], logits.softmax(-1), atol=1e-6)


def test_generate_top_k_1_is_greedy():
    model = tiny_lm("gru")
    runs = [list(model.generate([0, 4], 25, top_k=1, generator=torch.Generator().manual_seed(s))) for s in range(3)]
    runs.append(list(model.generate([0, 4], 25, temperature=5.0, top_k=1)))
    assert runs[0] == runs[1] == runs[2] == runs[3]
    expected = []
    logits, state = stepwise_logits(model, [0, 4])
    for _ in range(25):
        idx = int(logits.argmax())
        expected.append(idx)
        logits, state = stepwise_logits(model, [idx], state)
    assert runs[0] == expected


def test_generate_temperature_scales_the_distribution(sampled_probs):
    model = tiny_lm("lstm")
    logits, _ = stepwise_logits(model, [5, 1])
    for t in (1.0, 0.5, 2.0):
        list(model.generate([5, 1], 1, temperature=t, generator=torch.Generator().manual_seed(0)))
    p1, p_cold, p_hot = sampled_probs
    assert torch.allclose(p1, logits.softmax(-1), atol=1e-6)
    assert torch.allclose(p_cold, (logits / 0.5).softmax(-1), atol=1e-6)
    assert torch.allclose(p_hot, (logits / 2.0).softmax(-1), atol=1e-6)

    def entropy(p):
        return float(-(p * p.clamp_min(1e-12).log()).sum())

    assert entropy(p_cold) < entropy(p1) < entropy(p_hot)
    assert int(p_cold.argmax()) == int(p1.argmax()) == int(p_hot.argmax())  # the order is kept


def test_generate_restores_training_mode():
    model = tiny_lm("gru").train()
    assert len(list(model.generate([1], 5))) == 5
    assert model.training
    model.eval()
    list(model.generate([1], 2))
    assert not model.training


def test_eval_without_split_uses_val_for_a_language_model(cli, char_run, isolated):
    run = copy_char_run(char_run, isolated)
    result = cli("eval", run.name)
    assert result.exit_code == 0, result.output
    assert (run / "eval" / "val-best.json").exists()
    assert "bits/char" in result.stdout


@pytest.mark.slow
def test_eval_every_adds_rows_inside_epochs_without_changing_training(cli, char_run, isolated):
    """train.eval_every: partial rows between epoch rows; the epoch rows' numbers are those of a run without it."""
    from rnnctl.loop import TIMING_KEYS
    from rnnctl.runs import load_checkpoint

    result = cli("train", CHARLM_TINY, "--set", f"data.path={char_run.text_path}", "--set", "train.eval_every=10")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    partial = [r for r in rows if r.get("partial")]
    full = [r for r in rows if not r.get("partial")]
    assert [r["epoch"] for r in full] == [1, 2]
    assert partial and all(r["epoch"] - 1 < r["epoch_fraction"] < r["epoch"] for r in partial)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # in training order
    epoch_start = {1: 0, 2: full[0]["step"]}
    assert all((r["step"] - epoch_start[r["epoch"]]) % 10 == 0 for r in partial)  # every 10 steps of each epoch
    assert result.stdout.count("epoch 0.") + result.stdout.count("epoch 1.") == len(partial)  # shown as they come
    reference = [json.loads(line) for line in (char_run.dir / "metrics.jsonl").read_text().splitlines()]
    skip = {*TIMING_KEYS, "best_epoch", "preview"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in full] == [
        {k: v for k, v in r.items() if k not in skip} for r in reference
    ]
    info = json.loads((run / "run.json").read_text())
    best_values = [r["val_loss"] for r in rows]
    assert info["best"]["value"] == min(best_values)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == info["best"]["step"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == full[-1]["step"]  # resumes at an epoch end

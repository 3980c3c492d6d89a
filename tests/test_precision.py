"""The GPU path's switches, as far as a CPU-only machine can check them: train.precision (autocast, fp16's
GradScaler and its checkpointed state), train.tf32, train.deterministic, device names, checkpoints that
load on the CPU, and --device on eval, predict and sample. Nothing here has run on a GPU."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import sys

import pytest
import torch
from conftest import CONFIGS, TINY, CtrlCAtEpoch, assert_one_line_error, metrics, run_dirs, run_info, tiny_config

from rnnctl import callbacks, loop, runs, runtime
from rnnctl.errors import ConfigError
from rnnctl.runs import RunFolder


@pytest.fixture(autouse=True)
def math_flags_restored():
    """A deterministic run sets process-wide flags: put them back for the next test in this process."""
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")


@pytest.mark.slow
def test_bf16_trains_through_the_cli_close_to_fp32(cli, names_files, isolated):
    for precision in ("fp32", "bf16"):
        args = ["--set", f"train.precision={precision}", "--set", f"name={precision}"]
        result = cli("train", TINY, *names_files.set_args(), *args)
        assert result.exit_code == 0, result.output
    fp32, bf16 = (next(d for d in run_dirs(isolated) if d.name.endswith(p)) for p in ("fp32", "bf16"))
    assert run_info(bf16)["precision"] == "bf16" and run_info(fp32)["precision"] == "fp32"
    assert run_info(bf16)["tf32"] is False  # a CPU has no TF32: the record says what ran, not what was allowed
    a, b = RunFolder(fp32).rows(), RunFolder(bf16).rows()
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert math.isfinite(rb["train_loss"]) and math.isfinite(rb["val_loss"])
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=0.05)  # bf16 keeps 8 bits of mantissa
        assert rb["train_loss"] != ra["train_loss"]  # autocast did act: bf16 is not bit-identical to fp32
    assert run_info(bf16)["test"]["loss"] == pytest.approx(run_info(fp32)["test"]["loss"], rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resumed_mixed_precision_run_equals_uncut_run(cli, names_files, isolated, precision):
    """fp16 autocast runs on this torch's CPU, so the GradScaler path (and its saved scale) is checked here too."""
    more = [f"train.precision={precision}", "model.dropout=0.3"]
    loop.train(tiny_config(names_files, *more, "name=ref"), command="ref", loggers=[])
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(names_files, *more, "name=cut"), command="cut", loggers=[CtrlCAtEpoch(2)])
    ref, cut = (next(d for d in run_dirs(isolated) if d.name.endswith(n)) for n in ("-ref", "-cut"))
    ckpt = RunFolder(cut).load_checkpoint("last")
    if precision == "fp16":  # the loss scale reached goes into the checkpoint and comes back on resume
        trainer = loop.Trainer(tiny_config(names_files, *more), [], meta=ckpt["meta"])
        callbacks.restore(trainer, {**ckpt, "scaler": {**ckpt["scaler"], "scale": 1024.0}}, "last.pt")
        assert trainer.precision.scaler.get_scale() == 1024.0
    else:
        assert "scaler" not in ckpt
    result = cli("train", "--resume", str(cut))
    assert result.exit_code == 0, result.output
    assert metrics(cut) == metrics(ref)
    assert RunFolder(cut).steps() == RunFolder(ref).steps()
    assert run_info(cut)["precision"] == precision and run_info(cut)["test"] == run_info(ref)["test"]


def test_a_precision_the_device_lacks_is_a_one_line_error(cli, names_files, isolated, monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.precision=fp16")
    assert_one_line_error(result, "train.precision", "fp16", "cpu")
    assert run_dirs(isolated) == []  # refused before any run folder exists


def test_precision_and_math_keys_are_validated(cli, names_files):
    for bad, key in [
        ("train.precision=fp8", "train.precision"),
        ("train.tf32=maybe", "train.tf32"),
        ("train.deterministic=2", "train.deterministic"),
        ("train.device=cuda:x", "train.device"),
        ("train.device=gpu", "train.device"),
    ]:
        assert_one_line_error(cli("train", TINY, *names_files.set_args(), "--set", bad), key)
    # a well-formed CUDA device this machine lacks
    assert_one_line_error(cli("train", TINY, *names_files.set_args(), "--set", "train.device=cuda:1"), "train.device")


def test_deterministic_cpu_run_repeats_exactly(names_files, isolated):
    for name in ("one", "two"):
        cfg = tiny_config(names_files, "train.deterministic=true", "model.dropout=0.3", f"name={name}")
        loop.train(cfg, command=name, loggers=[])
    one, two = run_dirs(isolated)
    assert metrics(one) == metrics(two)
    assert RunFolder(one).steps() == RunFolder(two).steps()
    assert run_info(one)["deterministic"] is True and run_info(one)["tf32"] is False


def test_each_run_sets_its_own_determinism(names_files):
    """The flags are process-wide: a run without train.deterministic turns them off again."""
    runtime.set_backends(torch.device("cpu"), tf32=True, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert runtime.set_backends(torch.device("cpu"), tf32=True, deterministic=False) == {
        "tf32": False, "deterministic": False,
    }  # fmt: skip
    assert not torch.are_deterministic_algorithms_enabled()


def test_cuda_backend_flags(monkeypatch):
    """What set_backends does on CUDA, with the GPU's capability faked (no GPU here): the flags, not the speed."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    allow = torch.backends.cudnn.allow_tf32
    try:
        cuda = torch.device("cuda")
        assert runtime.set_backends(cuda, tf32=True, deterministic=False) == {"tf32": True, "deterministic": False}
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        assert runtime.set_backends(cuda, tf32=False, deterministic=True) == {"tf32": False, "deterministic": True}
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100: no TF32
        assert runtime.set_backends(cuda, tf32=True, deterministic=False)["tf32"] is False
    finally:
        torch.backends.cudnn.allow_tf32 = allow


def test_make_precision():
    cpu = torch.device("cpu")
    assert runtime.make_precision("fp32", cpu).scaler is None
    assert runtime.make_precision("bf16", cpu).scaler is None
    assert runtime.make_precision("fp16", cpu).scaler is not None  # fp16 gradients are scaled on any device
    with runtime.make_precision("bf16", cpu).autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="train.precision: bf16 is not supported on meta"):
        runtime.make_precision("bf16", torch.device("meta"))


# -- checkpoints on any device, --device on the commands that load a run ------------------------------


def test_checkpoints_load_onto_the_cpu(copy_run, monkeypatch):
    """Every checkpoint load maps tensors to the CPU first: a run saved on a GPU opens on a CPU-only machine."""
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runs.torch, "load", spy)
    ckpt = RunFolder(copy_run).load_checkpoint("best")
    assert seen == ["cpu"]
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    for path in (CONFIGS.parent / "rnnctl").rglob("*.py"):  # and no other load forgets it
        for line in path.read_text().splitlines():
            assert "torch.load(" not in line or 'map_location="cpu"' in line, (path.name, line)


def test_device_option_on_eval_predict_sample(cli, copy_run):
    result = cli("eval", copy_run.name, "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = cli("predict", copy_run.name, "Petrovski", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Petrovski" in result.stdout
    for command in (["eval", copy_run.name], ["predict", copy_run.name, "Petrovski"], ["sample", copy_run.name]):
        assert_one_line_error(cli(*command, "--device", "cuda"), "--device", "cuda")
        assert_one_line_error(cli(*command, "--device", "tpu"), "--device", "tpu")


def test_sample_on_the_cpu(cli, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    tiny = CONFIGS / "smoke" / "charlm_tiny.yaml"
    result = cli("train", tiny, "--set", f"data.path={text}", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    result = cli("sample", "--device", "cpu", "--prompt", "the ", "--length", "10", "--rng-seed", "1")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) >= 10


glibc = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc's malloc"
)


@glibc
def test_malloc_keeps_freed_memory_for_the_next_step(monkeypatch):
    """After keep_freed_memory, a large tensor comes from the heap, not from an mmap of its own (which the next step
    would fault in again page by page); a user's own MALLOC_* setting is left alone."""

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]  # fmt: skip

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    monkeypatch.setattr(runtime, "_KEEPS_FREED", None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert runtime.keep_freed_memory() is False  # the user chose: left as it is
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setattr(runtime, "_KEEPS_FREED", None)
    assert runtime.keep_freed_memory() is True and runtime.keep_freed_memory() is True
    mapped = libc.mallinfo2().hblks
    big = torch.empty(64 * 2**20, dtype=torch.uint8)  # 64 MB: above glibc's largest mmap threshold (32 MB)
    assert libc.mallinfo2().hblks == mapped and libc.mallinfo2().arena >= big.numel()
    del big
    assert libc.mallinfo2().arena >= 64 * 2**20  # kept in the heap for the next allocation


def test_run_json_records_the_allocator_choice(cli, names_files, isolated):
    result = cli("train", TINY, *names_files.set_args(), "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(isolated)
    assert run_info(run)["malloc_keeps_freed"] is runtime.keep_freed_memory()

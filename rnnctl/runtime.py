"""The process a run trains in: the seed, the device, precision and math flags, malloc, the RNG states a
checkpoint keeps, and the stop signals (Ctrl-C, SIGTERM). No model, no data and no run folder here."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from rnnctl.config import DEVICE
from rnnctl.errors import ConfigError, clip, Terminated


def set_seed(seed: int) -> None:
    """The one place where randomness is seeded: python, numpy, torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parse_devices(spec: str | None) -> list[str] | None:
    """`--devices cuda:0,cuda:1`, `auto` (every CUDA GPU) or None; each listed device is one worker's."""
    if spec is None:
        return None
    if spec.strip() == "auto":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError("--devices auto: this machine has no CUDA GPU (use --jobs to run members side by side)")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for d in devices:
        kind, _, index = d.partition(":")
        if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise ConfigError(f"--devices: {d!r} is not a device (expected cpu, cuda, cuda:N or mps, comma-separated)")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--devices: {d} does not exist here ({torch.cuda.device_count()} CUDA GPUs)")
    if not devices:
        raise ConfigError("--devices: give at least one device, e.g. cuda:0,cuda:1, or auto")
    return devices


def pick_device(name: str, what: str = "train.device") -> torch.device:
    """`auto` (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps; one that this machine lacks is a ConfigError
    naming `what` (the config key, or the command's --device)."""
    if not DEVICE.fullmatch(name):
        raise ConfigError(f"{what}: {clip(name)} is not a device (expected auto, cpu, cuda, cuda:N or mps)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}: {name} requested but no CUDA device is available (use auto or cpu)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: {name} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what}: mps requested but this machine has no MPS device (use auto or cpu)")
    return torch.device(name)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """How the forward pass and the loss run: fp32, or autocast to bf16/fp16 on the device. fp16 gradients
    go through a GradScaler (they underflow in fp16 on any device); metrics are computed in fp32."""

    name: str = "fp32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.name])


def make_precision(name: str, device: torch.device) -> Precision:
    """The precision `train.precision` asks for on this device; ConfigError where the device cannot run it."""
    if name == "fp32":
        return Precision(name, device.type)
    supported = torch.amp.is_autocast_available(device.type)
    if supported and device.type == "cuda" and name == "bf16":
        supported = torch.cuda.is_bf16_supported()
    if supported:  # torch warns and disables autocast for a dtype the device does not take
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                with torch.autocast(device.type, dtype=DTYPES[name]):
                    pass
            except (UserWarning, RuntimeError):
                supported = False
    if not supported:
        raise ConfigError(f"train.precision: {name} is not supported on {device} (use fp32 or bf16)")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)


def set_backends(device: torch.device, tf32: bool, deterministic: bool) -> dict[str, bool]:
    """Process-wide math flags for a run, set every time (so one run's choice never leaks into the next in the
    same process); returns what holds, for run.json: `tf32` only where a CUDA GPU has it (compute capability 8+)."""
    cuda = device.type == "cuda"
    if cuda and deterministic:  # PyTorch's reproducibility notes: cuBLAS needs a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cuda and not deterministic  # autotuning picks kernels by timing: not repeatable
    if cuda:
        torch.set_float32_matmul_precision("high" if tf32 else "highest")  # "high": TF32 matmuls
        torch.backends.cudnn.allow_tf32 = tf32  # cuDNN's RNN and conv kernels
    has_tf32 = cuda and torch.cuda.get_device_capability(device)[0] >= 8
    return {"tf32": tf32 and has_tf32, "deterministic": deterministic}


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_KEEPS_FREED: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees for the next step. By default it hands every
    large block back to the kernel (munmap, or a trim of the heap) and the next step faults in fresh zeroed
    pages: on this CPU that was a quarter of an IMDb epoch (benchmarks/RESULTS.md). Blocks then come from the
    heap alone and the heap never shrinks: the process holds its peak memory, as PyTorch's CUDA allocator does.
    Left alone off glibc and where the user chose (MALLOC_* variables, a preloaded allocator such as jemalloc).
    Once per process; returns whether it holds, for run.json."""
    global _KEEPS_FREED
    if _KEEPS_FREED is None:
        _KEEPS_FREED = False
        chosen = os.environ.get("LD_PRELOAD") or any(k.startswith("MALLOC_") for k in os.environ)
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" and not chosen:
            try:
                libc = ctypes.CDLL(None)  # the process's own C library
                ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
            except (OSError, AttributeError):
                ok = False
            _KEEPS_FREED = ok
    return _KEEPS_FREED


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs to continue exactly: python, numpy, torch, CUDA, data order."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Put back what `rng_states` took."""
    random.setstate(rng["python"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy(), *rng["numpy"][2:]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    generator.set_state(rng["data"])


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def stop_signals():
    """While training: SIGTERM (SLURM, Kubernetes, `timeout`) stops the run like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupt():
    """Hold a SIGINT or SIGTERM that arrives inside the block until the block is done, then raise it; inside
    an enclosing holder (a nested block, a group worker between members) hand it to that holder instead, so
    that the outer block too ends whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum, frame):
        caught.append(signum)

    hold.holds = True
    previous = {s: signal.signal(s, hold) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        outer = previous[caught[0]]
        if getattr(outer, "holds", False):
            outer(caught[0], None)
        else:
            raise _stop_exception(caught[0])


class StepEndSignals:
    """While an epoch trains with step checkpoints: the first SIGINT or SIGTERM is noted (`caught`) and acted on
    at the end of its step (a step checkpoint, then `stop`), so nothing is saved from a half-done step; a second
    one stops at once. A signal the process ignores stays ignored; a `deferred_interrupt` block inside hands
    its signal here."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StepEndSignals:
        self.caught = None
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS if callable(signal.getsignal(s))}
            for s in self.previous:
                signal.signal(s, self._note)
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
        if self.caught is not None and not (kind and issubclass(kind, KeyboardInterrupt)):
            self.stop(self.caught)  # not acted on inside (or the block ended another way): stop now

    def _note(self, signum: int, frame: Any) -> None:
        if self.caught is not None:
            self.stop(signum)
        self.caught = signum

    _note.holds = True  # type: ignore[attr-defined]

    def stop(self, signum: int) -> None:
        """Stop as the handler this one stands in for would (a group worker notes which signal), else raise."""
        handler = self.previous.get(signum) or signal.getsignal(signum)
        if callable(handler) and not getattr(handler, "holds", False):
            handler(signum, None)
        raise _stop_exception(signum)


class Signals:
    """A process that must stop cleanly between pieces of work (a sweep's or search's worker): SIGINT and
    SIGTERM are held (noted) outside `training()` and raised at once inside it."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self.main = threading.current_thread() is threading.main_thread()

    def _set(self, raising: bool) -> None:
        def handler(signum, frame):
            self.caught = self.caught or signum
            if raising:
                raise _stop_exception(signum)

        handler.holds = not raising  # a deferred_interrupt block inside hands its signal to this one
        if self.main:
            for s in STOP_SIGNALS:
                signal.signal(s, handler)

    def __enter__(self) -> Signals:
        self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if self.main else {}
        self._set(raising=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self) -> None:
        if self.caught:
            raise _stop_exception(self.caught)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self.check()
        self._set(raising=True)
        try:
            yield
        finally:
            self._set(raising=False)

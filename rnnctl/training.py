"""What the training loop is made of: seeding, the device, the optimizer, one training pass, one
evaluation pass, RNG states. No run folder and no task names here; loop.py puts the pieces together.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rnnctl import __version__, distributed
from rnnctl.config import DEVICE, OptimConfig
from rnnctl.errors import ConfigError, clip, DivergedError, Terminated
from rnnctl.tasks.base import Meter, Split


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


def fp32(out):
    """A model's output with its logits and loss in fp32: what the meters and the loss sums read."""
    loss = out.loss.float() if out.loss is not None else None
    return out._replace(logits=out.logits.float(), loss=loss)


def parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The model's parameters as optimizer groups, each {"params", "lr_scale"}: its learning rate is lr_scale
    times the schedule's. A model whose parts learn at different rates says so with `optimizer_groups()`."""
    if hasattr(model, "optimizer_groups"):
        return model.optimizer_groups()
    return [{"params": list(model.parameters()), "lr_scale": 1.0}]


def make_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    groups = [{**g, "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in groups]
    fused = {"fused": True} if cfg.fused else {}  # None (the default) lets PyTorch pick foreach
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def train_epoch(
    model: torch.nn.Module,
    split: Split,
    meter: Meter,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    grad_clip: float | None,
    grad_clip_value: float | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    precision: Precision | None = None,
) -> dict[str, Any]:
    """One pass over the training split: the meter's metrics, per-step losses and gradient norms, steps, samples.

    Under torchrun every rank draws the same global batches (`batch_size` is the global batch) and trains on
    its shard; the loss is weighted so that DDP's averaged gradient is the global batch's, and the step
    losses and metrics are summed over ranks: the same optimisation on 1 or N processes.
    """
    world = distributed.world()
    precision = precision or Precision(device_type=device.type)
    scaler = precision.scaler
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total = split.num_batches(batch_size)
    norms, losses = [], []  # one 0-d tensor per step, read back once at the end (no per-step sync)
    state = None
    steps = samples = 0
    for steps, batch in enumerate(split.batches(batch_size, generator), 1):
        part, weight, has_data = distributed.shard(batch, world)
        part = part.to(device)
        with precision.autocast():
            out = model(**part.inputs, targets=part.targets, state=state)
        out = fp32(out)
        state = detach(out.state)  # truncated BPTT: carry the state, not its history
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss * weight if world.distributed else out.loss
        if scaler is not None:  # fp16: scale the loss up so small gradients survive, then unscale before clipping
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if grad_clip is not None:  # clipping by norm needs the total now; it is the norm before clipping
            norm = torch.nn.utils.get_total_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
            norms.append(norm.detach().view(1))
        else:  # only logged: each gradient's norm now, their total once at the end of the epoch
            norms.append(torch.stack(gradient_norms(grads)))
        if grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, grad_clip_value)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then backs off
            scaler.update()
        else:
            optimizer.step()
        if has_data:
            meter.update(part, out)
        samples += batch.size
        losses.append(out.loss.detach() * (weight / world.size) if world.distributed else out.loss.detach())
        if on_batch is not None:
            on_batch(steps, total)
    if losses:  # read once: no per-step sync; summed over ranks, each step's loss is its global batch's
        (stacked,) = distributed.all_reduce_sum([torch.stack(losses).double()])
        step_losses = stacked.cpu().tolist()
    else:
        step_losses = []
    bad = next((i for i, loss in enumerate(step_losses, 1) if not math.isfinite(loss)), None)
    if bad is not None:  # the weights after that step are spoiled: the caller keeps the last good checkpoint
        raise DivergedError(f"step {bad} of the epoch: the training loss is {step_losses[bad - 1]}", bad)
    return {
        "metrics": distributed.reduce_meter(meter).compute(),
        "grad_norms": step_totals(norms),  # per step, before clipping
        "losses": step_losses,
        "steps": steps,
        "samples": samples,
    }


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), updated after every optimizer
    step: avg <- d * avg + (1 - d) * w, with d = min(decay, (1 + n) / (10 + n)) at the n-th update, so the
    first steps do not tie the average to the initial weights. Buffers are copied as they are."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model)  # same device and dtype; never trained, so always in eval mode
        self.model.eval()
        self.model.requires_grad_(False)
        for module in self.model.modules():  # cuDNN wants each RNN's weights in one block (a copy is not)
            if isinstance(module, torch.nn.RNNBase):
                module.flatten_parameters()
        self.decay, self.updates = decay, 0
        self.live, self.avg = list(model.parameters()), list(self.model.parameters())  # the same order
        self.live_buffers, self.avg_buffers = list(model.buffers()), list(self.model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.avg, self.live, 1.0 - d)
        for avg, live in zip(self.avg_buffers, self.live_buffers):
            avg.copy_(live)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])


def gradient_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The L2 norm of each gradient, in one fused call where torch has it (the total is their norm)."""
    foreach = getattr(torch, "_foreach_norm", None)
    return list(foreach(grads)) if foreach is not None else [torch.linalg.vector_norm(g) for g in grads]


def step_totals(norms: list[torch.Tensor]) -> list[float]:
    """Each step's total gradient norm from its per-gradient norms, read back in one transfer."""
    if not norms:
        return []
    if all(n.shape == norms[0].shape for n in norms):
        return torch.linalg.vector_norm(torch.stack(norms).double(), dim=1).cpu().tolist()
    return [float(torch.linalg.vector_norm(n.double())) for n in norms]  # a parameter without gradient at times


def detach(state):
    """Cut a recurrent state (tensor, tuple of tensors, or None) from the graph that made it."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: Split,
    meter: Meter,
    device: torch.device,
    batch_size: int,
    sharded: bool = False,
    precision: Precision | None = None,
) -> Meter:
    """One pass in stored order. `sharded`: each rank takes its part of every batch and the meter's sums are
    added up over ranks, so every example counts exactly once."""
    world = distributed.world() if sharded else distributed.World()
    precision = precision or Precision(device_type=device.type)
    model.eval()
    state = None
    for batch in split.batches(batch_size):
        part, _, has_data = distributed.shard(batch, world)
        if not has_data:
            continue
        part = part.to(device)
        with precision.autocast():
            out = model(**part.inputs, targets=part.targets, state=state)
        out = fp32(out)
        state = out.state
        meter.update(part, out)
    return distributed.reduce_meter(meter) if sharded else meter


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
                raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

        handler.holds = not raising  # a deferred_interrupt block inside hands its signal to this one
        if self.main:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, handler)

    def __enter__(self) -> Signals:
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if self.main else {}
        self._set(raising=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self) -> None:
        if self.caught:
            raise Terminated() if self.caught == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self.check()
        self._set(raising=True)
        try:
            yield
        finally:
            self._set(raising=False)


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
    random.setstate(rng["python"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy(), *rng["numpy"][2:]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    generator.set_state(rng["data"])


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "rnnctl": __version__}


def git_commit() -> str | None:
    """The commit of rnnctl's own source, when it runs from a git checkout (an editable install)."""
    src = Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not top or Path(top).resolve() != src:
            return None  # an installed copy inside someone else's repository: that commit is not rnnctl's
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("-dirty" if dirty else "") if out else None

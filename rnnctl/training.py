"""What the training loop is made of: seeding, the device, the optimizer, one training pass, one
evaluation pass, RNG states. No run folder and no task names here; loop.py puts the pieces together.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rnnctl import __version__, distributed
from rnnctl.config import OptimConfig
from rnnctl.errors import ConfigError, DivergedError, Terminated
from rnnctl.tasks.base import Meter, Split


def set_seed(seed: int) -> None:
    """The one place where randomness is seeded: python, numpy, torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps requested but this machine has no MPS device (use auto or cpu)")
    return torch.device(name)


def make_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
) -> dict[str, Any]:
    """One pass over the training split: the meter's metrics, per-step losses and gradient norms, steps, samples.

    Under torchrun every rank draws the same global batches (`batch_size` is the global batch) and trains on
    its shard; the loss is weighted so that DDP's averaged gradient is the global batch's, and the step
    losses and metrics are summed over ranks: the same optimisation on 1 or N processes.
    """
    world = distributed.world()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total = split.num_batches(batch_size)
    norms, losses = [], []  # one 0-d tensor per step, read back once at the end (no per-step sync)
    state = None
    steps = samples = 0
    for steps, batch in enumerate(split.batches(batch_size, generator), 1):
        part, weight, has_data = distributed.shard(batch, world)
        part = part.to(device)
        out = model(**part.inputs, targets=part.targets, state=state)
        state = detach(out.state)  # truncated BPTT: carry the state, not its history
        optimizer.zero_grad(set_to_none=True)
        (out.loss * weight if world.distributed else out.loss).backward()
        grads = [p.grad for p in params if p.grad is not None]
        if grad_clip is not None:  # clipping by norm needs the total now; it is the norm before clipping
            norm = torch.nn.utils.get_total_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
            norms.append(norm.detach().view(1))
        else:  # only logged: each gradient's norm now, their total once at the end of the epoch
            norms.append(torch.stack(gradient_norms(grads)))
        if grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, grad_clip_value)
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
    model: torch.nn.Module, split: Split, meter: Meter, device: torch.device, batch_size: int, sharded: bool = False
) -> Meter:
    """One pass in stored order. `sharded`: each rank takes its part of every batch and the meter's sums are
    added up over ranks, so every example counts exactly once."""
    world = distributed.world() if sharded else distributed.World()
    model.eval()
    state = None
    for batch in split.batches(batch_size):
        part, _, has_data = distributed.shard(batch, world)
        if not has_data:
            continue
        part = part.to(device)
        out = model(**part.inputs, targets=part.targets, state=state)
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
    """Hold a SIGINT or SIGTERM that arrives inside the block until the block is done, then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise _stop_exception(caught[0])


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

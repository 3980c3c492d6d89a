"""What the loop runs: the model placed on its device (DDP under torchrun), the optimizer, one training pass,
one evaluation pass, the weight average (train.ema). No run folder and no task names here; loop.py puts the
pieces together."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from rnnctl import distributed
from rnnctl.config import OptimConfig
from rnnctl.errors import ConfigError, DivergedError
from rnnctl.models import Model
from rnnctl.runtime import Precision
from rnnctl.tasks.base import Batch, Meter, Split, meter_state, set_meter_state


def placed(model: torch.nn.Module, device: torch.device, world: distributed.World) -> torch.nn.Module:
    """Move `model` to `device` (in place) and return what training calls: the model, or under torchrun DDP
    around it, held until the rank exits (see distributed.hold). A task's own model must be an rnnctl Model."""
    if not isinstance(model, Model):
        raise ConfigError(f"the task's build_model gave a {type(model).__name__}: subclass rnnctl.models.Model")
    flatten_rnns(model.to(device))
    if not world.distributed:
        return model
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    distributed.hold(ddp)
    return ddp


def flatten_rnns(model: torch.nn.Module) -> None:
    """cuDNN wants each RNN's weights in one block: after a move to another device, and in a copy."""
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            module.flatten_parameters()


def fp32(out):
    """A model's output with its logits and loss in fp32: what the meters and the loss sums read."""
    loss = out.loss.float() if out.loss is not None else None
    return out._replace(logits=out.logits.float(), loss=loss)


def make_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """`optim`'s optimizer over a model's `optimizer_groups()`: each group's rate is lr_scale times `optim.lr`."""
    groups = [{**g, "lr": cfg.lr * g["lr_scale"]} for g in groups]
    fused = {"fused": True} if cfg.fused else {}  # None (the default) lets PyTorch pick foreach
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


@dataclass
class EpochProgress:
    """How far one training pass has come, updated after every step: what a step checkpoint keeps
    (`state_dict`) so that a pass resumed inside its epoch (`load`) ends exactly as an uncut one."""

    meter: Meter  # the pass's running training metrics
    order: torch.Tensor | None = None  # the data generator's state as the epoch began: its batches, in order
    steps: int = 0  # batches done, one optimizer step each
    total: int = 0  # batches in the epoch
    samples: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)  # a 0-d loss per step, read back at the end
    norms: list[torch.Tensor] = field(default_factory=list)  # per step: its gradients' norms (or their total)
    state: Any = None  # the recurrent state the next batch starts from (truncated BPTT)
    t0: float = field(default_factory=time.perf_counter)  # when the epoch began, for its time and speed

    def batches(self, split: Split, batch_size: int, generator: torch.Generator | None) -> Iterator[Batch]:
        """The epoch's batches from where the pass stands: a resumed pass draws the epoch's order again from the
        generator's state at its start and skips the batches done; the generator then goes on as it was."""
        if generator is not None and self.order is None:
            self.order = generator.get_state()
        now = generator.get_state() if generator is not None and self.steps else None
        if now is not None:
            generator.set_state(self.order)
        batches = iter(split.batches(batch_size, generator))
        for _ in range(self.steps):
            next(batches)
        if now is not None:
            generator.set_state(now)
        return batches

    def state_dict(self) -> dict[str, Any]:
        """On the CPU; the per-step lists as one tensor each (torch.save is slow over thousands of tensors)."""
        return {
            "order": self.order, "steps": self.steps, "samples": self.samples,
            "seconds": time.perf_counter() - self.t0, "state": _to(self.state, "cpu"),
            "losses": _packed(self.losses), "norms": _packed(self.norms),
            "meter": {k: _packed(v) for k, v in meter_state(self.meter).items()},
        }  # fmt: skip

    @classmethod
    def load(cls, state: dict[str, Any], meter: Meter, device: torch.device) -> EpochProgress:
        """A pass at a step checkpoint's place, on `device`; `meter`, new from the task, gets its sums."""
        set_meter_state(meter, {k: _unpacked(v, device) for k, v in state["meter"].items()})
        return cls(
            meter, state["order"], int(state["steps"]), 0, int(state["samples"]),
            _unpacked(state["losses"], device), _unpacked(state["norms"], device), _to(state["state"], device),
            time.perf_counter() - float(state["seconds"]),
        )  # fmt: skip


def _to(value: Any, device: torch.device | str) -> Any:
    """A tensor, or a tuple or list of them (a recurrent state), on `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _packed(value: Any) -> Any:
    """On the CPU; a list of tensors of one shape as {"stacked": tensor}."""
    if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
        if all(v.shape == value[0].shape for v in value):
            return {"stacked": torch.stack(value).cpu()}
    return _to(value, "cpu")


def _unpacked(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return list(value["stacked"].to(device).unbind(0))
    return _to(value, device)


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
    progress: EpochProgress | None = None,
) -> dict[str, Any]:
    """One pass over the training split: the meter's metrics, per-step losses and gradient norms, steps, samples.
    `progress` (whose meter is then the one updated) is kept current after every step, before `on_batch`; one
    loaded from a step checkpoint goes on from its place in the epoch.

    Under torchrun every rank draws the same global batches (`batch_size` is the global batch) and trains on
    its shard; the loss is weighted so that DDP's averaged gradient is the global batch's, and the step
    losses and metrics are summed over ranks: the same optimisation on 1 or N processes.
    """
    world = distributed.world()
    precision = precision or Precision(device_type=device.type)
    scaler = precision.scaler
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    at = progress if progress is not None else EpochProgress(meter)
    meter, at.total = at.meter, split.num_batches(batch_size)
    norms, losses = at.norms, at.losses  # one 0-d tensor per step, read back once at the end (no per-step sync)
    for batch in at.batches(split, batch_size, generator):
        part, weight, has_data = distributed.shard(batch, world)
        part = part.to(device)
        with precision.autocast():
            out = model(**part.inputs, targets=part.targets, state=at.state)
        out = fp32(out)
        at.state = detach(out.state)  # truncated BPTT: carry the state, not its history
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
        at.steps += 1
        at.samples += batch.size
        losses.append(out.loss.detach() * (weight / world.size) if world.distributed else out.loss.detach())
        if on_batch is not None:
            on_batch(at.steps, at.total)
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
        "steps": at.steps,
        "samples": at.samples,
    }


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), updated after every optimizer
    step: avg <- d * avg + (1 - d) * w, with d = min(decay, (1 + n) / (10 + n)) at the n-th update, so the
    first steps do not tie the average to the initial weights. Buffers are copied as they are."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model)  # same device and dtype; never trained, so always in eval mode
        self.model.eval()
        self.model.requires_grad_(False)
        flatten_rnns(self.model)
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
    """The L2 norm of each gradient, in one fused call (the total is their norm)."""
    return list(torch._foreach_norm(grads))


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

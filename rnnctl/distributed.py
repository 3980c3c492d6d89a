"""torchrun / DistributedDataParallel glue: who we are (rank, world), batches cut into per-rank shards,
metric sums all-reduced, rank 0 alone writing, `train --nproc N` started again under torchrun. No launcher or
communication code of our own: torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK;
torch.distributed (gloo on CPUs, NCCL on GPUs) talks.
"""

from __future__ import annotations

import io
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from rnnctl.errors import PeerFailed


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    return _WORLD


def launched() -> bool:
    """Started by torchrun (or any launcher that sets the torch.distributed environment) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_rank() -> int | None:
    """This process's rank among the several a launcher started (from the environment: known before the
    process group is joined, and after it is left); None for a single process."""
    return int(os.environ.get("RANK", "0")) if launched() else None


def relaunch(nproc: int, argv: list[str]) -> int:
    """`rnnctl train ... --nproc N`: the same command on N processes through torchrun (torch.distributed.run,
    standalone rendezvous on this machine); returns the exit code."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for arg in argv:  # the command again, without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    for name in [*logging.root.manager.loggerDict, "torch.distributed.run"]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks speak for themselves
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "rnnctl", *rest])
    try:
        run(args)
    except SignalException as e:  # Ctrl-C or SIGTERM to the launcher: it stopped the ranks, rank 0 recorded it
        return 130 if e.sigval == signal.SIGINT else 143  # rank 0 said so
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        if set(codes.values()) <= {130, -2}:
            return 130
        if set(codes.values()) <= {143, -15}:
            return 143
        return 1  # the failing rank printed its own line
    return 0


def leave(code: int) -> NoReturn:
    """A torchrun rank that ends (done, failed or stopped by a signal) exits now, its record already written:
    a process group torn down with a collective still pending (the peer is gone) can deadlock in its
    destructor (gloo's thread waits for the GIL that the joining thread holds), and torchrun would wait on it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def peer_gone(e: Exception) -> bool:
    """Whether a collective failed because another rank went away (that rank names its own failure)."""
    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(e, backend_error) or "closed by peer" in str(e) or "Connection reset by peer" in str(e)


def init(device_kind: str) -> World:
    """Join the process group torchrun set up: NCCL for CUDA devices, gloo otherwise. A single process: World()."""
    global _WORLD
    if not launched():
        return _WORLD
    if dist.is_initialized():
        return _WORLD
    backend = "nccl" if device_kind == "cuda" else "gloo"
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device_kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max((os.cpu_count() or 1) // local_size, 1))  # N processes share the cores
    if device_kind == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), local_size, backend)
    return _WORLD


def device_kind(device: str) -> str:
    """The kind of device a `train.device` value will give (auto: CUDA if there is one)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def main_only(fn):
    """Run `fn` on rank 0 alone and hand its result to every rank. If it fails there, rank 0 raises the error
    and the other ranks raise PeerFailed (they exit quietly: rank 0 has said why)."""
    if not _WORLD.distributed:
        return fn()
    if _WORLD.main:
        try:
            result = fn()
        except BaseException:
            broadcast((False, None))
            raise
        broadcast((True, result))
        return result
    ok, result = broadcast(None)
    if not ok:
        raise PeerFailed("rank 0 failed")
    return result


_HELD: list[Any] = []


def hold(ddp: Any) -> None:
    """Keep a DDP model (its reducer holds the process group) alive until the rank exits with os._exit
    (`leave`): freeing it tears the gloo group down in the main thread, GIL held, while a gloo thread may still
    be finishing a collective whose tensors need the GIL to be freed: a deadlock seen under load."""
    _HELD.append(ddp)


def shutdown() -> None:
    """Leave the process group at the end of training; the rank stays known (rank 0 alone shows the result)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, w: World) -> tuple[int, int]:
    """Rows [start, stop) of a batch of n rows for this rank: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (1 if w.rank < extra else 0)


def shard(batch: Any, w: World) -> tuple[Any, float, bool]:
    """This rank's part of a global batch, the weight that makes DDP's gradient average equal the global
    batch's mean loss (local size x world size / global size), and whether the part holds data. A rank left
    without rows computes on the whole batch with weight 0, so every rank takes part in every all-reduce."""
    if not w.distributed:
        return batch, 1.0, True
    start, stop = shard_bounds(batch.rows, w)
    if stop == start:
        return batch, 0.0, False
    part = batch.select(start, stop)
    return part, part.size * w.size / batch.size, True


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sums over ranks (in float64, on the tensors' device); a single process gets its own values back."""
    if not _WORLD.distributed or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view(t.shape))
        i += t.numel()
    return out


def reduce_meter(meter: Any) -> Any:
    """Replace a meter's local totals with their sums over ranks: every example counted exactly once."""
    if _WORLD.distributed:
        totals = meter.totals()
        names = list(totals)
        device = next((t.device for t in totals.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
        values = [torch.as_tensor(totals[k], dtype=torch.float64, device=device) for k in names]
        meter.set_totals(dict(zip(names, all_reduce_sum(values))))
    return meter


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (plain data and CPU tensors), in rank order (a single process: [obj])."""
    if not _WORLD.distributed:
        return [obj]
    out: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(out, _pack(obj))  # tensors travel as torch.save bytes: pickled storages do not
    return [_unpack(b) for b in out]


def _pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # RNG states: CPU tensors


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _WORLD.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe(device: torch.device) -> dict[str, Any]:
    """What run.json records of the processes: world size, backend, each rank's host and device."""
    mine = {"host": socket.gethostname(), "device": str(device)}
    ranks = gather(mine)
    return {"world_size": _WORLD.size, "backend": _WORLD.backend, "ranks": ranks}

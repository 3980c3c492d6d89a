"""The one training loop and evaluation, for every task. It never names a task.

config -> task.prepare (data) -> task.build_model -> epochs of (train, validate, checkpoint, log)
-> test on the best checkpoint -> plots. Loggers (disk, live table, plain lines) see the same rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from rnnctl import __version__
from rnnctl.config import Config, OptimConfig, dump_yaml, validate
from rnnctl.errors import ConfigError, DataError, DivergedError, RunError
from rnnctl.runs import (
    MetricsFiles,
    create_run_dir,
    load_checkpoint,
    read_json,
    read_run,
    resolve_run,
    runs_root,
    save_checkpoint,
    truncate_metrics,
    write_json,
    write_table,
)
from rnnctl.schedules import EarlyStopping, LRSchedule
from rnnctl.tasks import Meter, Split, Task, get_task
from rnnctl.tensorboard_log import TensorBoardLog, check_installed


class Logger(Protocol):
    """What the engine tells whoever watches: the disk writer, the live table, plain lines."""

    def start(self, info: dict[str, Any]) -> None: ...

    def progress(self, done: int, total: int) -> None: ...  # batches done in the current epoch

    def steps(self, rows: list[dict[str, Any]]) -> None: ...  # every optimizer step of an epoch: loss, grad_norm

    def epoch(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


TIMING_KEYS = ("samples_per_s", "epoch_time", "elapsed")  # the only metrics that differ between identical runs


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
    on_batch=None,
) -> dict[str, float]:
    """One pass over the training split: the meter's metrics, gradient-norm statistics, steps and samples."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total = split.num_batches(batch_size)
    norms, losses = [], []  # one 0-d tensor per step, read back once at the end (no per-step sync)
    state = None
    steps = samples = 0
    for steps, batch in enumerate(split.batches(batch_size, generator), 1):
        batch = batch.to(device)
        out = model(**batch.inputs, targets=batch.targets, state=state)
        state = detach(out.state)  # truncated BPTT: carry the state, not its history
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
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
        meter.update(batch, out)
        samples += batch.size
        losses.append(out.loss.detach())
        if on_batch is not None:
            on_batch(steps, total)
    step_losses = torch.stack(losses).float().cpu().tolist() if losses else []  # read once: no per-step sync
    bad = next((i for i, loss in enumerate(step_losses, 1) if not math.isfinite(loss)), None)
    if bad is not None:  # the weights after that step are spoiled: the caller keeps the last good checkpoint
        raise DivergedError(f"step {bad} of the epoch: the training loss is {step_losses[bad - 1]}", bad)
    return {
        **meter.compute(),
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
def evaluate(model: torch.nn.Module, split: Split, meter: Meter, device: torch.device, batch_size: int) -> Meter:
    model.eval()
    state = None
    for batch in split.batches(batch_size):
        batch = batch.to(device)
        out = model(**batch.inputs, targets=batch.targets, state=state)
        state = out.state
        meter.update(batch, out)
    return meter


@contextlib.contextmanager
def deferred_interrupt():
    """Hold a SIGINT that arrives inside the block until the block is done, then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


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


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class Trainer:
    """A training run from start to finish: owns the run folder, the model, the loop and its state."""

    def __init__(
        self,
        cfg: Config,
        command: str,
        loggers: list[Logger],
        root: Path | None = None,
        resume: tuple[Path, dict[str, Any]] | None = None,  # (run folder, its last checkpoint)
    ):
        self.cfg = cfg
        self.task: Task = get_task(cfg.task)
        if cfg.log.tensorboard:
            check_installed()  # a missing extra is a one-line error before any run folder exists
        set_seed(cfg.train.seed)
        self.device = pick_device(cfg.train.device)
        meta = resume[1]["meta"] if resume else None  # a resumed run keeps its vocabulary and classes
        self.data = self.task.prepare(cfg, meta)  # user data errors surface here, before any run folder exists
        for name, split in self.data.splits.items():
            if len(split) == 0:
                raise DataError(f"the {name} split is empty: more data, or another data.val_fraction")
        self.model = self.task.build_model(cfg, self.data.meta).to(self.device)
        self.optimizer = make_optimizer(cfg.optim, self.model.parameters())
        self.generator = torch.Generator().manual_seed(cfg.train.seed)  # data order, saved in checkpoints
        steps_per_epoch = self.data.splits["train"].num_batches(cfg.train.batch_size)
        mode = self.task.monitor_mode
        self.schedule = LRSchedule(cfg.train.schedule, cfg.optim.lr, cfg.train.epochs, steps_per_epoch, mode)
        self.early_stop = EarlyStopping(cfg.train.early_stop, mode)
        self.epoch = self.step = 0
        self.best: dict[str, Any] = {
            "epoch": None, "step": None, "value": None, "metric": f"val_{self.task.monitor}", "mode": self.task.monitor_mode,
        }  # fmt: skip
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run (resume)
        if resume is not None:
            self._restore(*resume, command, loggers)
            return
        self.dir = create_run_dir(root or runs_root(), cfg.name or cfg.task)
        self.loggers: list[Logger] = [*self.disk_loggers(), *loggers]
        self.info: dict[str, Any] = {
            "id": self.dir.name,
            "task": cfg.task,
            "name": cfg.name,
            "status": "running",
            "command": command,
            "created": _now(),
            "created_ns": time.time_ns(),  # orders runs started within the same second
            "seed": cfg.train.seed,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "git_commit": git_commit(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "epochs": cfg.train.epochs,
            "epochs_done": 0,
            "best": self.best,
            "pid": os.getpid(),
            "host": os.uname().nodename,
        }
        (self.dir / "config.yaml").write_text(
            dump_yaml({**cfg.to_dict(), "derived": self.data.derived}), encoding="utf-8"
        )
        self.save_info()

    def _restore(self, run_dir: Path, ckpt: dict[str, Any], command: str, loggers: list[Logger]) -> None:
        """Continue a run from its last checkpoint: weights, optimizer, progress, best, every RNG."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], dict(ckpt["best"])
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy(), *rng["numpy"][2:]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["data"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.early_stop.load_state_dict(ckpt["early_stop"])
        self.dir = run_dir
        kept = truncate_metrics(self.dir, self.step)  # rows logged after the checkpoint (an unfinished epoch) go
        self.elapsed_before = kept[-1]["elapsed"] if kept else 0.0
        self.loggers = [*self.disk_loggers(resume_step=self.step), *loggers]
        self.info = read_json(self.dir / "run.json")
        history = self.info.setdefault("history", [])
        history.append(
            {"resumed": _now(), "from_epoch": self.epoch, "command": command, "status_before": self.info.get("status")}
        )
        self.info.update(
            status="running", epochs=self.cfg.train.epochs, epochs_done=self.epoch, best=self.best,
            pid=os.getpid(), host=os.uname().nodename,
        )  # fmt: skip
        for key in ("finished", "duration", "stopped_early"):
            self.info.pop(key, None)
        (self.dir / "config.yaml").write_text(
            dump_yaml({**self.cfg.to_dict(), "derived": self.data.derived}), encoding="utf-8"
        )
        self.save_info()

    def disk_loggers(self, resume_step: int | None = None) -> list[Logger]:
        """The loggers that write into the run folder: metrics files always, TensorBoard when asked."""
        loggers: list[Logger] = [MetricsFiles(self.dir)]
        if self.cfg.log.tensorboard:
            loggers.append(TensorBoardLog(self.dir, resume_step))
        return loggers

    def save_info(self) -> None:
        write_json(self.dir / "run.json", self.info)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task,
            "config": self.cfg.to_dict(),
            "meta": self.data.meta,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": dict(self.best),
            "schedule": self.schedule.state_dict(),
            "early_stop": self.early_stop.state_dict(),
            "rng": rng_states(self.generator),
        }

    def run(self) -> dict[str, Any]:
        cfg = self.cfg.train
        start = time.perf_counter() - self.elapsed_before
        for lg in self.loggers:
            lg.start({**self.info, "dir": str(self.dir), "monitor": self.best["metric"]})
        try:
            while self.epoch < cfg.epochs:
                self.epoch += 1
                t0 = time.perf_counter()
                meter = self.task.meter(self.data.meta)

                def on_batch(done: int, total: int, meter: Meter = meter) -> None:
                    self._set_lr(self.step + done)  # for the next step
                    for lg in self.loggers:
                        lg.progress(done, total)
                    if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                        self._evaluation_point(meter, done, total, start)  # a row inside a long epoch
                        self.model.train()

                self._set_lr(self.step)
                try:
                    train = train_epoch(
                        self.model, self.data.splits["train"], meter, self.optimizer, self.device, cfg.batch_size,
                        self.generator, cfg.grad_clip, cfg.grad_clip_value, on_batch,
                    )  # fmt: skip
                except DivergedError as e:
                    kept = f"epoch {self.epoch - 1} in checkpoints/last.pt" if self.epoch > 1 else "none"
                    raise DivergedError(
                        f"epoch {self.epoch}, step {self.step + e.step}: the training loss is not finite "
                        f"(lower optim.lr or set train.grad_clip); last good checkpoint: {kept}",
                        e.step,
                    ) from None
                speed = train.pop("samples") / (time.perf_counter() - t0)
                norms, losses = train.pop("grad_norms"), train.pop("losses")
                step_rows = [
                    {"step": self.step + i + 1, "loss": loss, "grad_norm": n}
                    for i, (loss, n) in enumerate(zip(losses, norms))
                ]
                train["grad_norm"] = sum(norms) / max(len(norms), 1)
                train["grad_norm_max"] = max(norms, default=0.0)
                self.step += train.pop("steps")
                val, text = self._validate(self.step)
                with deferred_interrupt():  # checkpoints, run.json and metrics agree even if Ctrl-C lands here
                    for lg in self.loggers:  # before the epoch row: a resume truncates both by step
                        lg.steps(step_rows)
                    if self._end_epoch(train, val, text, speed, t0, start):
                        break
            return self._finish("completed", start)  # inside the try: a failure while testing is recorded too
        except KeyboardInterrupt:
            self.info.update(status="interrupted", finished=_now(), duration=time.perf_counter() - start)
            self.save_info()  # recorded first: a second Ctrl-C during the wrap-up still leaves the truth
            self._finish("interrupted", start)
            raise
        except BaseException:
            self.info.update(status="failed", finished=_now(), duration=time.perf_counter() - start)
            self.save_info()
            raise
        finally:
            for lg in self.loggers:  # idempotent: stops a live display however the run ended
                lg.finish({**self.info, "dir": str(self.dir)})

    def _validate(self, step: int) -> tuple[dict[str, float], str | None]:
        """Validation metrics, and the task's preview (a text sample, a predicted string) if it has one."""
        val = evaluate(
            self.model, self.data.splits["val"], self.task.meter(self.data.meta), self.device, self.cfg.train.batch_size
        )
        preview = getattr(self.task, "preview", None)
        return val.compute(), (preview(self.model, self.data.meta, self.cfg, step) if preview is not None else None)

    def _evaluation_point(self, meter: Meter, done: int, total: int, start: float) -> None:
        """`train.eval_every`: validate inside an epoch and log a partial row (train metrics so far).

        A better model here becomes best.pt; last.pt stays at epoch boundaries, where training resumes.
        """
        step = self.step + done
        val, text = self._validate(step)
        with deferred_interrupt():
            improved = self._update_best(val[self.task.monitor], step)
            row = {
                "epoch": self.epoch,
                "step": step,
                "epoch_fraction": self.epoch - 1 + done / total,
                "partial": True,
                **{f"train_{k}": v for k, v in meter.compute().items()},
                **{f"val_{k}": v for k, v in val.items()},
                "lr": self.optimizer.param_groups[0]["lr"],
                "best_epoch": self.best["epoch"],
                "elapsed": time.perf_counter() - start,
                **({"preview": text} if text is not None else {}),
            }
            if improved:
                save_checkpoint(self.dir / "checkpoints" / "best.pt", {**self.checkpoint_state(), "step": step})
                self.info.update(best=self.best)
                self.save_info()
            for lg in self.loggers:
                lg.epoch(row)

    def _end_epoch(
        self, train: dict[str, float], val: dict[str, float], preview: str | None, speed: float, t0: float, start: float
    ) -> None:
        """Record one finished epoch everywhere: best, checkpoints, run.json, metrics files, display.
        Returns True when early stopping ends the run here."""
        value = val[self.task.monitor]
        improved = self._update_best(value, self.step)
        lr = self.schedule.lr(self.step - 1)  # what the epoch's last step used
        self.schedule.epoch_end(value)  # plateau decays act from the next step on
        stop = self.early_stop.should_stop(value)
        row = {
            "epoch": self.epoch,
            "step": self.step,
            **{f"train_{k}": v for k, v in train.items() if not k.startswith("grad_norm")},
            **{f"val_{k}": v for k, v in val.items()},
            "lr": lr,
            "grad_norm": train["grad_norm"],
            "grad_norm_max": train["grad_norm_max"],
            "best_epoch": self.best["epoch"],
            "samples_per_s": speed,  # training examples (names, characters) per second of the training pass
            "epoch_time": time.perf_counter() - t0,
            "elapsed": time.perf_counter() - start,
            **({"preview": preview} if preview is not None else {}),
        }
        ckpt = self.dir / "checkpoints"
        save_checkpoint([ckpt / "last.pt", *([ckpt / "best.pt"] if improved else [])], self.checkpoint_state())
        self.info.update(epochs_done=self.epoch, best=self.best)
        if stop:
            self.info["stopped_early"] = {"epoch": self.epoch, "patience": self.cfg.train.early_stop.patience}
        self.save_info()
        for lg in self.loggers:
            lg.epoch(row)
        return stop

    def _set_lr(self, step: int) -> None:
        if self.schedule.constant and step > 0:
            return
        lr = self.schedule.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _update_best(self, value: float, step: int) -> bool:
        if not math.isfinite(value):  # a diverged epoch is never the best one
            return False
        old = self.best["value"]
        better = old is None or (value > old if self.task.monitor_mode == "max" else value < old)
        if better:
            self.best.update(epoch=self.epoch, step=step, value=value)
        return better

    def _finish(self, status: str, start: float) -> dict[str, Any]:
        """Test the best checkpoint, draw the plots, record the outcome. Runs after Ctrl-C too."""
        from rnnctl import plots

        best_path = self.dir / "checkpoints" / "best.pt"
        splits = [s for s in getattr(self.task, "report_splits", ("test",)) if s in self.data.splits]
        if best_path.exists() and splits:
            ckpt = load_checkpoint(best_path)
            self.model.load_state_dict(ckpt["model"])
            for split in splits:  # the test split, and whichever others the task draws at the end
                report, _ = evaluate_and_save(
                    self.task, self.model, self.data.meta, self.data.splits[split], self.device,
                    self.cfg.train.batch_size, self.dir, split, "best", ckpt["epoch"],
                )  # fmt: skip
                if split == "test":
                    self.info["test"] = {
                        k: v for k, v in report.items() if isinstance(v, (int, float)) and k != "epoch"
                    }
        plots.write_all(self.dir)
        self.info.update(status=status, finished=_now(), duration=time.perf_counter() - start)
        self.save_info()
        return {**self.info, "dir": str(self.dir)}


def train(cfg: Config, command: str, loggers: list[Logger], root: Path | None = None) -> dict[str, Any]:
    return Trainer(cfg, command, loggers, root).run()


def resume(ref: str, epochs: int | None, command: str, loggers: list[Logger]) -> dict[str, Any]:
    """Continue a run (id, path or `latest`) from its last checkpoint; `epochs` may extend it."""
    run_dir = resolve_run(ref)
    info = read_run(run_dir)
    if info.get("status") == "running":
        raise RunError(f"{run_dir.name} is still running (pid {info.get('pid')}): stop it before resuming")
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    raw = dict(ckpt["config"])
    if epochs is not None:
        raw["train"] = {**raw["train"], "epochs": epochs}
    try:
        cfg = validate(raw, source="--epochs" if epochs is not None else f"{run_dir}/checkpoints/last.pt")
    except ConfigError as e:
        raise RunError(str(e)) from None
    if ckpt["epoch"] >= cfg.train.epochs:
        raise RunError(
            f"{run_dir.name} has trained {ckpt['epoch']} of {cfg.train.epochs} epochs: "
            f"pass --epochs N with N > {ckpt['epoch']} to train longer"
        )
    return Trainer(cfg, command, loggers, resume=(run_dir, ckpt)).run()


def evaluate_and_save(
    task: Task,
    model,
    meta,
    split: Split,
    device,
    batch_size: int,
    run_dir: Path,
    split_name: str,
    checkpoint: str,
    epoch: int,
) -> tuple[dict[str, Any], Path]:
    """The detailed report of one checkpoint on one split, written to `eval/<split>-<checkpoint>.json`."""
    report = evaluate(model, split, task.meter(meta, detailed=True), device, batch_size).report()
    return save_eval(run_dir, split_name, checkpoint, {"epoch": epoch, **report})


def save_eval(run_dir: Path, split: str, checkpoint: str, report: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """Write `eval/<split>-<checkpoint>.json`; returns the report as written and its path."""
    path = run_dir / "eval" / f"{split}-{checkpoint}.json"
    report = {"split": split, "checkpoint": checkpoint, "created": _now(), **report}
    write_json(path, report)
    return report, path


class LoadedRun:
    """A run folder's config, task and model, restored from one of its checkpoints."""

    def __init__(self, ref: str, checkpoint: str = "best", device: str = "cpu"):
        self.dir = resolve_run(ref)
        if checkpoint not in ("best", "last"):
            raise RunError(f"--checkpoint {checkpoint!r}: expected best or last")
        self.checkpoint_name = checkpoint
        self.ckpt = load_checkpoint(self.dir / "checkpoints" / f"{checkpoint}.pt")
        try:
            self.cfg = validate(self.ckpt["config"], source=f"{self.dir}/checkpoints/{checkpoint}.pt")
        except ConfigError as e:
            raise RunError(str(e)) from None
        self.task = get_task(self.cfg.task)
        self.meta = self.ckpt["meta"]
        self.device = pick_device(device)
        self.model = self.task.build_model(self.cfg, self.meta).to(self.device)
        self.model.load_state_dict(self.ckpt["model"])
        self.model.eval()

    def evaluate(self, split: str | None) -> tuple[dict[str, Any], Path]:
        data = self.task.prepare(self.cfg, meta=self.meta)
        split = split or ("test" if "test" in data.splits else "val")  # a language model has no test split
        if split not in data.splits:
            raise RunError(f"--split {split!r}: expected one of {', '.join(data.splits)}")
        return evaluate_and_save(
            self.task, self.model, self.meta, data.splits[split], self.device, self.cfg.train.batch_size,
            self.dir, split, self.checkpoint_name, self.ckpt["epoch"],
        )  # fmt: skip

    def predict(self, inputs: list[str], top: int) -> list[dict[str, Any]]:
        return self.task.predict(self.model, self.meta, inputs, top)

    def forecast(self, steps: int) -> dict[str, Any]:
        """The next `steps` values after the end of a series run's data, from the checkpoint alone."""
        forecast = getattr(self.task, "forecast", None)
        if forecast is None:
            raise RunError(f"{self.dir.name} is a {self.cfg.task} run, not a time series: --horizon does not apply")
        result = forecast(self.model, self.meta, steps)  # {"time": name, "column": name, "rows": [...], ...}
        from rnnctl import plots

        folder = self.dir / "forecast"
        paths = {ext: folder / f"forecast-{steps}.{ext}" for ext in ("json", "csv", "png")}
        write_json(paths["json"], {"run": self.dir.name, "checkpoint": self.checkpoint_name, **result})
        write_table(paths["csv"], [result["time"], result["column"]], result["rows"])
        plots.forecast(paths["json"], paths["png"])  # drawn from the file, like every plot
        return {**result, **{ext: str(p) for ext, p in paths.items()}}

    def samples(
        self, seed: str, length: int, temperature: float, top_k: int, num: int, rng_seed: int | None
    ) -> Iterator[Iterator[str]]:
        """`num` character streams; one generator serves them all, so `rng_seed` fixes the whole output."""
        sample = getattr(self.task, "sample", None)
        if sample is None:
            raise RunError(f"{self.dir.name} is a {self.cfg.task} run, not a language model: nothing to sample")
        generator = torch.Generator().manual_seed(rng_seed) if rng_seed is not None else None
        for _ in range(num):
            yield sample(self.model, self.meta, seed, length, temperature, top_k, generator)


def latest_language_model_run() -> str:
    """The id of the newest completed run whose task can sample text."""
    from rnnctl.runs import all_runs, read_run
    from rnnctl.tasks import TASKS

    for path in reversed(all_runs()):
        info = read_run(path)
        if info.get("status") == "completed" and hasattr(TASKS.get(info.get("task")), "sample"):
            return str(path)
    raise RunError(f"no completed language-model run in {runs_root()}/ (train one first)")

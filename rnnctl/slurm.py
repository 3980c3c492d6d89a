"""Runs as Slurm jobs through submitit; a job cut by its time limit requeues itself and goes on.

`submit` makes the run folder at once (config.yaml, run.json with status `submitted`), then submits a
`RunJob` with submitit into the folder's `slurm/`. In the job the run trains like `rnnctl train` would;
a job that was requeued resumes the same folder from its last checkpoint, on whatever node it lands.

Slurm signals the job `slurm.signal_delay_s` before its time limit (USR2, submitit's signal). The job
passes it on as SIGTERM to rnnctl's own handlers, so the run stops exactly as on SIGTERM (a checkpoint
being written is finished first): it records `interrupted` and keeps its checkpoint. Then submitit's own handler asks `RunJob.checkpoint()` for the job to resubmit and requeues
it (`scontrol requeue`); past `slurm.max_requeues` it returns none and the run stays `interrupted`,
resumable by hand. `submit_group` does the same for a sweep's or study's workers: one job array of
`GroupWorkerJob`s. The state of a job comes from `squeue`, never from `sacct` (clusters without
accounting have none).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rnnctl.errors import ConfigError, RunError, Terminated, first_line
from rnnctl.runs import RunFolder, now

if TYPE_CHECKING:
    from rnnctl.config import Config, SlurmConfig
    from rnnctl.groups.folder import GroupFolder

try:
    import submitit
except ImportError:  # `train --slurm` says what to install
    submitit = None

WARNING_SIGNAL = "USR2"  # what the job asks Slurm for before its time limit: submitit's requeue signal
SQUEUE_TIMEOUT = 15  # seconds a Slurm client command may take before rnnctl gives up on it


def _needs_slurm() -> None:
    if submitit is None:
        raise ConfigError("--slurm needs submitit: pip install 'rnnctl[slurm]'")
    if shutil.which("sbatch") is None:
        raise ConfigError("--slurm: sbatch not found: submit from a machine of the Slurm cluster (a login node)")


def executor(folder: Path, sc: SlurmConfig, name: str) -> Any:
    """A submitit executor for jobs as `slurm:` asks: one task per node, the warning signal before the limit."""
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=sc.max_requeues)
    extra = dict(sc.extra)
    if sc.gpus_per_node:
        extra["gpus_per_node"] = sc.gpus_per_node
    ex.update_parameters(
        job_name=name, time=sc.minutes(), nodes=sc.nodes, ntasks_per_node=1, signal_delay_s=sc.signal_delay_s,
        **{k: v for k, v in (("partition", sc.partition), ("cpus_per_task", sc.cpus_per_task), ("mem", sc.mem),
                             ("account", sc.account), ("qos", sc.qos)) if v is not None},
        additional_parameters=extra,
    )  # fmt: skip
    return ex


def sbatch_reason(error: BaseException) -> str:
    """Slurm's own words from a refused submission, on one line (sbatch's `error:` lines)."""
    text = str(error).strip()
    lines = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
    return "; ".join(dict.fromkeys(lines)) or (text.splitlines()[-1] if text else type(error).__name__)


def submit(cfg: Config, command: str, overrides: list[str] = ()) -> dict[str, Any]:
    """A new run folder, and the job that trains it: the run's id and folder, the job's id and its log. A
    submission Slurm refuses leaves nothing behind and raises RunError with Slurm's reason."""
    _needs_slurm()
    if cfg.slurm.nodes > 1:
        raise ConfigError(
            f"slurm.nodes={cfg.slurm.nodes}: a --slurm run trains in one process on one node; for a run over "
            "several nodes use torchrun in a batch script (see the scale-out page of the manual)"
        )
    run = RunFolder.create(cfg.name or cfg.task)
    try:
        run.write_config(cfg.to_dict(), {})  # resumable as it is, even if the job never starts
        run.write_info(
            {"task": cfg.task, "status": "submitted", "created": now(), "created_ns": time.time_ns(),
             "command": command, "overrides": list(overrides), "epochs": cfg.train.epochs, "epochs_done": 0}
        )  # fmt: skip
        job = _submit(run, RunJob(str(run.path), cfg.to_dict(), command, list(overrides), cfg.slurm.max_requeues),
                      cfg.slurm, run.id)  # fmt: skip
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return {"run": run.id, "dir": str(run.path), **job}


def submit_resume(ref: str, epochs: int | None, command: str) -> dict[str, Any]:
    """A job that continues a run (id, path or `latest`) from its last checkpoint, with the resources of its
    config's `slurm:` section; `epochs` may extend it. Refused while the run's own job is still queued."""
    from rnnctl.config import validate

    _needs_slurm()
    run = RunFolder.resolve(ref, latest="started")
    info, job = run.read_info(), run.job()
    if job is not None and _in_queue(job["job_id"]):
        raise RunError(f"{run.id} has its Slurm job {job['job_id']} in the queue: cancel it first (rnnctl cancel)")
    if info.get("status") == "completed" and epochs is None:
        raise RunError(f"{run.id} is completed: pass --epochs N to train it longer")
    raw = {k: v for k, v in run.config().items() if k != "derived"}
    try:
        cfg = validate(raw, source=str(run.path / "config.yaml"))
    except ConfigError as e:
        raise RunError(str(e)) from None
    job = _submit(run, RunJob(str(run.path), raw, command, [], cfg.slurm.max_requeues, epochs), cfg.slurm, run.id)
    return {"run": run.id, "dir": str(run.path), **job}


def _as_sigterm(warned: list[int], raise_outside: bool) -> Callable[[int, Any], None]:
    """A handler of Slurm's warning that notes it in `warned` and passes it on as SIGTERM to rnnctl's own
    handler of the moment (training: raised; a checkpoint or storage write: held until it is whole; a group
    worker between members: noted). Where rnnctl has none (submitit's, before training starts), it raises
    at once (`raise_outside`) or leaves the caller to look at `warned`."""

    def warn(signum: int, frame: Any) -> None:
        warned.append(signum)
        handler = signal.getsignal(signal.SIGTERM)
        if getattr(handler, "__module__", "").startswith("rnnctl."):
            handler(signal.SIGTERM, frame)
        elif raise_outside:
            raise Terminated()

    return warn


def _submit(run: RunFolder, job: RunJob, sc: SlurmConfig, name: str) -> dict[str, Any]:
    from submitit.core.utils import FailedJobError

    ex = executor(run.slurm_dir, sc, name)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors too: one line is ours
            submitted = ex.submit(job)
    except (FailedJobError, OSError) as e:
        raise RunError(f"Slurm refused the job: {sbatch_reason(e)}") from None
    record = {"job_id": str(submitted.job_id), "submitted": now(), "log": str(submitted.paths.stdout)}
    run.write_job(record)
    return record


class RunJob(submitit.helpers.Checkpointable if submitit else object):
    """What a job runs: the run folder's training, a new run the first time and a resume after a requeue.
    Plain data only (the config as a dict), so that it unpickles on any node."""

    def __init__(
        self, run: str, config: dict[str, Any], command: str, overrides: list[str], max_requeues: int,
        epochs: int | None = None,
    ):  # fmt: skip
        self.run, self.config, self.command = run, config, command
        self.overrides, self.max_requeues, self.epochs = overrides, max_requeues, epochs

    def __call__(self) -> dict[str, Any]:
        warned: list[int] = []
        submitit_handler = signal.signal(signal.SIGUSR2, _as_sigterm(warned, raise_outside=True))
        try:
            result = self._train()
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a warning after the end: nothing left to save
            return result
        except KeyboardInterrupt:
            if not warned:
                raise
            signal.signal(signal.SIGUSR2, submitit_handler)
        submitit_handler(warned[0], None)  # checkpoint() below, `scontrol requeue` and exit; or no requeue left
        raise RunError("not requeued")  # not reached: the handler exits or raises

    def _train(self) -> dict[str, Any]:
        from rnnctl import loop
        from rnnctl.config import validate
        from rnnctl.live import PlainLines

        run, loggers = RunFolder(Path(self.run)), [PlainLines(sys.stdout)]
        if (info := run.read_info()).get("status") == "submitted":  # the first job: a new run into its folder
            try:
                trainer = loop.Trainer(validate(self.config, source=str(run.path / "config.yaml")))
            except Exception as e:  # before the run's own record exists (its data, its device): say so in it
                run.write_info({**info, "status": "failed", "error": first_line(e)})
                raise
            return trainer.open(run, run.lock(), self.command, loggers, self.overrides).fit()
        # a requeued job: the previous one has ended (Slurm requeues a job once its processes are gone), so
        # its lock is taken over even when its heartbeat is not yet stale
        return loop.resume(str(run.path), self.epochs, command=self.command, loggers=loggers, force=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The job to requeue (submitit's protocol): this one again, which resumes the run; None past
        `max_requeues`, so the run stays interrupted."""
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) >= self.max_requeues:
            return None
        again = RunJob(self.run, self.config, self.command, self.overrides, self.max_requeues, self.epochs)
        return submitit.helpers.DelayedSubmission(again)


# -- sweeps and searches: their workers as one job array ----------------------------------------------------

LOCK_WAIT_S = 120  # how long a worker job waits for another to finish making the group whole


def submit_group(group: GroupFolder, jobs: int) -> dict[str, Any]:
    """The group made whole (as `sweep`/`search` do before their workers start), then `jobs` workers as one
    Slurm job array sharing the group's storage; the array's id and where its logs go."""
    from rnnctl.config import load_config

    _needs_slurm()
    sc = load_config(group.config).slurm
    with group.lock():  # no driver here while the work is queued
        if not _make_whole(group):
            raise RunError(f"{group.kind} {group.name} has nothing left to train ({group.path})")
    from submitit.core.utils import FailedJobError

    ex = executor(group.slurm_dir, sc, group.name)
    ex.update_parameters(array_parallelism=jobs)
    try:
        with contextlib.redirect_stderr(io.StringIO()), ex.batch():
            workers = [ex.submit(GroupWorkerJob(str(group.path), i, sc.max_requeues)) for i in range(jobs)]
    except (FailedJobError, OSError) as e:
        raise RunError(f"Slurm refused the job: {sbatch_reason(e)}") from None
    array = str(workers[0].job_id).split("_")[0]
    record = {"job_id": array, "tasks": jobs, "submitted": now(), "log_dir": str(group.slurm_dir)}
    group.write("job", record)
    return {"group": group.name, "kind": group.kind, "dir": str(group.path), **record}


def _make_whole(group: GroupFolder) -> bool:
    """trials.requeue: interrupted members queued again to continue their runs; whether work is left."""
    from rnnctl.groups import trials, workers
    from rnnctl.groups.storage import open_study, quiet

    with quiet():
        s = open_study(group)
        trials.requeue(s, group)
        return workers.has_work(group, s.get_trials(deepcopy=False))


class GroupWorkerJob(submitit.helpers.Checkpointable if submitit else object):
    """One task of a group's job array: a worker (`groups.workers.work`) until nothing is left. On Slurm's
    warning the member it trains stops as on SIGTERM (its run interrupted, resumable) and the task requeues;
    the requeued task queues that member again and goes on."""

    def __init__(self, group: str, index: int, max_requeues: int):
        self.group, self.index, self.max_requeues = group, index, max_requeues

    def __call__(self) -> None:
        from rnnctl.groups.folder import GroupFolder
        from rnnctl.groups.workers import work

        group, warned = GroupFolder(Path(self.group)), []
        submitit_handler = signal.signal(signal.SIGUSR2, _as_sigterm(warned, raise_outside=False))
        try:
            if os.environ.get("SLURM_RESTART_COUNT"):  # a requeued worker: the member it left, queued again
                _locked(group, lambda: _make_whole(group))
            if warned:
                raise Terminated()
            work(group, self.index, None, None, lambda: None)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            if not warned:
                raise
            signal.signal(signal.SIGUSR2, submitit_handler)
        submitit_handler(warned[0], None)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) >= self.max_requeues:
            return None
        return submitit.helpers.DelayedSubmission(GroupWorkerJob(self.group, self.index, self.max_requeues))


def _locked(group: GroupFolder, do: Any) -> Any:
    """`do()` under the group's lock, waiting while another worker job holds it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            lock = group.lock()
            break
        except RunError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    with lock:
        return do()


# -- the queue ------------------------------------------------------------------------------------------


def _client(*cmd: str) -> subprocess.CompletedProcess | None:
    """A Slurm client command with a deadline; None when it is missing or does not answer."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None


def queue_states() -> dict[str, str]:
    """Job id -> state (PENDING, RUNNING, ...) of every job `squeue` lists; {} without Slurm."""
    if shutil.which("squeue") is None:
        return {}
    done = _client("squeue", "-h", "-o", "%i %T")
    if done is None or done.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in done.stdout.splitlines() if len(line.split()) == 2)


def _in_queue(job_id: str) -> bool:
    return any(j == job_id or j.startswith(f"{job_id}_") for j in queue_states())


def _scancel(job_id: str, what: str, timeout: float) -> None:
    """scancel the job (or array), then wait until it has left the queue: its processes are gone."""
    if not _in_queue(job_id):
        raise RunError(f"{what}: its Slurm job {job_id} is no longer in the queue: nothing to cancel")
    done = _client("scancel", job_id)
    if done is None or done.returncode != 0:
        why = sbatch_reason(RuntimeError(done.stderr)) if done is not None else "scancel did not answer"
        raise RunError(f"{what}: could not cancel job {job_id}: {why}")
    deadline = time.monotonic() + timeout
    while _in_queue(job_id):
        if time.monotonic() > deadline:
            raise RunError(f"{what}: job {job_id} is still in the queue {timeout:.0f} s after scancel")
        time.sleep(0.5)


def cancel(ref: str, timeout: float = 60) -> dict[str, Any]:
    """Cancel the Slurm job of a run, or the job array of a sweep's or study's workers (`scancel`). A running
    job stops like on SIGTERM and records `interrupted`; a pending run, or one killed before it could, is
    marked `interrupted` here. Either way it stays resumable: what continues it is in `resume`."""
    from rnnctl.groups.folder import GroupFolder

    group = GroupFolder.find(ref)
    if group is not None and (job := group.job()) is not None:
        _scancel(job["job_id"], f"{group.kind} {group.name}", timeout)
        command = "sweep" if group.kind == "sweep" else "search"
        return {"name": f"{group.kind} {group.name}", "job_id": job["job_id"], "status": "stopped",
                "resume": f"rnnctl {command} --resume {group.name}"}  # fmt: skip
    run = RunFolder.resolve(ref, latest="started")
    job = run.job()
    if job is None:
        raise RunError(f"{run.id} was not submitted to Slurm: stop a run of this machine with Ctrl-C")
    _scancel(job["job_id"], run.id, timeout)
    info = run.read_info()
    if info.get("status") in ("submitted", "running"):
        run.write_info({**info, "status": "interrupted"})
    status = run.read_info().get("status")
    return {"name": run.id, "job_id": job["job_id"], "status": status, "resume": f"rnnctl train --resume {run.id}"}

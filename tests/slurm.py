"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd of its own, in a temporary folder.

`SlurmCluster.start()` writes a slurm.conf (free ports, state, spool, logs and pid files in its folder), starts
munged with a key and socket of its own, then slurmctld and slurmd in the foreground under `subprocess.Popen`, and
returns when `sinfo` shows the node idle. `stop()` cancels every job, ends the daemons and then kills whatever
still carries this cluster's SLURM_CONF (job steps outlive slurmd on purpose), so nothing is left running.

A test module gets the cluster with `slurm_cluster = slurm_cluster_fixture()`: a session fixture that skips, with
the reason, where Slurm is not installed or a daemon does not start. Every module's copy returns the same cluster,
one per pytest process. Under xdist each worker that runs a Slurm test starts a cluster of its own (ports, folder,
munge socket: nothing is shared); a lock file only keeps two workers from picking the same free ports while their
daemons start. Debian: `apt-get install slurm-wlm munge`.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
START_TIMEOUT = 60  # seconds for the daemons to come up: about 2 on an idle machine
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL")


class SlurmUnavailable(Exception):
    """Slurm cannot run here; the message says why (a missing command, a daemon's log)."""


class SlurmCluster:
    """One node (this host, `CPUs` 2) with partitions `debug` (the default, no time limit) and `short` (1 minute:
    submissions above a partition's limits are refused, EnforcePartLimits=ALL). No accounting: `sacct` has nothing."""

    CPUS = 2

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.user = "root"
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        self.env = {**clean, "SLURM_CONF": str(self.conf)}  # client commands of this cluster, never a host's own

    # -- start and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle. Raises SlurmUnavailable."""
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster runs its daemons as root (SlurmUser=root)")
        atexit.register(self.stop)
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged wants every folder above its socket searchable by all, and its key readable by its owner alone
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        self.socket = self.root / "munge" / "munge.socket"
        self._daemon("munged", ["munged", "-F", f"--socket={self.socket}", f"--key-file={key}",
                                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                                f"--log-file={self.root / 'log' / 'munged.log'}"])  # fmt: skip
        self._wait(self.socket.exists, "munged's socket")
        with _start_lock():  # no other worker picks the same ports before these daemons hold them
            self.conf.write_text(self._config(free_port(""), free_port("")))
            self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._daemon("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", "the node to be idle")

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        r, memory = self.root, 1024  # MB the node offers; memory is not a consumable (CR_CPU) anyway
        return f"""\
ClusterName=rnnctl-tests
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={self.user}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
SchedulerParameters=batch_sched_delay=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.CPUS} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL MaxTime=1 State=UP
"""

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = self._logs[name] = self.root / "log" / f"{name}.out"
        with log.open("ab") as out:
            self._procs[name] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,  # Ctrl-C at the terminal is for pytest, not for the daemons
            )  # fmt: skip

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            dead = [name for name, proc in self._procs.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited with code {self._procs[dead[0]].returncode}" if dead else "timed out"
                logs = self.log_tail(*dead)
                self.stop()
                raise SlurmUnavailable(f"waiting for {what}: {why}\n{logs}")
            time.sleep(0.2)

    def log_tail(self, *daemons: str, lines: int = 8) -> str:
        """The last lines of the daemons' logs (all by default), for a skip or a failure message."""
        out = []
        for name in daemons or self._logs:  # its log file, or before that is open what the daemon printed
            for log in (self.root / "log" / f"{name}.log", self._logs[name]):
                if log.is_file() and (text := log.read_text(errors="replace").strip()):
                    out.append(f"--- {log.name}\n" + "\n".join(text.splitlines()[-lines:]))
                    break
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, end the daemons, kill what is left of the jobs; idempotent."""
        atexit.unregister(self.stop)
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            self.run("scancel", f"--user={self.user}", check=False, timeout=30)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", "-o", "%i", check=False, timeout=30).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):  # slurmd first: it reports its jobs' ends to slurmctld
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        _kill_all(_processes_with_env(f"SLURM_CONF={self.conf}"))  # job steps and their tasks, orphans by design

    # -- using it ----------------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command (sbatch, squeue, ...) against this cluster; text output, and on `check` a failure
        that shows both streams."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit code {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's environment at the cluster, for libraries that call sbatch themselves (submitit)."""
        for var in list(os.environ):
            if var not in self.env:
                monkeypatch.delenv(var)
        monkeypatch.setenv("SLURM_CONF", str(self.conf))

    def sbatch(self, *args: str) -> int:
        """Submit a batch job; its id."""
        return int(self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0])

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job`'s KEY=VALUE pairs (Slurm keeps an ended job for MinJobAge, 300 s)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def wait_job(self, job_id: int | str, until: Callable[[dict[str, str]], bool], timeout: float = 120) -> dict:
        """Poll the job until `until(job)` holds; its fields then. Fails at the deadline with the job's fields."""
        deadline = time.monotonic() + timeout
        while not until(job := self.job(job_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: timed out after {timeout:.0f} s; {job}\n{self.log_tail()}")
            time.sleep(0.2)
        return job

    def wait_ended(self, job_id: int | str, timeout: float = 120) -> dict[str, str]:
        return self.wait_job(job_id, lambda job: job["JobState"] in ENDED, timeout)

    def release(self, job_id: int | str, timeout: float = 60) -> None:
        """Start a requeued job now: Slurm holds it back 2 minutes (its BeginTime). The job must be pending again
        first: an update while it is still completing is overwritten when the requeue lands."""
        self.wait_job(job_id, lambda job: job["JobState"] == "PENDING" and job["Reason"] == "BeginTime", timeout)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        self.wait_job(job_id, lambda job: job["Reason"] != "BeginTime", timeout)


# -- processes ---------------------------------------------------------------------------------------


class _start_lock:
    """An exclusive lock, across processes, on a file in the temporary folder."""

    def __enter__(self):
        self.file = open(Path(tempfile.gettempdir()) / "rnnctl-slurm-start.lock", "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.file.close()  # releases the lock


def _processes_with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry` (KEY=VALUE) exactly."""
    wanted, found = entry.encode(), []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if wanted in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                pass
    return found


def _kill_all(pids: list[int], timeout: float = 15) -> None:
    """SIGKILL each process and its whole session (a job step and the tasks it started); wait until gone."""
    sessions = set()
    for pid in pids:
        try:
            sessions.add(os.getsid(pid))
        except ProcessLookupError:
            pass
    sessions.discard(os.getsid(0))  # never pytest's own session
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getsid(int(proc.name)) in sessions:
                    pids.append(int(proc.name))
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: reap it
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# -- the pytest fixture ------------------------------------------------------------------------------

_cluster: SlurmCluster | None = None
_unavailable: str | None = None


def slurm_cluster_fixture():
    """A session fixture `slurm_cluster` for a test module (`slurm_cluster = slurm_cluster_fixture()`). It skips
    with the reason where Slurm cannot run; every module's copy shares this process's one cluster."""

    @pytest.fixture(scope="session", name="slurm_cluster")
    def fixture() -> Iterator[SlurmCluster]:
        global _cluster, _unavailable
        if _cluster is None and _unavailable is None:
            cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="rnnctl-slurm-")))
            try:
                cluster.start()
                _cluster = cluster
            except SlurmUnavailable as e:
                _unavailable = str(e)
                shutil.rmtree(cluster.root, ignore_errors=True)
        if _unavailable is not None:
            pytest.skip(f"no Slurm test cluster: {_unavailable}")
        yield _cluster
        _cluster.stop()  # the first copy's teardown at the session's end; the others find it stopped
        shutil.rmtree(_cluster.root, ignore_errors=True)

    return fixture

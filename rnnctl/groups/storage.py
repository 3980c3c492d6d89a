"""Where a group's trials live: an Optuna storage with heartbeats. A database URL (sqlite:///, postgresql://,
mysql://) or the path of a journal file (one file on a shared file system spreads a group over machines)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend

from rnnctl.errors import ConfigError, RunError, StorageError, first_line
from rnnctl.groups.folder import GroupFolder

HEARTBEAT_ENV = "RNNCTL_SEARCH_HEARTBEAT"  # seconds between a running trial's heartbeats (10; tests shorten it)
MAX_RETRIES = 3  # a trial whose worker died is queued again at most this often
_opened: dict[str, Any] = {}  # storages by URL, opened once per process (a database's schema is checked then)


def shown_url(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's logs (a failed trial's traceback: rnnctl reports it in one line) and experimental-feature
    warnings are not for rnnctl's users."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)  # ask() with one
        yield


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage behind `url`, with a heartbeat on every running trial: a trial whose worker died is failed
    by the next worker, and its values queued again."""
    interval = max(1, int(os.environ.get(HEARTBEAT_ENV, 10)))
    try:
        with quiet():
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            if "://" not in url:
                Path(url).parent.mkdir(parents=True, exist_ok=True)
                return Journal(JournalFileBackend(url), interval, retry)
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=interval, grace_period=3 * interval,
                heartbeat_stale_trial_callback=retry,
            )  # fmt: skip
    except ImportError as e:  # no driver: Optuna re-raises SQLAlchemy's ImportError without its name
        driver = " (pip install 'rnnctl[postgres]')" if url.startswith("postgres") else ""
        raise ConfigError(f"--storage {shown_url(url)}: the database driver is not installed{driver}: {e}") from None
    except Exception as e:  # sqlalchemy's and the drivers' errors: a server down, a bad URL, no permission
        first = first_line(e)
        raise StorageError(f"--storage {shown_url(url)}: cannot open it: {first[:300]}") from None


def storage(group: GroupFolder) -> optuna.storages.BaseStorage:
    url = group.storage_url()
    return _opened[url] if url in _opened else _opened.setdefault(url, open_storage(url))


def open_study(group: GroupFolder, sampler=None, pruner=None) -> optuna.Study:
    with quiet():
        try:
            return optuna.load_study(study_name=group.name, storage=storage(group), sampler=sampler, pruner=pruner)
        except KeyError:
            raise RunError(f"{group.kind} {group.name!r} is not in {shown_url(group.storage_url())}") from None


class Journal(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat of its RDB storage (the last beat: a system attribute)."""

    def __init__(self, backend, interval: int, callback) -> None:
        super().__init__(backend)
        self.interval, self.callback = interval, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "rnnctl_heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            beat = t.system_attrs.get("rnnctl_heartbeat")  # none yet: the worker died as the trial began
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None and now - beat > 3 * self.interval:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self):
        return self.callback

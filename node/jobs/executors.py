"""Where jobs run: an embedded local process pool, or Dask distributed workers.

Both take ``(analyzer name, AnalysisInput)`` and return a ``concurrent.futures.Future``
of a :class:`node.jobs.work.JobOutcome`.

* :class:`LocalExecutor` (``[jobs] executor = "local"``, the default): ``workers``
  processes on this machine (forkserver, so the node's threads are not forked). The
  outcome carries the outputs as Part 10 bytes; the runner stores them. The workers end
  with the node, even a SIGKILLed one (``PR_SET_PDEATHSIG`` and a watchdog thread).
* :class:`DaskExecutor` (``executor = "dask"``, ``scheduler = "tcp://host:8786"``): the
  job goes to a Dask worker, which fetches the inputs from this node by WADO-RS and
  stores its outputs back by STOW-RS (:mod:`node.jobs.remote`), so workers need no
  shared disk. The outcome carries the output UIDs only.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from analyzers.contract import AnalysisInput
from node.config import JobsSettings, LoggingSettings, Settings
from node.jobs.work import JobOutcome, execute_job

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "die_with_parent", "make_executor"]

log = logging.getLogger(__name__)


class Executor(Protocol):
    """What the job runner needs from an executor."""

    remote: bool

    @property
    def capacity(self) -> int:
        """How many jobs may run at once."""
        ...

    def submit(self, analyzer: str, job: AnalysisInput) -> concurrent.futures.Future[JobOutcome]: ...

    def close(self) -> None: ...


def _limit_threads() -> None:
    # Each worker runs one job; numeric libraries must not each start a thread per core.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux ``prctl``).

    Returns False where that is not available. Exits at once when the parent has already
    gone (the process was re-parented before the call took effect).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
    if done and os.getppid() != parent:
        os._exit(1)
    return done


def _start_forkserver() -> None:
    """Start the forkserver now, from the main thread, preloading :mod:`node.jobs.parent_death`.

    The kernel's parent-death signal follows the thread that forked a process, so only a
    forkserver forked by the main thread (which lives as long as the node) may carry it;
    from another thread, or when the forkserver already runs, nothing changes (the workers'
    watchdog still ends them).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import forkserver

    running = getattr(forkserver._forkserver, "_forkserver_pid", None)  # no public query
    if running is None:
        multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "node.jobs.parent_death"])
    forkserver.ensure_running()


def _watch_parent(node_pid: int, parent_pid: int, interval: float) -> None:
    """Exit this worker once the node or the process that forked it is gone (polls ``interval`` s)."""
    while True:
        if os.getppid() != parent_pid:  # re-parented: the forkserver (or the node) has died
            os._exit(1)
        try:
            os.kill(node_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # a process we may not signal now has that pid: not our node
            os._exit(1)
        time.sleep(interval)


def _init_worker(node_pid: int, logging_settings: LoggingSettings | None = None, watch_interval: float = 1.0) -> None:
    """Initializer of a local pool worker: one thread per library, the node's log, die with the node.

    A worker outlives a SIGKILLed node unless told otherwise: it waits for work on a pipe
    that other workers keep open, and holds the forkserver alive. The kernel kills it when
    its parent (the forkserver, itself killed with the node: :func:`_start_forkserver`)
    exits (``PR_SET_PDEATHSIG``), and a watchdog thread exits it within ``watch_interval``
    seconds of the node's or its parent's end where that is missing.
    """
    _limit_threads()
    parent = os.getppid()
    die_with_parent()
    threading.Thread(target=_watch_parent, args=(node_pid, parent, watch_interval),
                     name="pacsnode-parent-watchdog", daemon=True).start()
    if logging_settings is not None:
        from node.ops.logs import setup_logging

        setup_logging(logging_settings)


def _run_job(analyzer: str, job: AnalysisInput) -> JobOutcome:
    """:func:`execute_job` in a pool worker, its log lines tagged with the job's ids."""
    from node.ops.logs import log_context

    with log_context(job_id=job.job_id, series_uid=job.series.series_instance_uid,
                     study_uid=job.series.study_instance_uid):
        return execute_job(analyzer, job)


def _warm(analyzers: tuple[str, ...]) -> None:
    """Import the analyzers (and what they import) so the first job does not pay for it."""
    from analyzers.registry import load_analyzer

    for name in analyzers:
        try:
            load_analyzer(name)
        except Exception:  # warming is best effort; the job itself reports real errors
            log.debug("warming analyzer %s failed", name, exc_info=True)
    time.sleep(0.2)  # hold this worker so the next warm-up task lands on another one


class LocalExecutor:
    """A process pool of ``workers`` processes.

    A worker that dies (out of memory, a crash in native code) breaks the pool; the
    job's future then fails with ``BrokenProcessPool``, the job is retried, and the
    pool is rebuilt for the next submission.
    """

    remote = False

    def __init__(self, workers: int, warm_analyzers: Sequence[str] = (),
                 logging_settings: LoggingSettings | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.warm_analyzers = tuple(warm_analyzers)
        self.logging_settings = logging_settings
        if self.warm_analyzers:
            # Without routed analyzers no process is started until a job comes (e.g. a
            # reprocess): a node that only stores keeps no idle pool in memory.
            _start_forkserver()
        self._lock = threading.Lock()
        # Made on the first job or warm-up: the pool's queues start multiprocessing's
        # resource tracker, one more process.
        self._pool_instance: concurrent.futures.ProcessPoolExecutor | None = None

    @property
    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool_instance is None:
            self._pool_instance = self._new_pool()
        return self._pool_instance

    @_pool.setter
    def _pool(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        self._pool_instance = pool

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init_worker, initargs=(os.getpid(), self.logging_settings))

    @property
    def capacity(self) -> int:
        return self.workers

    def submit(self, analyzer: str, job: AnalysisInput) -> concurrent.futures.Future[JobOutcome]:
        with self._lock:
            try:
                return self._pool.submit(_run_job, analyzer, job)
            except concurrent.futures.process.BrokenProcessPool:
                log.warning("the local worker pool broke (a worker died); starting a new one")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                return self._pool.submit(_run_job, analyzer, job)

    def warm_up(self) -> list[concurrent.futures.Future[None]]:
        """Start the worker processes now and import the analyzers in each (in the background)."""
        with self._lock:
            return [self._pool.submit(_warm, self.warm_analyzers) for _ in range(self.workers)]

    def close(self) -> None:
        """Stop at once: a job still running is cut off and re-queued at the next start."""
        with self._lock:
            if self._pool_instance is None:
                return
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()


class DaskExecutor:
    """Jobs on a Dask distributed cluster; inputs by WADO-RS, outputs by STOW-RS.

    Parameters
    ----------
    scheduler:
        ``tcp://host:8786`` of the Dask scheduler (or a ``distributed.Client``-compatible
        address object).
    node_url:
        The DICOMweb base URL of this node as the workers reach it.
    token:
        A bearer token with ``read-write`` scope, or ``None`` when the node has no tokens.
    capacity:
        The most jobs in flight at once.
    """

    remote = True

    def __init__(self, scheduler: Any, node_url: str, token: str | None, capacity: int) -> None:
        from distributed import Client

        self.node_url = node_url.rstrip("/")
        self.token = token
        self._capacity = capacity
        self.client = Client(scheduler, set_as_default=False, timeout=30)

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, analyzer: str, job: AnalysisInput) -> concurrent.futures.Future[JobOutcome]:
        from node.jobs.remote import run_remote_job

        result: concurrent.futures.Future[JobOutcome] = concurrent.futures.Future()
        remote = self.client.submit(run_remote_job, analyzer, job, self.node_url, self.token,
                                    key=f"pacsnode-job-{job.job_id}-{os.urandom(4).hex()}", pure=False)

        def done(future: Any) -> None:
            try:
                result.set_result(future.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the runner as the job's error
                result.set_exception(exc)

        remote.add_done_callback(done)
        return result

    def close(self) -> None:
        self.client.close()


def node_url_of(settings: Settings) -> str:
    """The DICOMweb base URL workers use to reach this node (``[jobs] node_url`` or ``[http]``)."""
    if settings.jobs.node_url:
        return settings.jobs.node_url.rstrip("/")
    scheme = "https" if settings.http.tls else "http"
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"{scheme}://{host}:{settings.http.port}{settings.http.base_path.rstrip('/')}"


def _worker_token(settings: Settings) -> str | None:
    if settings.jobs.worker_token:
        return settings.jobs.worker_token
    return next((t.token for t in settings.http.tokens if t.scope == "read-write"), None)


def make_executor(settings: Settings, analyzers: Sequence[str] = ()) -> Executor:
    """The executor ``[jobs]`` asks for; a local pool starts its workers and imports ``analyzers``."""
    jobs: JobsSettings = settings.jobs
    if jobs.executor == "dask":
        return DaskExecutor(jobs.scheduler, node_url_of(settings), _worker_token(settings), jobs.workers)
    executor = LocalExecutor(jobs.workers, analyzers, settings.logging)
    if analyzers:
        executor.warm_up()
    return executor


def scratch_for(root: Path, job_id: str) -> Path:
    """A fresh scratch folder for one job."""
    folder = root / job_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder

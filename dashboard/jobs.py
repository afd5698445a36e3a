"""A process-wide FIFO queue with one worker thread: GPU work runs one job at a time, in order.

Jobs run independently of whoever submitted them (a closed browser tab does not stop one). While a
job waits, ``estimate`` gives its place and the expected wait from the measured seconds per sequence
of finished jobs (or a stated rough default before any has finished).

A job submitted with a ``key`` while a job with the same key is queued or running is not queued again:
``submit`` returns the existing job. The job's ``owner`` may ``cancel`` it: a queued job leaves the
queue at once; a running one stops cooperatively, when its work next reports progress (the progress
callback raises ``Cancelled``), which core.embed.passes does after every batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

DEFAULT_SECONDS_PER_SEQUENCE = 0.5  # rough guess for a mid-size model before anything was measured
MEASURED_JOBS = 20  # the estimate averages this many most recent finished jobs
KEEP_FINISHED = 500  # finished jobs remembered for status look-ups (their runs stay on disk)

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total), as core.embed.passes reports it."""

ACTIVE = ("queued", "running")


class Cancelled(Exception):
    """Raised by a cancelled job's progress callback, so its work stops at the next progress report."""


class CancelOutcome(Enum):
    """What ``JobQueue.cancel`` did."""

    REMOVED = "removed from the queue"  # it had not started; it never will
    STOPPING = "stops at its next progress report"  # it is running
    NOT_OWNER = "only the session that submitted it may cancel it"
    NOT_ACTIVE = "it is not queued or running"


@dataclass
class Job:
    """One unit of GPU work. ``work(progress)`` returns the job's result."""

    id: str
    n_sequences: int
    work: Callable[[Progress], Any] | None  # dropped once run, so a remembered job holds no input
    key: str | None = None  # identical work, identical key (None: never shared)
    owner: str | None = None  # who may cancel it (None: nobody)
    state: str = "queued"  # queued, running, done, failed, cancelled
    cancel_requested: bool = False
    result: Any = None
    error: BaseException | None = None
    progress: tuple[str, int, int] | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def message(self) -> str | None:
        """The failure as one line, or None."""
        return None if self.error is None else str(self.error) or type(self.error).__name__


@dataclass(frozen=True)
class Estimate:
    """Where a job stands: ``place`` 0 means running now, 1 first in line, …"""

    place: int
    jobs_ahead: int
    wait_seconds: float  # until it starts
    total_seconds: float  # until it finishes
    seconds_per_sequence: float
    measured: bool  # False: seconds_per_sequence is the rough default


class JobQueue:
    """FIFO jobs on one daemon worker thread, started on the first submit."""

    def __init__(self, default_seconds_per_sequence: float = DEFAULT_SECONDS_PER_SEQUENCE):
        self.default_seconds_per_sequence = default_seconds_per_sequence
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._timings: deque[tuple[float, int]] = deque(maxlen=MEASURED_JOBS)  # (seconds, sequences)
        self._lock = threading.Condition()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------ submitting

    def submit(self, job_id: str, n_sequences: int, work: Callable[[Progress], Any], key: str | None = None,
               owner: str | None = None) -> Job:
        """Queue ``work`` under ``job_id`` (unique) and return its Job at once; or, when a job with the same
        ``key`` is queued or running, return that job and queue nothing."""
        job = Job(job_id, n_sequences, work, key, owner)
        with self._lock:
            existing = self._active_with(key)
            if existing is not None:
                return existing
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} already submitted")
            self._jobs[job_id] = job
            self._waiting.append(job)
            self._start_worker()
            self._lock.notify()
        return job

    def call(self, job_id: str, n_sequences: int, work: Callable[[Progress], Any], timeout: float | None = None) -> Any:
        """Queue ``work``, wait for its turn and its end, and return its result (re-raising its error)."""
        job = self.submit(job_id, n_sequences, work)
        if not job.finished.wait(timeout):
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        if job.error is not None:
            raise job.error
        return job.result

    def _active_with(self, key: str | None) -> Job | None:
        """The queued or running job with ``key`` (call with the lock held)."""
        if key is None:
            return None
        return next((job for job in self._jobs.values()
                     if job.key == key and job.state in ACTIVE and not job.cancel_requested), None)

    def active_with(self, key: str) -> Job | None:
        """The queued or running job submitted with ``key`` (and not being cancelled), if any."""
        with self._lock:
            return self._active_with(key)

    def cancel(self, job_id: str, owner: str) -> CancelOutcome:
        """Cancel ``job_id`` for its ``owner``: a queued job is removed at once (state 'cancelled'); a
        running one is asked to stop and ends 'cancelled' at its next progress report."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state not in ACTIVE:
                return CancelOutcome.NOT_ACTIVE
            if job.owner is None or job.owner != owner:
                return CancelOutcome.NOT_OWNER
            job.cancel_requested = True
            if job.state == "running":
                return CancelOutcome.STOPPING
            self._waiting.remove(job)
            job.state, job.error, job.work = "cancelled", Cancelled("cancelled before it started"), None
            job.finished_at = time.monotonic()
            self._forget_old()
        job.finished.set()
        return CancelOutcome.REMOVED

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work_forever, name="gpu-job-worker", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------ the worker

    def _work_forever(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._lock.wait()
                job = self._waiting.popleft()
                self._running = job
                job.state, job.started_at = "running", time.monotonic()
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            job.progress = (stage, done, total)
            if job.cancel_requested:
                raise Cancelled(f"cancelled during {stage} ({done}/{total} sequences)")

        try:
            job.result = job.work(progress)
            state = "done"
        except BaseException as error:  # noqa: BLE001 - a job's failure is recorded, never kills the worker
            job.error, state = error, "cancelled" if isinstance(error, Cancelled) else "failed"
        job.work = None
        with self._lock:
            job.finished_at = time.monotonic()
            job.state = state
            if state == "done" and job.n_sequences > 0:
                self._timings.append((job.finished_at - job.started_at, job.n_sequences))
            self._running = None
            self._forget_old()
        job.finished.set()

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished_at is not None]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]

    # ------------------------------------------------------------ looking

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until ``job_id`` has finished (or ``timeout`` passed); returns the Job."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        job.finished.wait(timeout)
        return job

    def seconds_per_sequence(self) -> tuple[float, bool]:
        """(seconds per sequence over recent finished jobs, measured?) or (the default, False)."""
        with self._lock:
            seconds = sum(s for s, _ in self._timings)
            sequences = sum(n for _, n in self._timings)
        if sequences == 0:
            return self.default_seconds_per_sequence, False
        return seconds / sequences, True

    def estimate(self, job_id: str) -> Estimate | None:
        """Place and expected wait of a queued or running job; None once it finished (or if unknown)."""
        per_sequence, measured = self.seconds_per_sequence()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished_at is not None:
                return None
            running = self._running
            now = time.monotonic()
            left_running = 0.0
            if running is not None:
                expected = running.n_sequences * per_sequence
                left_running = max(expected - (now - (running.started_at or now)), 0.0)
            if job is running:
                return Estimate(0, 0, 0.0, left_running, per_sequence, measured)
            ahead = list(self._waiting)[: list(self._waiting).index(job)]
        wait = left_running + sum(other.n_sequences for other in ahead) * per_sequence
        return Estimate(len(ahead) + 1, len(ahead) + (running is not None), wait,
                        wait + job.n_sequences * per_sequence, per_sequence, measured)

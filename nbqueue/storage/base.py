"""The storage contract every backend honours, and the task record it stores.

The record is the single source of truth for a task: its state, progress,
output, result and error. Backends only move records along the state machine
in ``nbqueue.result.TRANSITIONS``; an illegal move raises ``InvalidStateError``.

Contract (checked by ``tests/test_storage_contract.py`` for every backend):

- ``add`` is atomic: the record and its queue entry appear together or not at all.
- ``claim`` is atomic: two workers (threads, processes, machines) never get the
  same task. Highest ``priority`` first, FIFO within a priority.
- A claimed task carries a lease (``renew`` extends it). ``requeue_expired``
  puts a task whose lease ran out back to ``pending`` (or fails it with
  ``WorkerLost`` after ``max_recoveries``): at-least-once, never lost.
- ``scheduled`` and ``retrying`` tasks wait in an eta set; ``promote_due``
  moves those that are due to ``pending``.
- Reads are never destructive; nothing is evicted except by ``purge`` and
  ``purge_expired``.
"""

import collections
import dataclasses
import threading
import time
from typing import Any, Optional

from ..exceptions import InvalidStateError, TaskNotFound, WorkerLost
from ..result import (CANCELLED, FAILED, FINISHED, PENDING, RETRYING, RUNNING, SCHEDULED,
                      SUCCEEDED, TRANSITIONS, WAITING)
from ..serializer import describe_exception


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """Everything stored about one task. Times are ``time.time()`` floats."""

    id: str
    name: str
    status: str
    priority: int = 0
    created_at: float = 0.0
    eta: Optional[float] = None          # when a scheduled/retrying task becomes pending
    expires_at: Optional[float] = None   # not started by then: cancelled; finished: purged
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int = 0                    # runs started
    retries: int = 0                     # retries allowed
    retries_used: int = 0
    recoveries: int = 0                  # runs lost to a dead worker
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    timeout: Optional[float] = None
    payload: Any = None                  # the call: live objects (memory) or bytes (disk)
    prev: Any = None                     # pipeline: previous step's value (encoded like result)
    has_prev: bool = False
    next_id: Optional[str] = None        # pipeline: the step that runs after this one
    worker: Optional[str] = None         # who runs it now (leases live in the store's lease map)
    cancel_requested: bool = False
    progress_done: float = 0
    progress_total: Optional[float] = None
    progress_message: Optional[str] = None
    output: str = ""
    result: Any = None                   # encoded value (memory: the object itself)
    error: Optional[dict] = None         # {'type', 'message', 'traceback', 'exc'}
    message: Optional[str] = None        # why it was cancelled or lost, for people

    def move(self, status):
        """Change state, enforcing the state machine. Raises InvalidStateError."""
        if status not in TRANSITIONS[self.status]:
            raise InvalidStateError(
                f"task {self.id} ({self.name}) cannot go from {self.status!r} to {status!r}")
        self.status = status

    def copy(self):
        return dataclasses.replace(self)


@dataclasses.dataclass(slots=True)
class JobRecord:
    """A periodic job: its schedule, the call each run makes, and its counters."""

    name: str
    schedule: str                        # cron line, or "every 30s"
    every: Optional[float] = None        # seconds, for interval jobs
    timezone: Optional[str] = None       # IANA name; None: local time
    overlap: bool = False
    catch_up: bool = False
    paused: bool = False
    next_run: Optional[float] = None
    last_run_id: Optional[str] = None
    runs: int = 0
    skipped: int = 0                     # ticks skipped: the previous run was still going
    missed: int = 0                      # ticks no scheduler was there for (not caught up)
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    timeout: Optional[float] = None
    priority: int = 0
    payload: Any = None
    created_at: float = 0.0


class Storage:
    """The task logic of every backend, written once on a few primitives.

    A backend implements the primitives (``_txn`` and the ``_load``/``_save``
    family below); everything between ``_txn()`` enter and exit is atomic:
    a thread lock for memory, a thread lock plus an SQLite ``BEGIN IMMEDIATE``
    for disk. ``shared`` is True when other processes may change the store
    behind our back (waiters then also poll it with backoff); ``serializes``
    is True when payloads, values and exceptions are stored as bytes.
    """

    shared = False
    serializes = False
    #: how long a waiter on a shared store sleeps at most between polls
    max_poll = 0.5

    def __init__(self):
        self._lock = threading.Lock()            # guards the wake-up conditions only
        self._work_ready = threading.Condition(self._lock)
        self._task_done = threading.Condition(self._lock)
        self._eta_changed = threading.Condition(self._lock)
        self._work_waiters = 0
        self._waited = collections.Counter()     # task id -> threads waiting for it to finish
        self._work_seq = 0
        self._done_seq = 0
        self._eta_seq = 0

    # ---- primitives (called inside ``_txn``) ------------------------
    def _txn(self):
        raise NotImplementedError

    def _load(self, task_id):  # -> TaskRecord | None
        raise NotImplementedError

    def _save(self, rec):
        raise NotImplementedError

    def _remove(self, task_id):
        raise NotImplementedError

    def _push(self, rec):  # append to the FIFO of rec.priority
        raise NotImplementedError

    def _pop(self):  # -> task id from the highest-priority non-empty FIFO, or None
        raise NotImplementedError

    def _maybe_pending(self):  # -> False only if no task is queued (read outside a txn)
        return True

    def _etas(self):  # -> {task_id: eta}; write back with _put_etas
        raise NotImplementedError

    def _put_etas(self, etas):
        raise NotImplementedError

    def _leases(self):  # -> {task_id: (worker, until)}; write back with _put_leases
        raise NotImplementedError

    def _put_leases(self, leases):
        raise NotImplementedError

    def _ids(self):  # every task id
        raise NotImplementedError

    def _expiries(self):  # -> {task_id: expires_at} of records that have one; write back with _put_expiries
        raise NotImplementedError

    def _put_expiries(self, expiries):
        raise NotImplementedError

    def _jobs(self):  # -> {name: JobRecord}; write back with _put_jobs
        raise NotImplementedError

    def _put_jobs(self, jobs):
        raise NotImplementedError

    def _lock_state(self):  # -> (holder, until) of the scheduler lock, or None
        raise NotImplementedError

    def _put_lock_state(self, state):
        raise NotImplementedError

    def get(self, task_id) -> Optional[TaskRecord]:
        """The record, or None. Never destructive."""
        raise NotImplementedError

    # ---- the contract -------------------------------------------------
    def add(self, records):
        """Store new records atomically: pending ones are queued, scheduled ones wait
        for their eta (or, with no eta, for the pipeline step before them)."""
        pending = 0
        with self._txn():
            etas = expiries = None
            for rec in records:
                check_new(rec)
                self._save(rec)
                if rec.expires_at is not None:
                    expiries = self._expiries() if expiries is None else expiries
                    expiries[rec.id] = rec.expires_at
                if rec.status == PENDING:
                    self._push(rec)
                    pending += 1
                elif rec.eta is not None:
                    etas = self._etas() if etas is None else etas
                    etas[rec.id] = rec.eta
            if etas is not None:
                self._put_etas(etas)
            if expiries is not None:
                self._put_expiries(expiries)
        if pending:
            self.notify_work(pending)
        if etas is not None:
            self.notify_eta()

    def claim(self, worker, lease, now=None) -> Optional[TaskRecord]:
        """Atomically take the next pending task, highest priority first, FIFO within one.

        It becomes ``running`` with ``attempts + 1``, held by ``worker`` for
        ``lease`` seconds. A task past its ``expires_at`` is cancelled instead
        of run. Returns None when nothing is pending.
        """
        now = time.time() if now is None else now
        if not self._maybe_pending():
            return None  # an idle look needs no write transaction
        with self._txn():
            leases = self._leases()
            rec, ended = self._claim_locked(worker, lease, now, leases)
            if rec is not None:
                self._put_leases(leases)
        if ended:
            self.notify_done()
        return rec

    def _claim_locked(self, worker, lease, now, leases):
        # -> (record or None, whether expired tasks were cancelled); adds to ``leases``
        ended = False
        while True:
            task_id = self._pop()
            if task_id is None:
                return None, ended
            rec = self._load(task_id)
            if rec is None or rec.status != PENDING:
                continue  # cancelled (or purged) while queued
            if rec.expires_at is not None and rec.expires_at <= now:
                self._end(rec, CANCELLED, now, message="expired before it started")
                ended = True
                continue
            rec.move(RUNNING)
            rec.attempts += 1
            rec.started_at = now
            rec.worker = worker
            self._save(rec)
            leases[task_id] = (worker, now + lease)
            return rec, ended

    def renew(self, task_ids, worker, lease, now=None):
        """Extend the leases ``worker`` holds on ``task_ids``.

        Returns ``{task_id: cancel_requested}`` for the tasks it still holds.
        """
        now = time.time() if now is None else now
        held = {}
        with self._txn():
            leases = self._leases()
            for task_id in task_ids:
                if leases.get(task_id, (None,))[0] == worker:
                    leases[task_id] = (worker, now + lease)
                    rec = self._load(task_id)
                    held[task_id] = bool(rec and rec.cancel_requested)
            self._put_leases(leases)
        return held

    def requeue_expired(self, now=None, max_recoveries=3):
        """Put running tasks whose lease ran out back to pending (``recoveries + 1``), or
        fail them with ``WorkerLost`` once they were lost ``max_recoveries`` times.
        Returns the ids handled."""
        now = time.time() if now is None else now
        handled = []
        if not any(until < now for _, until in self._leases().values()):
            return handled  # the common case needs no transaction
        with self._txn():
            leases = self._leases()
            expired = [tid for tid, (_, until) in leases.items() if until < now]
            for task_id in expired:
                del leases[task_id]
                rec = self._load(task_id)
                if rec is None or rec.status != RUNNING:
                    continue
                handled.append(task_id)
                if rec.recoveries >= max_recoveries:
                    lost = WorkerLost(f"the worker running task {task_id} ({rec.name}) died "
                                      f"{rec.recoveries + 1} times; giving up")
                    self._end(rec, FAILED, now, message=str(lost),
                              error=describe_exception(lost, self.serializes))
                else:
                    rec.recoveries += 1
                    rec.worker = None
                    rec.move(PENDING)
                    self._save(rec)
                    self._push(rec)
            self._put_leases(leases)
        if handled:
            self.notify_work(len(handled))
            self.notify_done()
        return handled

    def promote_due(self, now=None):
        """Move scheduled/retrying tasks whose eta has come to pending. Returns how many."""
        now = time.time() if now is None else now
        etas = self._etas()
        if not any(eta <= now for eta in etas.values()):
            return 0  # the common case needs no transaction
        moved = 0
        with self._txn():
            etas = self._etas()
            for task_id in [tid for tid, eta in etas.items() if eta <= now]:
                del etas[task_id]
                rec = self._load(task_id)
                if rec is not None and rec.status in WAITING:
                    rec.move(PENDING)
                    self._save(rec)
                    self._push(rec)
                    moved += 1
            self._put_etas(etas)
        if moved:
            self.notify_work(moved)
        return moved

    def next_eta(self) -> Optional[float]:
        """The earliest eta of a waiting task, or None."""
        etas = self._etas()
        return min(etas.values()) if etas else None

    def finish(self, task_id, worker, status, now=None, **fields) -> bool:
        """End the run ``worker`` holds: move it to ``status`` and set ``fields``.

        ``status`` is succeeded, failed, cancelled, retrying (with ``eta=``) or
        pending. On success the next pipeline step becomes pending with this
        value as ``prev``; on failure or cancel the later steps are cancelled.
        Returns False, changing nothing, if the worker no longer holds the task
        (its lease expired and it was requeued).
        """
        return self.finish_and_claim(task_id, worker, status, None, now, **fields)[0]

    def finish_and_claim(self, task_id, worker, status, lease, now=None, **fields):
        """``finish`` and then, in the same transaction, ``claim`` the next task for
        ``worker`` with ``lease`` (None: claim nothing). One transaction instead
        of two per task is what keeps a busy disk store fast.

        Returns ``(finished, next record or None)``; atomic as a whole.
        """
        if status not in TRANSITIONS[RUNNING]:  # refuse before touching anything
            raise InvalidStateError(f"a run cannot end in {status!r}")
        now = time.time() if now is None else now
        released = 0
        finished = False
        nxt = None
        ended = False
        with self._txn():
            leases = self._leases()
            rec = self._load(task_id)
            if rec is not None and rec.status == RUNNING and rec.worker == worker:
                finished = True
                leases.pop(task_id, None)
                if status in FINISHED:
                    released = self._end(rec, status, now, **fields)
                else:
                    for key, value in fields.items():
                        setattr(rec, key, value)
                    rec.move(status)
                    rec.worker = None
                    self._save(rec)
                    if status == PENDING:
                        self._push(rec)
                        released = 1
                    elif status == RETRYING:
                        etas = self._etas()
                        etas[task_id] = rec.eta
                        self._put_etas(etas)
            if lease is not None:
                nxt, ended = self._claim_locked(worker, lease, now, leases)
            if finished or nxt is not None:
                self._put_leases(leases)
        if ended:
            self.notify_done()
        elif finished and status in FINISHED:
            self.notify_done(None if rec.next_id else task_id)  # a pipeline may end more
        if finished and status == RETRYING:
            self.notify_eta()
        if released:
            self.notify_work(released)
        return finished, nxt

    def update(self, task_id, **fields) -> Optional[TaskRecord]:
        """Set fields (progress, output) of a record; returns the record, or None if gone."""
        with self._txn():
            rec = self._load(task_id)
            if rec is None:
                return None
            for key, value in fields.items():
                setattr(rec, key, value)
            self._save(rec)
        return rec

    def cancel(self, task_id, message="cancelled", now=None) -> bool:
        """Cancel a waiting task at once, or flag a running one to stop.

        Returns False if the task had already finished. Raises TaskNotFound.
        Cancelling a pipeline step cancels the steps after it.
        """
        now = time.time() if now is None else now
        with self._txn():
            rec = self._load(task_id)
            if rec is None:
                raise TaskNotFound(f"no task {task_id!r} in this store (never submitted, or purged)")
            if rec.status in FINISHED:
                return False
            if rec.status == RUNNING:
                rec.cancel_requested = True
                self._save(rec)
                return True
            if rec.status in WAITING:
                etas = self._etas()
                if etas.pop(task_id, None) is not None:
                    self._put_etas(etas)
            self._end(rec, CANCELLED, now, message=message)
        self.notify_done(None if rec.next_id else task_id)
        return True

    def list(self, status=None, name=None, limit=None):
        """Records oldest first, filtered by status (a state or a collection of
        them) and name; ``limit`` keeps the newest ``limit``."""
        if isinstance(status, str):
            status = (status,)
        recs = []
        for task_id in list(self._ids()):
            rec = self.get(task_id)
            if rec is None or (status and rec.status not in status) or (name and rec.name != name):
                continue
            recs.append(rec)
        recs.sort(key=lambda r: r.created_at)
        return recs[-limit:] if limit else recs

    def delete(self, task_ids) -> int:
        """Remove finished records (others are left alone). Returns how many were removed.
        Ids of records already gone are dropped from the expiry index too."""
        removed = 0
        with self._txn():
            expiries = None
            for task_id in task_ids:
                rec = self._load(task_id)
                if rec is not None and rec.status not in FINISHED:
                    continue
                if rec is not None:
                    self._remove(task_id)
                    removed += 1
                if rec is None or rec.expires_at is not None:
                    expiries = self._expiries() if expiries is None else expiries
                    expiries.pop(task_id, None)
            if expiries is not None:
                self._put_expiries(expiries)
        return removed

    def close(self):
        pass

    # ---- periodic jobs and the scheduler lock ---------------------------
    def jobs(self):
        """{name: JobRecord} of every periodic job in the store (a snapshot)."""
        return dict(self._jobs())

    def get_job(self, name) -> Optional[JobRecord]:
        return self._jobs().get(name)

    def put_job(self, job):
        """Define a job, replacing one of the same name (a re-run cell) atomically.

        The old job's counters, last run and paused state are kept; so is its
        next run when the schedule is unchanged. Returns the stored JobRecord.
        """
        with self._txn():
            jobs = self._jobs()
            old = jobs.get(job.name)
            if old is not None:
                job.runs, job.skipped, job.missed = old.runs, old.skipped, old.missed
                job.last_run_id, job.paused, job.created_at = old.last_run_id, old.paused, old.created_at
                if (old.schedule, old.every, old.timezone) == (job.schedule, job.every, job.timezone) \
                        and old.next_run is not None:
                    job.next_run = old.next_run
            jobs[job.name] = job
            self._put_jobs(jobs)
        self.notify_eta()
        return job

    def update_job(self, name, **fields) -> Optional[JobRecord]:
        """Set fields of a job (pause, resume, next_run); returns it, or None if gone."""
        with self._txn():
            jobs = self._jobs()
            job = jobs.get(name)
            if job is None:
                return None
            for key, value in fields.items():
                setattr(job, key, value)
            self._put_jobs(jobs)
        self.notify_eta()
        return job

    def remove_job(self, name) -> bool:
        """Delete a job (its past runs stay). Returns False if there was none."""
        with self._txn():
            jobs = self._jobs()
            if jobs.pop(name, None) is None:
                return False
            self._put_jobs(jobs)
        self.notify_eta()
        return True

    def fire_job(self, name, due, next_run, run=None, **increments) -> bool:
        """Handle the tick ``due`` of a job exactly once, atomically: add the ``run``
        record (if any), move ``next_run`` on and add ``increments`` to counters.

        Returns False, changing nothing, if the job's next run is no longer
        ``due`` (another scheduler handled it). ``due=None`` adds a run now
        (``run_now``) without touching the schedule.
        """
        with self._txn():
            jobs = self._jobs()
            job = jobs.get(name)
            if job is None or (due is not None and job.next_run != due):
                return False
            if due is not None:
                job.next_run = next_run
            for key, n in increments.items():
                setattr(job, key, getattr(job, key) + n)
            if run is not None:
                check_new(run)
                self._save(run)
                self._push(run)
                job.last_run_id = run.id
            self._put_jobs(jobs)
        if run is not None:
            self.notify_work()
        return True

    def hold_lock(self, holder, ttl, now=None) -> bool:
        """Take or renew the store's scheduler lock for ``ttl`` seconds. True if
        ``holder`` has it: the lock was free, expired, or already its own."""
        now = time.time() if now is None else now
        with self._txn():
            state = self._lock_state()
            if state is not None and state[0] != holder and state[1] > now:
                return False
            self._put_lock_state((holder, now + ttl))
        return True

    def release_lock(self, holder):
        with self._txn():
            state = self._lock_state()
            if state is not None and state[0] == holder:
                self._put_lock_state(None)

    # ---- helpers -------------------------------------------------------
    def _end(self, rec, status, now, **fields):
        """Finish ``rec`` (inside a txn) and deal with its pipeline successor.

        Returns 1 if the next step became pending, else 0.
        """
        for key, value in fields.items():
            setattr(rec, key, value)
        rec.move(status)
        rec.finished_at = now
        rec.worker = None
        self._save(rec)
        next_id = rec.next_id
        if status == SUCCEEDED:
            child = self._load(next_id) if next_id else None
            if child is not None and child.status == SCHEDULED:
                child.prev, child.has_prev = rec.result, True
                child.move(PENDING)
                self._save(child)
                self._push(child)
                return 1
            return 0
        while next_id:  # a failed or cancelled step cancels every later step
            child = self._load(next_id)
            if child is None or child.status in FINISHED:
                break
            child.move(CANCELLED)
            child.finished_at = now
            child.message = f"an earlier pipeline step ({rec.name} {rec.id}) {status}"
            self._save(child)
            next_id = child.next_id
        return 0

    def purge(self, older_than=None, statuses=FINISHED, now=None):
        """Delete finished records (those finished before ``now - older_than`` seconds)."""
        now = time.time() if now is None else now
        doomed = [r.id for r in self.list(status=statuses)
                  if r.status in FINISHED and (older_than is None or
                                               (r.finished_at or 0) <= now - older_than)]
        return self.delete(doomed)

    def purge_expired(self, now=None):
        """Delete finished records whose ``expires_at`` has passed (one not finished yet
        goes once it is). Cheap when none is due: it reads one small index, never the records."""
        now = time.time() if now is None else now
        due = [tid for tid, at in self._expiries().items() if at <= now]
        return self.delete(due) if due else 0

    # Wake-ups use sequence numbers so a notify between a waiter's last look
    # and its wait is never lost: the waiter only sleeps if nothing changed.
    def notify_work(self, n=1):
        with self._lock:
            self._work_seq += 1
            if self._work_waiters:  # Condition.notify costs a few us even with nobody waiting
                self._work_ready.notify(n)

    def notify_done(self, task_id=None):
        """Wake waiters on ``task_id`` (None: on any task) because it finished."""
        with self._lock:
            self._done_seq += 1
            if self._waited and (task_id is None or task_id in self._waited):
                self._task_done.notify_all()

    def notify_eta(self):
        with self._lock:
            self._eta_seq += 1
            self._eta_changed.notify_all()

    def wait_for_eta(self, seen_seq, timeout):
        """Sleep until an eta may have changed (``notify_eta``) or ``timeout`` passes."""
        with self._lock:
            if self._eta_seq == seen_seq:
                self._eta_changed.wait(timeout)

    def wait_for_work(self, seen_seq, timeout):
        """Sleep until work may be ready (in-process notify) or ``timeout`` passes.

        ``seen_seq`` is ``self._work_seq`` read before the caller last looked
        for work; if it has moved since, return at once.
        """
        with self._lock:
            if self._work_seq == seen_seq:
                self._work_waiters += 1
                try:
                    self._work_ready.wait(timeout)
                finally:
                    self._work_waiters -= 1

    def wait_done(self, task_id, timeout=None) -> bool:
        """Block until the task has finished; False on timeout. Raises TaskNotFound."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = 0.001
        while True:
            seq = self._done_seq
            rec = self.get(task_id)
            if rec is None:
                raise TaskNotFound(f"no task {task_id!r} in this store (never submitted, or purged)")
            if rec.status in FINISHED:
                return True
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
            if self.shared:  # another process may finish it: poll with backoff
                wait = poll if wait is None else min(wait, poll)
                poll = min(poll * 2, self.max_poll)
            with self._lock:
                if self._done_seq != seq:
                    continue
                self._waited[task_id] += 1
                try:
                    self._task_done.wait(wait)
                finally:
                    self._waited[task_id] -= 1
                    if not self._waited[task_id]:
                        del self._waited[task_id]


def check_new(rec):
    if rec.status not in (PENDING, SCHEDULED):
        raise InvalidStateError(f"a new task must be pending or scheduled, not {rec.status!r}")

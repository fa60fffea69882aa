"""The storage contract: the operations every backend implements natively.

Each operation is atomic as a whole (memory: one lock; SQLite: one
``BEGIN IMMEDIATE`` transaction; Redis: one Lua script) and costs O(log N) or
better in the number of records and of waiting tasks: every backend keeps its
own indexes (heaps, sorted lists, SQL indexes, sorted sets). State changes go
through ``TaskRecord``'s methods; ``update`` changes progress and output only.
``tests/test_storage_contract.py`` holds every backend to this.

Reads are never destructive and return copies: changing a returned record
changes nothing in the store. Records leave the store only through ``purge``,
``retain`` (the queue's ``keep``, ``expires``, a job's ``keep``).

What is not storage, the in-process wake-ups (a submit wakes an idle worker at
once, a finish wakes ``Result.get``), lives in ``Signals`` below, shared by all.
"""

import collections
import dataclasses
import itertools
import threading
import time

from ..exceptions import InvalidStateError, TaskNotFound
from ..records import BULKY, OUTCOME_FIELDS, PROGRESS_FIELDS, JobRecord
from ..states import FINISHED, RETRYING, RUNNING, TRANSITIONS

JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))


def not_found(task_id):
    return TaskNotFound(
        f"no task {task_id!r} in this store: never submitted, purged, or dropped by retention "
        "(finished records are kept for Queue(keep=...), default 7 days; keep=None keeps them)")


def check_load(load):
    """Raise ValueError unless ``load`` names only bulky parts (``records.BULKY``)."""
    wrong = set(load) - BULKY
    if wrong:
        raise ValueError(f"load={sorted(wrong)}: only {', '.join(sorted(BULKY))} can be loaded")


def check_run_end(status, fields):
    """Raise before anything is touched unless a run can end in ``status`` setting
    ``fields``: InvalidStateError for the status, ValueError for the fields (a
    retry without its ``eta`` too)."""
    if status not in TRANSITIONS[RUNNING]:
        raise InvalidStateError(f"a run cannot end in {status!r}")
    wrong = set(fields) - OUTCOME_FIELDS
    if wrong:
        raise ValueError(f"a run's end cannot set {', '.join(sorted(wrong))}")
    if status == RETRYING and fields.get("eta") is None:
        raise ValueError("a retry needs eta= (when to run again)")


def new_batch(records):
    """``records`` as a list, once each is known to be a new task and no id is
    given twice. Raises InvalidStateError or ValueError, naming the task."""
    records, ids = list(records), set()
    for rec in records:
        rec.check_new()
        if rec.id in ids:
            raise ValueError(f"task id {rec.id!r} is given twice")
        ids.add(rec.id)
    return records


def unreadable_error(err):
    """The error dict shown for a stored error that cannot be read: one bad record
    must not break a page or a dashboard."""
    return {"type": "UnreadableError", "traceback": "", "exc": None,
            "message": f"the stored error could not be read ({type(err).__name__}: {err})"}


def check_progress_fields(fields):
    """Raise ValueError unless ``fields`` are progress and output fields only."""
    wrong = set(fields) - PROGRESS_FIELDS
    if wrong:
        raise ValueError(f"update() changes progress and output only, not "
                         f"{', '.join(sorted(wrong))}; states move through the state machine")


def check_job_fields(fields):
    """Raise ValueError for a name that is not a JobRecord field."""
    wrong = set(fields) - JOB_FIELDS
    if wrong:
        raise ValueError(f"a job has no field {', '.join(sorted(wrong))}")


class Signals:
    """In-process wake-ups with sequence numbers, so a notify between a waiter's
    last look and its wait is never lost: the waiter only sleeps if nothing moved."""

    def __init__(self):
        self._signal_lock = threading.Lock()
        self._work_ready = threading.Condition(self._signal_lock)
        self._task_done = threading.Condition(self._signal_lock)
        self._eta_changed = threading.Condition(self._signal_lock)
        self._work_waiters = 0
        self._waited = collections.Counter()     # task id -> threads waiting for it to finish
        self.work_seq = 0
        self._work_counter = itertools.count(1)
        self._done_counter = itertools.count(1)
        self.done_seq = 0
        self.eta_seq = 0
        self._cancel_listeners = []

    def notify_work(self, n=1):
        # No lock unless a worker sleeps: a submitter must not queue behind workers for
        # a lock (under the GIL that costs up to a switch interval). A waiter counts
        # itself before it reads work_seq (wait_for_work), and we read the count after
        # moving work_seq, so either it sees the new work_seq or we see it and notify.
        self.work_seq = next(self._work_counter)
        if self._work_waiters:
            with self._signal_lock:
                self._work_ready.notify(n)

    def notify_done(self, task_id=None):
        """Wake waiters on ``task_id`` (None: on any task) because it finished.
        No lock unless someone waits: as in notify_work, a waiter registers before
        it reads done_seq, and done_seq moves before we look for waiters."""
        self.done_seq = next(self._done_counter)
        if self._waited and (task_id is None or task_id in self._waited):
            with self._signal_lock:
                self._task_done.notify_all()

    def on_cancel(self, fn, add=True):
        """Call ``fn()`` when another process asks to cancel a running task (a hint:
        look at the flags now); ``add=False`` removes it."""
        if add:
            self._cancel_listeners.append(fn)
        elif fn in self._cancel_listeners:
            self._cancel_listeners.remove(fn)

    def notify_cancel(self):
        for fn in list(self._cancel_listeners):
            fn()

    def notify_eta(self):
        with self._signal_lock:
            self.eta_seq += 1
            self._eta_changed.notify_all()

    def wait_for_eta(self, seen_seq, timeout):
        """Sleep until an eta may have changed (``notify_eta``) or ``timeout`` passes."""
        with self._signal_lock:
            if self.eta_seq == seen_seq:
                self._eta_changed.wait(timeout)

    def wait_for_work(self, seen_seq, timeout):
        """Sleep until work may be ready (in-process notify) or ``timeout`` passes;
        at once if ``work_seq`` moved past ``seen_seq`` (read before the last look)."""
        with self._signal_lock:
            self._work_waiters += 1  # before reading work_seq: see notify_work
            try:
                if self.work_seq == seen_seq:
                    self._work_ready.wait(timeout)
            finally:
                self._work_waiters -= 1

    def wait_done(self, task_id, timeout=None, first_look=None) -> bool:
        """Block until the task has finished; False on timeout. Raises TaskNotFound.

        On a store shared with other processes (``shared``) it also polls, backing
        off from 1 ms to ``max_poll``: another process may finish the task.
        ``first_look``: ``(done_seq, status)`` a caller already read, in that order.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = 0.001
        while True:
            if first_look is not None:
                (seq, status), first_look = first_look, None
            else:
                seq = self.done_seq
                status = self.status(task_id)
            if status is None:
                raise not_found(task_id)
            if status in FINISHED:
                return True
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
            if self.shared:
                wait = poll if wait is None else min(wait, poll)
                poll = min(poll * 2, self.max_poll)
            with self._signal_lock:
                self._waited[task_id] += 1  # before reading done_seq: see notify_done
                try:
                    if self.done_seq == seq:
                        self._task_done.wait(wait)
                finally:
                    self._waited[task_id] -= 1
                    if not self._waited[task_id]:
                        del self._waited[task_id]


class Storage(Signals):
    """The contract. ``shared``: other processes may change the store behind our
    back (waiters poll too). ``serializes``: payloads, values and exceptions are
    stored as bytes (``nbqueue.serializer``); memory keeps the objects."""

    shared = False
    serializes = False
    #: how long a waiter on a shared store sleeps at most between polls
    max_poll = 0.5

    # ---- tasks -------------------------------------------------------------
    def add(self, records):
        """Store new records, all or none. Pending ones join the ready queue,
        scheduled ones with an eta wait for it, scheduled ones without wait for the
        pipeline step before them. Assigns each record's ``seq``.

        Raises InvalidStateError for a record that is not new, ValueError for an
        id already stored; nothing is stored then. The store takes the records
        over: the caller must not change them afterwards.
        """
        raise NotImplementedError

    def claim(self, worker, lease, now=None):
        """Take the next pending task (highest ``priority`` first, FIFO within one,
        recovered tasks at the front of theirs): it becomes running with
        ``attempts + 1``, held by ``worker`` until ``now + lease``. A task past
        ``expires_at`` is cancelled instead. Returns the record with its payload
        (and ``prev``) loaded, or None. Atomic: no two callers get the same task.
        """
        raise NotImplementedError

    def finish(self, task_id, worker, status, now=None, **fields) -> bool:
        """End the run ``worker`` holds: ``TaskRecord.finish(status, **fields)``.
        Ending in succeeded promotes the next pipeline step with this value; failed
        or cancelled cancel every later step. Returns False, changing nothing, if
        ``worker`` no longer holds the task (its lease was taken over).
        Raises InvalidStateError for a status a run cannot end in.
        """
        return self.finish_and_claim(task_id, worker, status, None, now, **fields)[0]

    def finish_and_claim(self, task_id, worker, status, lease, now=None, **fields):
        """``finish`` then ``claim`` for ``worker`` (unless ``lease`` is None) in one
        atomic step: one transaction per task on a busy store.
        Returns ``(finished, next record or None)``."""
        raise NotImplementedError

    def renew(self, task_ids, worker, lease, now=None) -> dict:
        """Extend to ``now + lease`` the claims ``worker`` still holds among
        ``task_ids``. Returns ``{task_id: cancel_requested}`` for those."""
        raise NotImplementedError

    def requeue_expired(self, now=None, max_recoveries=1, alive=None) -> list:
        """Running tasks whose lease ended go back to pending at the front of their
        priority (``recoveries + 1``), or fail with ``WorkerLost`` once lost more
        than ``max_recoveries`` times. ``alive(worker, task_id)`` may say a holder is still
        running it (True: keep its claim), is gone (False) or cannot tell (None: the
        lease decides). Returns the ids handled.
        """
        raise NotImplementedError

    def promote_due(self, now=None) -> int:
        """Scheduled and retrying tasks whose eta has come become pending.
        Returns how many."""
        raise NotImplementedError

    def next_eta(self):
        """The earliest eta of a waiting task, or None. O(1) or O(log N)."""
        raise NotImplementedError

    def cancel(self, task_id, message="cancelled", now=None) -> bool:
        """Cancel a waiting task at once (and the pipeline steps after it), or flag a
        running one (``cancel_requested``; its worker stops it). Returns False if it
        had already finished. Raises TaskNotFound."""
        raise NotImplementedError

    def get(self, task_id, load=()):
        """A copy of the record, or None. Bulky parts (``records.BULKY``: payload,
        result, prev, output) are loaded only when named in ``load``; otherwise
        a store may leave them None, so a 200 MB value never slows a status read."""
        raise NotImplementedError

    def status(self, task_id):
        """The task's state, or None if there is no such task. The cheapest read."""
        rec = self.get(task_id)
        return None if rec is None else rec.status

    def update(self, task_id, **fields):
        """Set progress and output fields (``records.PROGRESS_FIELDS``) of a running
        task; never its state. Returns its ``cancel_requested`` flag, or None if the
        task is gone or no longer running (then nothing is written).
        Raises ValueError for any other field.
        """
        raise NotImplementedError

    def counts(self) -> dict:
        """``{state: number of records}`` for every state, from counters kept as
        records move (never by loading records)."""
        raise NotImplementedError

    def page(self, status=None, name=None, limit=50, offset=0) -> list:
        """One page of records, newest submitted first, skipping the ``offset``
        newest; filtered by ``status`` (a state or tuple of states) and ``name``.
        ``limit=None``: all the rest. Bulky parts are not loaded."""
        raise NotImplementedError

    def find_prefix(self, prefix, limit=2) -> list:
        """Ids starting with ``prefix`` (at most ``limit``), for people who type
        the first characters of an id."""
        raise NotImplementedError

    def purge(self, older_than=None, statuses=None, now=None) -> int:
        """Delete finished records in ``statuses`` (default: every finished state)
        that finished at least ``older_than`` seconds before ``now`` (None: all).
        Waiting and running tasks are never deleted. Returns how many."""
        raise NotImplementedError

    def retain(self, keep=None, max_finished=None, now=None) -> int:
        """Retention: delete finished records that finished more than ``keep``
        seconds ago, those whose ``expires_at`` has passed, and the oldest finished
        beyond ``max_finished``. Cheap when nothing is due. Returns how many."""
        raise NotImplementedError

    def trim_runs(self, name, keep) -> int:
        """Delete the finished records named ``name`` beyond its ``keep`` newest
        (a periodic job's history). Returns how many."""
        raise NotImplementedError

    # ---- periodic jobs and the scheduler lock ----------------------------------
    def jobs(self) -> dict:
        """``{name: JobRecord}`` of every periodic job (copies)."""
        raise NotImplementedError

    def get_job(self, name):
        """A copy of the job, or None."""
        raise NotImplementedError

    def put_job(self, job):
        """Define a job, replacing one of the same name (``JobRecord.take_over``
        keeps its counters). Returns the stored job."""
        raise NotImplementedError

    def update_job(self, name, **fields):
        """Set fields of a job (paused, next_run, errors); returns it, or None if gone."""
        raise NotImplementedError

    def remove_job(self, name) -> bool:
        """Delete a job (its past runs stay). False if there was none."""
        raise NotImplementedError

    def fire_job(self, name, due, next_run, run=None, **increments) -> bool:
        """Handle the tick ``due`` of a job exactly once: add the ``run`` record (if
        any) to the ready queue, move ``next_run`` on, add ``increments`` to its
        counters. Returns False, changing nothing, if the job's next run is no
        longer ``due`` (another scheduler handled it). ``due=None``: a run now
        (``run_now``), the schedule untouched."""
        raise NotImplementedError

    def hold_lock(self, holder, ttl, now=None) -> bool:
        """Take or renew the store's scheduler lock for ``ttl`` seconds. True if
        ``holder`` has it now (it was free, expired, or already its own)."""
        raise NotImplementedError

    def release_lock(self, holder):
        """Let the lock go if ``holder`` has it."""
        raise NotImplementedError

    # ---- the worker registry (sidecars and ``nbqueue worker`` processes) ---------
    def beat_worker(self, worker, info, now=None) -> dict:
        """Record that ``worker`` (a worker id) lives: store ``info`` (a dict of plain
        values: pid, host, workers, busy...) with ``beat_at = now``. Keys set by
        others with ``update_worker`` and absent from ``info`` (``stop``) are kept.
        Returns the stored dict."""
        raise NotImplementedError

    def update_worker(self, worker, **fields) -> bool:
        """Merge ``fields`` into a registered worker's info (``stop=True`` asks it
        to stop). False if it is not registered."""
        raise NotImplementedError

    def remove_worker(self, worker) -> bool:
        """Forget a worker (it stopped). False if it was not registered."""
        raise NotImplementedError

    def registered_workers(self) -> dict:
        """``{worker id: info}`` of every registered worker, dead ones included
        (``beat_at`` says when each last beat)."""
        raise NotImplementedError

    def close(self):
        pass

"""The task record and the periodic job record, as every store keeps them.

A ``TaskRecord``'s methods (``start``, ``finish``, ``retry``, ``requeue``,
``promote``, ``cancel``) are the only way its state changes, the way
``concurrent.futures.Future`` owns its transitions: each checks the move
against ``states.TRANSITIONS`` and raises ``InvalidStateError`` for an illegal
one, changing nothing. Stores load a record, call one of these, and write back.
"""

import dataclasses
from typing import Any, Optional

from .exceptions import InvalidStateError
from .states import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RETRYING,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    TRANSITIONS,
    WAITING,
)

#: the fields ``Storage.update`` may change: progress and output, never the state
PROGRESS_FIELDS = frozenset(("progress_done", "progress_total", "progress_message", "output"))
#: the fields a worker may set when a run ends (``finish``)
OUTCOME_FIELDS = frozenset(("result", "error", "message", "eta", "retries_used", "cached",
                            *PROGRESS_FIELDS))
#: parts of a record a store may keep apart and load only when asked (``get(load=...)``)
BULKY = frozenset(("payload", "result", "prev", "output"))


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """Everything stored about one task. Times are ``time.time()`` floats."""

    id: str
    name: str
    status: str
    priority: int = 0
    seq: int = 0                         # store-assigned submit order (paging, FIFO)
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
    worker: Optional[str] = None         # who runs it now
    lease_until: Optional[float] = None  # the worker's claim ends then unless renewed
    cancel_requested: bool = False
    progress_done: float = 0
    progress_total: Optional[float] = None
    progress_message: Optional[str] = None
    output: Optional[str] = ""           # None: not loaded (``get(load=("output",))``)
    result: Any = None                   # encoded value (memory: the object itself)
    error: Optional[dict] = None         # {'type', 'message', 'traceback', 'exc'}
    message: Optional[str] = None        # why it was cancelled, retried or recovered
    cache_key: Optional[str] = None      # memoized task: where its value is kept
    cached: bool = False                 # the value came from the memo cache

    # ---- what it is ---------------------------------------------------------
    @property
    def finished(self):
        return self.status in FINISHED

    @property
    def waiting(self):
        """Held back until an eta (scheduled, retrying) or a pipeline parent."""
        return self.status in WAITING

    def copy(self):
        """A shallow copy (values and payload shared). Replaced below by a generated
        straight-line version: stores hand out a copy on every read, and that is
        several times cheaper than ``dataclasses.replace`` or a loop of setattr."""
        return dataclasses.replace(self)

    # ---- the moves --------------------------------------------------------------
    def _move(self, status, sources=None):
        """Go to ``status`` if the state machine allows it (and, for a move that
        starts only from some states, the task is in one of ``sources``)."""
        if status not in TRANSITIONS[self.status] or (sources is not None and self.status not in sources):
            raise InvalidStateError(
                f"task {self.id} ({self.name}) cannot go from {self.status!r} to {status!r}")
        self.status = status

    def check_new(self):
        """Raise InvalidStateError unless this is a task that was never stored."""
        if self.status not in (PENDING, SCHEDULED) or self.attempts or self.worker:
            raise InvalidStateError(
                f"task {self.id}: a new task must be pending or scheduled, not {self.status!r}")

    def start(self, worker, lease_until, now):
        """pending -> running, held by ``worker`` until ``lease_until``."""
        self._move(RUNNING)
        self.attempts += 1
        self.started_at = now
        self.worker = worker
        self.lease_until = lease_until

    def finish(self, status, now, **fields):
        """running -> ``status``: succeeded, failed, cancelled (``finished_at`` = now),
        retrying (needs ``eta=``) or pending. ``fields`` are outcome fields.
        Raises InvalidStateError (illegal move) or ValueError (other fields)."""
        wrong = set(fields) - OUTCOME_FIELDS
        if wrong:
            raise ValueError(f"a run's end cannot set {', '.join(sorted(wrong))}")
        if self.status != RUNNING or status not in TRANSITIONS[RUNNING]:
            raise InvalidStateError(
                f"task {self.id} ({self.name}) cannot go from {self.status!r} to {status!r}")
        if status == RETRYING and fields.get("eta") is None:
            raise ValueError("a retry needs eta= (when to run again)")
        for key, value in fields.items():
            setattr(self, key, value)
        self._move(status)
        self.worker = self.lease_until = None
        if status in FINISHED:
            self.finished_at = now
        elif status == PENDING:
            self.eta = None

    def requeue(self, message):
        """running -> pending: the worker died; the run is counted in ``recoveries``."""
        self._move(PENDING, (RUNNING,))
        self.recoveries += 1
        self.worker = self.lease_until = None
        self.message = message

    def promote(self, prev=None, has_prev=False):
        """scheduled/retrying -> pending (an eta came, or a pipeline parent succeeded
        with ``prev`` as its value)."""
        self._move(PENDING, WAITING)
        self.eta = None
        if has_prev:
            self.prev, self.has_prev = prev, True

    def cancel(self, now, message="cancelled"):
        """pending/scheduled/retrying -> cancelled at once; for a running task only
        ``cancel_requested`` is set (its worker stops it). Returns the status moved
        to, or None if it was already finished."""
        if self.finished:
            return None
        if self.status == RUNNING:
            self.cancel_requested = True
            return RUNNING
        self._move(CANCELLED)
        self.finished_at = now
        self.message = message
        return CANCELLED

    def fail_lost(self, now, message, error):
        """running -> failed: its worker died once too often (``WorkerLost``)."""
        self._move(FAILED)
        self.finished_at = now
        self.worker = self.lease_until = None
        self.message = message
        self.error = error

    def successor_move(self):
        """What this finished step does to the next pipeline step: "promote" (it
        succeeded), "cancel" (it failed or was cancelled) or None (no next step)."""
        if not self.next_id or not self.finished:
            return None
        return "promote" if self.status == SUCCEEDED else "cancel"

    def cancel_as_successor(self, parent, now):
        """Cancel this later pipeline step because ``parent`` did not succeed.
        Returns False if it had already finished."""
        if self.finished:
            return False
        self._move(CANCELLED)
        self.finished_at = now
        self.message = f"an earlier pipeline step ({parent.name} {parent.id}) {parent.status}"
        return True

    def promotable_successor(self):
        """True if this step waits for its parent (scheduled with no eta)."""
        return self.status == SCHEDULED


def _fast_copy(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    # a dict held by the record (the error) is copied too: the store's own stays put
    body = "\n".join(f"    new.{n} = self.{n}" if n != "error" else
                     "    new.error = None if self.error is None else dict(self.error)" for n in names)
    namespace = {"_new": object.__new__, "cls": cls}
    exec(f"def copy(self):\n    new = _new(cls)\n{body}\n    return new", namespace)
    namespace["copy"].__doc__ = cls.copy.__doc__
    cls.copy = namespace["copy"]


_fast_copy(TaskRecord)


#: the schedule of a stand-in for a stored job that could not be read
UNREADABLE = "(unreadable)"


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
    errors: int = 0                      # ticks that failed to fire (logged; the job goes on)
    last_error: Optional[str] = None
    keep: int = 100                      # finished runs kept
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    timeout: Optional[float] = None
    priority: int = 0
    payload: Any = None
    created_at: float = 0.0

    def copy(self):
        return dataclasses.replace(self)

    def take_over(self, old):
        """Keep ``old``'s counters and paused state when this definition replaces it
        (a re-run cell); keep its next run too when the schedule is unchanged. A
        stand-in for a job that could not be read (``UNREADABLE``) leaves nothing."""
        if old.schedule == UNREADABLE:
            return
        self.runs, self.skipped, self.missed = old.runs, old.skipped, old.missed
        self.errors, self.last_error = old.errors, old.last_error
        self.last_run_id, self.paused, self.created_at = old.last_run_id, old.paused, old.created_at
        if (old.schedule, old.every, old.timezone) == (self.schedule, self.every, self.timezone) \
                and old.next_run is not None:
            self.next_run = old.next_run

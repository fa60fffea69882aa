"""``Result`` and ``ResultGroup``: handles on submitted tasks, and the task states.

A handle holds only the task id and its queue; every read goes to the store
record, so a handle rebuilt from an id (``q.result(id)``, ``Result(id, q)``),
also in a new process or after a kernel restart, sees exactly what the
original one sees. Reads are never destructive.
"""

import datetime
import time
from collections import Counter, namedtuple

from .exceptions import TaskCancelled, TaskException, TaskNotFound

# ---- the state machine ------------------------------------------------------
PENDING = "pending"
SCHEDULED = "scheduled"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (PENDING, SCHEDULED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset((SUCCEEDED, FAILED, CANCELLED))
WAITING = frozenset((SCHEDULED, RETRYING))   # held back until an eta (or a pipeline parent)

TRANSITIONS = {
    PENDING: frozenset((RUNNING, CANCELLED)),
    SCHEDULED: frozenset((PENDING, CANCELLED)),
    # running -> pending: the worker died (lease expired) or RetryTask without delay
    RUNNING: frozenset((SUCCEEDED, FAILED, RETRYING, CANCELLED, PENDING)),
    RETRYING: frozenset((PENDING, CANCELLED)),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class Progress(namedtuple("Progress", "done total message")):
    """A task's last reported progress. ``fraction`` is None without a total."""

    __slots__ = ()

    @property
    def fraction(self):
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def __str__(self):
        text = f"{self.done:g}/{self.total:g}" if self.total else f"{self.done:g}"
        return f"{text} {self.message}" if self.message else text


def _when(ts):
    return None if ts is None else datetime.datetime.fromtimestamp(ts).astimezone()


class Result:
    """A handle on one task: poll it, wait for it, cancel it.

    ``Result(task_id, queue)`` rebuilds a handle from an id; it raises
    ``TaskNotFound`` if the store has no such task.
    """

    __slots__ = ("id", "queue", "__weakref__")

    def __init__(self, task_id, queue=None):
        if queue is None:
            from .queue import latest_queue
            queue = latest_queue()
        self.id = task_id
        self.queue = queue
        self._record()  # raises TaskNotFound

    @classmethod
    def _new(cls, task_id, queue):
        # Handles for tasks we just stored: no store round trip.
        self = object.__new__(cls)
        self.id = task_id
        self.queue = queue
        return self

    def _record(self):
        rec = self.queue.store.get(self.id)
        if rec is None:
            raise TaskNotFound(
                f"no task {self.id!r} in queue {self.queue.name!r} (never submitted, or purged)")
        return rec

    # ---- state -------------------------------------------------------
    @property
    def name(self):
        return self._record().name

    @property
    def status(self):
        return self._record().status

    @property
    def attempts(self):
        return self._record().attempts

    @property
    def created_at(self):
        return _when(self._record().created_at)

    @property
    def started_at(self):
        return _when(self._record().started_at)

    @property
    def finished_at(self):
        return _when(self._record().finished_at)

    @property
    def eta(self):
        return _when(self._record().eta)

    @property
    def progress(self):
        rec = self._record()
        return Progress(rec.progress_done, rec.progress_total, rec.progress_message)

    @property
    def output(self):
        """Captured stdout and stderr of the task (the last ``output_limit`` characters)."""
        return self._record().output

    @property
    def traceback(self):
        """Traceback text of a failed task, else None."""
        err = self._record().error
        return err.get("traceback") if err else None

    def is_ready(self):
        return self._record().status in FINISHED

    done = is_ready

    def running(self):
        return self._record().status == RUNNING

    def cancelled(self):
        return self._record().status == CANCELLED

    # ---- waiting -----------------------------------------------------
    def wait(self, timeout=None):
        """Block until the task has finished; returns False if ``timeout`` passed first."""
        return self.queue.store.wait_done(self.id, timeout)

    def get(self, timeout=None, block=True):
        """The task's return value, waiting for it.

        Raises ``TaskException`` (the task failed; carries the original type,
        message and traceback), ``TaskCancelled``, or ``TimeoutError`` when
        ``timeout`` seconds pass first. With ``block=False`` returns None while
        the task has not finished (Huey's form).
        """
        if block and not self.wait(timeout):
            raise TimeoutError(
                f"task {self.id} ({self.name}) still {self.status} after {timeout}s; "
                "call get() again to keep waiting")
        rec = self._record()
        if rec.status not in FINISHED:
            return None
        return self.queue._outcome(rec)

    __call__ = get

    def exception(self, timeout=None):
        """The exception a failed task raised (None if it succeeded), waiting like ``get``.

        Raises ``TaskCancelled`` for a cancelled task and ``TimeoutError``, as
        ``concurrent.futures.Future.exception`` does.
        """
        try:
            self.get(timeout)
        except TaskException as exc:
            return exc.exc if exc.exc is not None else exc
        return None

    def cancel(self):
        """Cancel the task: a waiting one never runs; a running one stops at its next
        ``check_cancelled()``/``progress()`` (thread workers) and ends ``cancelled``.

        Returns False if the task had already finished.
        """
        return self.queue.cancel(self.id)

    def add_done_callback(self, fn):
        """Call ``fn(result)`` once the task has finished (at once if it has)."""
        self.queue._add_done_callback(self, fn)

    # ---- display -----------------------------------------------------
    def __eq__(self, other):
        return isinstance(other, Result) and other.id == self.id and other.queue.name == self.queue.name

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        try:
            rec = self._record()
        except TaskNotFound:
            return f"<Result {self.id} (purged)>"
        extra = ""
        if rec.status == RUNNING and (rec.progress_done or rec.progress_total):
            extra = f" progress={Progress(rec.progress_done, rec.progress_total, None)}"
        elif rec.status == FAILED and rec.error:
            extra = f" error={rec.error['type']}"
        return f"<Result {rec.name} id={self.id} status={rec.status}{extra}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .widgets import mimebundle
        return mimebundle(self, repr(self))


class ResultGroup:
    """Results of ``task.map(...)`` or a pipeline; ``get()`` returns their values in order."""

    def __init__(self, results):
        self.results = list(results)

    def __len__(self):
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, i):
        return self.results[i]

    @property
    def ids(self):
        return [r.id for r in self.results]

    def statuses(self):
        """A Counter of the members' states; a member whose record was purged counts
        as ``"purged"``."""
        counts = Counter()
        for r in self.results:
            try:
                counts[r.status] += 1
            except TaskNotFound:
                counts["purged"] += 1
        return counts

    def done(self):
        return all(r.done() for r in self.results)

    is_ready = done

    def wait(self, timeout=None):
        """Block until every member has finished; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.wait(left):
                return False
        return True

    def get(self, timeout=None, block=True):
        """Every member's value, in order; raises as ``Result.get`` for the first that did
        not succeed. With ``block=False``, None until all have finished."""
        if not block:
            if not self.done():
                return None
        elif not self.wait(timeout):
            counts = self.statuses()
            raise TimeoutError(f"{len(self) - sum(counts[s] for s in FINISHED)} of {len(self)} "
                               f"tasks not finished after {timeout}s")
        return [r.get(block=False) for r in self.results]

    __call__ = get

    def cancel(self):
        """Cancel every member that has not finished; returns how many were cancelled."""
        return sum(bool(r.cancel()) for r in self.results)

    def __repr__(self):
        counts = self.statuses()
        parts = ", ".join(f"{counts[s]} {s}" for s in (*STATES, "purged") if counts[s])
        return f"<ResultGroup {len(self)} tasks: {parts}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .widgets import mimebundle
        return mimebundle(self, repr(self))


def cancelled_error(rec):
    return TaskCancelled(f"task {rec.id} ({rec.name}) was cancelled"
                         + (f": {rec.message}" if rec.message and rec.message != "cancelled" else ""))

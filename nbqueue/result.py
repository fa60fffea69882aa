"""``Result`` and ``ResultGroup``: handles on submitted tasks, and the task states.

A handle holds only the task id and its queue; every read goes to the store
record, so a handle rebuilt from an id (``q.result(id)``, ``Result(id, q)``),
also in a new process or after a kernel restart, sees exactly what the
original one sees. Reads are never destructive.
"""

import datetime
import time
from collections import Counter, namedtuple

from .exceptions import TaskException, TaskNotFound
from .futures import future_of
from .registry import latest_queue
from .runtime.interrupt import shield
from .states import CANCELLED, FAILED, FINISHED, RUNNING, STATES


class Progress(namedtuple("Progress", "done total message")):
    """A task's last reported progress. ``fraction`` is None without a total."""

    __slots__ = ()

    @property
    def fraction(self):
        try:
            return max(0.0, min(1.0, self.done / self.total)) if self.total else None
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    def __str__(self):
        try:
            text = f"{self.done:g}/{self.total:g}" if self.total else f"{self.done:g}"
        except (TypeError, ValueError):  # a record written by something else: show it as is
            text = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return f"{text} {self.message}" if self.message else text


def _when(ts):
    return None if ts is None else datetime.datetime.fromtimestamp(ts).astimezone()


class Result:
    """A handle on one task: poll it, wait for it, cancel it.

    ``Result(task_id, queue)`` rebuilds a handle from an id; it raises
    ``TaskNotFound`` if the store has no such task.
    """

    __slots__ = ("id", "queue", "_future", "__weakref__")

    def __init__(self, task_id, queue=None):
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"Result(task_id={task_id!r}): a task id is a string like "
                            "r.id gives ('3f2a...')")
        if queue is None:
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

    @shield  # a task reading another task's record: no interrupt mid-read
    def _record(self, load=()):
        rec = self.queue.store.get(self.id, load)
        if rec is None:
            raise self.queue.state.not_found(self.id)
        return rec

    # ---- state -------------------------------------------------------
    @property
    def name(self):
        return self._record().name

    @property
    @shield
    def status(self):
        status = self.queue.store.status(self.id)
        if status is None:
            self._record()  # raises TaskNotFound
        return status

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
        return self._record(("output",)).output or ""

    @property
    def traceback(self):
        """Traceback text of a failed task, else None."""
        err = self._record().error
        return err.get("traceback") if err else None

    @property
    def cached(self):
        """True if the value came from the memo cache (``@q.task(cache=True)``)."""
        return self._record().cached

    def is_ready(self):
        return self.status in FINISHED

    done = is_ready

    def running(self):
        return self.status == RUNNING

    def cancelled(self):
        return self.status == CANCELLED

    # ---- waiting -----------------------------------------------------
    def wait(self, timeout=None):
        """Block until the task has finished; returns False if ``timeout`` passed first.
        Done callbacks of a task another process finished have run when it returns."""
        done = self.queue.store.wait_done(self.id, timeout)
        if done:
            self.queue.state.finished_elsewhere(self.id)
        return done

    def get(self, timeout=None, block=True):
        """The task's return value, waiting for it.

        Raises ``TaskException`` (the task failed; carries the original type,
        message and traceback), ``TaskCancelled``, or ``TimeoutError`` when
        ``timeout`` seconds pass first. With ``block=False`` returns None while
        the task has not finished (Huey's form).
        """
        rec = self._record(("result",))  # one read when it has finished (the common case)
        if rec.status not in FINISHED:
            if not block:
                return None
            if not self.wait(timeout):
                raise TimeoutError(
                    f"task {self.id} ({self.name}) still {self.status} after {timeout}s; "
                    "call get() again to keep waiting")
            rec = self._record(("result",))
        else:
            self.queue.state.finished_elsewhere(self.id)
        return self.queue.state.outcome(rec)

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
        ``check_cancelled()``/``progress()``, or, if it never checks, is interrupted
        in its thread after about a second (code inside a C call stops when the call
        returns); it ends ``cancelled``.

        Returns False if the task had already finished.
        """
        return self.queue.cancel(self.id)

    def retry(self):
        """Submit this failed or cancelled task's call again as a new task; returns its
        Result (see ``Queue.retry``). Raises InvalidStateError for any other state."""
        return self.queue.retry(self.id)

    def add_done_callback(self, fn):
        """Call ``fn(result)`` once the task has finished (at once if it has)."""
        self.queue.state.add_done_callback(self, fn)

    # ---- futures and asyncio -----------------------------------------
    def future(self):
        """A ``concurrent.futures.Future`` that completes when the task ends, for
        ``asyncio.wrap_future``, ``concurrent.futures.wait`` and ``as_completed``.

        Every call (and every handle on the task in this process) gives the same
        future while it is held. It completes with the value, with the
        ``TaskException`` ``get()`` raises, or cancelled (its ``result()`` raises
        ``TaskCancelled``), from the queue's done callbacks: at once for a task
        run in this process, within a few seconds for one another process ran.
        Cancelling the future cancels the task (``cancel()``) and, as
        concurrent.futures promises, the future at once; a running task that
        ends before the interruption reaches it keeps its own outcome in the
        store. Raises TaskNotFound if the task's record is gone.
        """
        try:
            return self._future
        except AttributeError:
            pass
        fut = self._future = future_of(self)
        return fut

    def __await__(self):
        """``value = await r``: the value, or what ``get()`` raises, without blocking
        the event loop (it waits on ``future()``). Cancelling the awaiting coroutine
        (``asyncio.wait_for`` timing out, a ``TaskGroup``, the end of
        ``asyncio.run``) stops the wait only: the task runs on, as after an
        interrupted ``get()``. Cancel the task with ``cancel()``;
        ``await asyncio.wrap_future(r.future())`` chains cancellation both ways."""
        return _await_one(self).__await__()

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
        from .ui.widgets import mimebundle
        return mimebundle(self, repr(self))

    _nbqueue_view_ = "task"  # what the widgets show it as (they import no class)


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

    def __await__(self):
        """``values = await group``: every member's value in order, or what ``get()``
        raises for the first member (in order) that did not succeed, as soon as
        that is known. Like ``await r``, cancelling the awaiter cancels no task."""
        return _await_all(self.results).__await__()

    def __repr__(self):
        counts = self.statuses()
        parts = ", ".join(f"{counts[s]} {s}" for s in (*STATES, "purged") if counts[s])
        return f"<ResultGroup {len(self)} tasks: {parts}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .ui.widgets import mimebundle
        return mimebundle(self, repr(self))

    _nbqueue_view_ = "group"


async def _await_one(result):
    # Not asyncio.wrap_future: that chains both ways, so an awaiter cancelled by
    # wait_for, a TaskGroup or asyncio.run's exit would cancel the task. Here a
    # cancelled awaiter stops waiting and the task runs on, as with get().
    import asyncio
    fut = result.future()
    if not fut.done():
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_fut):  # in whichever thread completed the future
            try:
                loop.call_soon_threadsafe(_release, waiter)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        fut.add_done_callback(wake)
        await waiter
    return fut.result()  # the value, or raises TaskException / TaskCancelled


def _release(waiter):
    if not waiter.done():
        waiter.set_result(None)


async def _await_all(results):
    return [await _await_one(r) for r in results]

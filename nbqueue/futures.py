"""Results as ``concurrent.futures`` futures: ``r.future()``, ``wait`` and ``as_completed``.

``r.future()`` is a real ``concurrent.futures.Future`` (a ``TaskFuture``), so
``asyncio.wrap_future``, ``concurrent.futures.wait`` and ``as_completed`` take
it. The queue's done callbacks complete it: the worker's when the task ends in
this process, the heartbeat's housekeeping (every few seconds) when another
process ended it. ``wait`` and ``as_completed`` here take Results and give
Results back, with concurrent.futures' arguments and meaning.

This module imports no Result class: it recognises a Result by what it says it
is (``_nbqueue_view_ == "task"``), as the widgets do.
"""

import concurrent.futures
import math
import threading
import weakref
from collections import namedtuple
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

from .exceptions import TaskCancelled, TaskNotFound

RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)

#: what ``wait`` returns: two sets of Results (concurrent.futures' DoneAndNotDoneFutures)
DoneAndNotDone = namedtuple("DoneAndNotDone", "done not_done")

_table_lock = threading.Lock()
# QueueState -> {task id: TaskFuture}; weak both ways: a future lives while a handle,
# a caller or the pending done callback holds it, a table while its queue lives.
_futures = weakref.WeakKeyDictionary()


class TaskFuture(concurrent.futures.Future):
    """The ``concurrent.futures.Future`` of one task (``Result.future()``).

    It completes when the task ends: with its value, with the ``TaskException``
    ``Result.get`` raises, or cancelled (``result()`` then raises
    ``TaskCancelled``, a ``CancelledError``). ``handle`` is the Result.
    ``running()`` reads the task's state from the store.
    """

    def __init__(self, handle):
        super().__init__()
        self.handle = handle
        self._nbq_lock = threading.RLock()  # orders our cancel and completion moves
        self._nbq_cancelled = None          # the TaskCancelled that result() raises
        self._nbq_notified = False          # waiters were told of the cancel

    def __repr__(self):
        return f"<TaskFuture of task {self.handle.id} {super().__repr__()[1:-1]}>"

    def cancel(self):
        """Cancel the task (``Result.cancel``: a waiting one never runs, a running
        one is interrupted) and this future. Returns False, completing the future
        with the task's outcome, if the task had already finished; True if the
        future is cancelled. Raises nothing for a purged task (returns False)."""
        if self.done():
            return self.cancelled()
        try:
            asked = self.handle.cancel()
        except TaskNotFound:
            asked = False
        if not asked:  # it finished before our callback ran: take its outcome now
            self._settle()
            return self.cancelled()
        self._cancel_with(TaskCancelled(f"task {self.handle.id} was cancelled through its future"))
        return self.cancelled()

    def running(self):
        """True while the task runs (a store read); False once the future is done."""
        if self.done():
            return False
        try:
            return self.handle.running()
        except TaskNotFound:
            return False

    def result(self, timeout=None):
        """The task's value, waiting up to ``timeout`` seconds. Raises what
        ``Result.get`` raises: TaskException, TaskCancelled, TimeoutError."""
        return self._waiting(super().result, timeout)

    def exception(self, timeout=None):
        """The TaskException of a failed task, None if it succeeded; raises
        TaskCancelled and TimeoutError like ``result``."""
        return self._waiting(super().exception, timeout)

    def _waiting(self, wait, timeout):
        # concurrent.futures' own errors, as nbqueue's (with the task's name and id)
        try:
            return wait(timeout)
        except concurrent.futures.CancelledError:
            if not self.cancelled():
                raise
            raise self.cancel_error() from None
        except TimeoutError:
            if self.done():
                raise
            raise self._timeout_error(timeout) from None

    def cancel_error(self):
        """The TaskCancelled a cancelled future raises (a fresh one each call)."""
        kept = self._nbq_cancelled
        return TaskCancelled(*kept.args) if kept is not None else TaskCancelled(
            f"task {self.handle.id} was cancelled")

    def _timeout_error(self, timeout):
        return TimeoutError(f"task {self.handle.id} not finished after {timeout}s; "
                            "call result() again to keep waiting")

    def _cancel_with(self, error):
        with self._nbq_lock:
            if self._nbq_cancelled is None:
                self._nbq_cancelled = error
            if super().cancel() and not self._nbq_notified:
                self._nbq_notified = True
                # Wake concurrent.futures.wait()/as_completed() waiters: the
                # executor's step, and we are this future's executor.
                self.set_running_or_notify_cancel()

    def _task_ended(self):
        """The queue's done callback: the task has finished."""
        self._settle()
        if self.done() and (self.cancelled() or super().exception(0) is not None):
            self._settle_later_steps()

    def _settle(self):
        """Complete the future from the task's record, if the task has finished.
        Safe from any thread, any number of times."""
        if self.done():
            return
        try:
            value = self.handle.get(timeout=0)
        except TaskCancelled as exc:
            self._cancel_with(exc)
        except TimeoutError:
            pass  # not finished yet: a later callback completes it
        except BaseException as exc:  # noqa: BLE001 -- TaskException, TaskNotFound (purged)
            with self._nbq_lock:
                if not self.done():
                    self.set_exception(exc.with_traceback(None))  # our frames are noise
        else:
            with self._nbq_lock:
                if not self.done():
                    self.set_result(value)

    def _settle_later_steps(self):
        # A failed or cancelled pipeline step cancels the later steps in the same
        # store operation, which fires no done callback here: settle their live
        # futures now rather than at the next housekeeping pass.
        state = self.handle.queue.state
        rec = state.store.get(self.handle.id)
        while rec is not None and rec.next_id:
            with _table_lock:
                table = _futures.get(state)
                fut = table.get(rec.next_id) if table is not None else None
            if fut is not None:
                fut._settle()
            rec = state.store.get(rec.next_id)


def future_of(result):
    """The one live TaskFuture of ``result``'s task in this process, made and hooked
    to the queue's done callbacks on first use. Raises TaskNotFound if the task's
    record is gone."""
    state = result.queue.state
    with _table_lock:
        table = _futures.get(state)
        if table is None:
            table = _futures[state] = weakref.WeakValueDictionary()
        fut = table.get(result.id)
        if fut is not None:
            return fut
        fut = table[result.id] = TaskFuture(result)
    try:
        state.add_done_callback(result, lambda _result: fut._task_ended())
    except BaseException:
        with _table_lock:
            if table.get(result.id) is fut:
                del table[result.id]
        raise
    return fut


def _futures_of(results, caller):
    """``{TaskFuture: Result}`` for the given Results. Raises TypeError naming the
    item that is not a Result."""
    if _is_result(results) or not hasattr(results, "__iter__"):
        raise TypeError(f"{caller}(results): give a list of Results or a ResultGroup, not "
                        f"a {type(results).__name__}; for one Result r write {caller}([r])")
    by_future = {}
    for i, r in enumerate(results):
        if not _is_result(r):
            what = ("a ResultGroup: pass the group itself, or list(group)"
                    if _is_group(r) else f"a {type(r).__name__}, not a Result")
            raise TypeError(f"{caller}(results): item {i} is {what}; give the Results that "
                            "calling a task returns")
        by_future.setdefault(r.future(), r)
    return by_future


def _is_result(obj):
    return getattr(type(obj), "_nbqueue_view_", None) == "task"


def _is_group(obj):
    return getattr(type(obj), "_nbqueue_view_", None) == "group"


def _check_timeout(timeout, caller):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
        raise TypeError(f"{caller}(timeout={timeout!r}): give seconds as a number, or None "
                        "to wait for ever")
    return max(0.0, float(timeout))


def wait(results, timeout=None, return_when=ALL_COMPLETED):
    """Wait for Results, like ``concurrent.futures.wait``: returns a named tuple
    ``(done, not_done)`` of sets of Results.

    ``return_when``: ``FIRST_COMPLETED`` (any finished), ``FIRST_EXCEPTION`` (any
    failed, else all finished; a cancelled task is not an exception) or
    ``ALL_COMPLETED``. ``timeout`` (seconds) returns early with what is done; it
    never raises. Waiting cancels nothing and changes no task. Raises TypeError
    for something that is not a Result, ValueError for an unknown ``return_when``,
    TaskNotFound for a purged task.
    """
    if return_when not in RETURN_WHEN:
        raise ValueError(f"wait(return_when={return_when!r}): give nbqueue.FIRST_COMPLETED, "
                         "nbqueue.FIRST_EXCEPTION or nbqueue.ALL_COMPLETED")
    timeout = _check_timeout(timeout, "wait")
    by_future = _futures_of(results, "wait")
    done, not_done = concurrent.futures.wait(by_future, timeout, return_when)
    return DoneAndNotDone({by_future[f] for f in done}, {by_future[f] for f in not_done})


def as_completed(results, timeout=None):
    """Yield Results as their tasks finish (succeeded, failed or cancelled), like
    ``concurrent.futures.as_completed``; those already finished come first.

    Raises TimeoutError from the iterator if some are still unfinished ``timeout``
    seconds after this call; TypeError for something that is not a Result (at the
    call), TaskNotFound for a purged task.
    """
    timeout = _check_timeout(timeout, "as_completed")
    by_future = _futures_of(results, "as_completed")
    return _completed(by_future, timeout)


def _completed(by_future, timeout):
    left = len(by_future)
    try:
        for fut in concurrent.futures.as_completed(by_future, timeout):
            left -= 1
            yield by_future[fut]
    except TimeoutError:
        raise TimeoutError(f"{left} of {len(by_future)} tasks not finished after {timeout}s") from None

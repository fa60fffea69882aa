"""What a running task sees: ``current_task()``, ``progress()``, cancellation and
timeout checks, and the buffer its captured stdout/stderr is written to.

Progress and output are kept in memory and written to the store at most every
``FLUSH_INTERVAL`` seconds (and when the task ends), so a task may call
``progress()`` in a tight loop: each call costs a few attribute writes and a
clock read, and a flush only touches the store a few times a second.
"""

import math
import numbers
import threading
import time

from ..exceptions import TaskCancelled, TaskTimeout

FLUSH_INTERVAL = 0.1

_local = threading.local()


class TaskContext:
    """The running task, as seen from inside it (``nbqueue.current_task()``)."""

    def __init__(self, rec, store, output_limit):
        self.id = rec.id
        self.name = rec.name
        self.attempt = rec.attempts
        self._store = store
        self._cancel = rec.cancel_requested
        self._deadline = None if rec.timeout is None else time.monotonic() + rec.timeout
        self._timeout = rec.timeout
        self._done = rec.progress_done
        self._total = rec.progress_total
        self._message = rec.progress_message
        self._chunks = [rec.output] if rec.output else []
        self._size = len(rec.output or "")
        self._limit = output_limit
        self._dirty = False
        self._next_flush = time.monotonic() + FLUSH_INTERVAL
        self._flush_lock = threading.Lock()
        self._ended = False
        self._loop = None     # set while an async task runs: cancel() pokes it
        self._atask = None

    def __repr__(self):
        return f"<TaskContext {self.name} id={self.id} attempt={self.attempt}>"

    @property
    def cancelled(self):
        """True once ``cancel()`` was asked for this task."""
        return self._cancel

    @property
    def timed_out(self):
        return self._deadline is not None and time.monotonic() > self._deadline

    def check_cancelled(self):
        """Raise TaskCancelled if cancel was asked, TaskTimeout if past the timeout."""
        if self._cancel:
            raise TaskCancelled(f"task {self.id} ({self.name}) was cancelled")
        now = time.monotonic()
        if self._deadline is not None and now > self._deadline:
            raise TaskTimeout(f"task {self.id} ({self.name}) ran past its timeout of {self._timeout}s")
        if now >= self._next_flush:
            self.flush(now)

    def progress(self, done, total=None, message=None):
        """Report progress: ``done`` of ``total`` (keeps the last total), and a message.

        Also checks cancellation and timeout (raises like ``check_cancelled``).
        Raises TypeError/ValueError for a ``done`` or ``total`` that is not a finite
        number >= 0 (``total`` > 0), storing nothing.
        """
        done = _progress_number(done, "done")
        if total is not None:
            self._total = _progress_number(total, "total", positive=True)
        self._done = done
        if message is not None:
            self._message = str(message)
        self._dirty = True
        self.check_cancelled()

    # ---- worker side -------------------------------------------------
    def request_cancel(self):
        self._cancel = True
        loop, atask = self._loop, self._atask
        if loop is not None and atask is not None:
            loop.call_soon_threadsafe(atask.cancel)

    def write(self, text):
        """Append captured output, keeping only the last ``output_limit`` characters."""
        self._chunks.append(text)
        self._size += len(text)
        if self._size > 2 * self._limit:
            self._compact()
        self._dirty = True
        now = time.monotonic()
        if now >= self._next_flush:
            self.flush(now)

    def _compact(self):
        text = "".join(self._chunks)[-self._limit:] if self._limit else ""  # [-0:] is everything
        self._chunks = [text]
        self._size = len(text)

    def output(self):
        self._compact()
        return self._chunks[0] if self._chunks else ""

    def fields(self):
        """The record fields this context owns: progress and output."""
        return {"progress_done": self._done, "progress_total": self._total,
                "progress_message": self._message, "output": self.output()}

    def final_fields(self):
        """``fields()`` if anything changed since the last flush, else nothing: a task
        that printed and reported nothing ends without rewriting them."""
        return self.fields() if self._dirty else {}

    def flush(self, now=None):
        """Write progress and output to the store if they changed; learn of a cancel
        asked from another process. Safe from any thread."""
        self._next_flush = (now or time.monotonic()) + FLUSH_INTERVAL
        if not self._dirty:
            return
        with self._flush_lock:
            if self._ended:
                return
            self._dirty = False
            cancel = self._store.update(self.id, **self.fields())
        if cancel:
            self.request_cancel()

    def end(self):
        """Stop flushing (the worker writes the final fields with the outcome)."""
        with self._flush_lock:
            self._ended = True


def _progress_number(value, what, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"progress({what}={value!r}): give a number")
    value = float(value) if not isinstance(value, int) else value
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"progress({what}={value!r}): give a finite number "
                         + ("> 0" if positive else ">= 0"))
    return value


def current_task():
    """The running task's context, or None outside a task."""
    return getattr(_local, "ctx", None)


def progress(done, total=None, message=None):
    """Report the current task's progress; a no-op outside a task.

    Raises TaskCancelled or TaskTimeout when the task should stop.
    """
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        ctx.progress(done, total, message)


def check_cancelled():
    """Raise TaskCancelled (or TaskTimeout) if the current task should stop; else nothing."""
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        ctx.check_cancelled()


def enter(ctx):
    _local.ctx = ctx


def leave():
    _local.ctx = None

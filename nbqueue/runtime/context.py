"""What a running task sees: ``current_task()``, ``progress()``, cancellation and
timeout checks, and the buffer its captured stdout/stderr is written to.

Progress and output are kept in memory and written to the store at most every
``FLUSH_INTERVAL`` seconds (and when the task ends), so a task may call
``progress()`` in a tight loop: each call costs a few attribute writes and a
clock read, and a flush only touches the store a few times a second.

A task that never checks is stopped by the pool's heartbeat (``watch``): after
a ``GRACE`` it raises TaskCancelled/TaskTimeout in the task's thread
(``interrupt``). Meanwhile the record's progress message says the task is
stopping, and whether it waits for a C call to return.
"""

import threading
import time

from ..exceptions import TaskCancelled, TaskTimeout
from ..validation import check_number
from . import interrupt

FLUSH_INTERVAL = 0.1

_local = threading.local()


class TaskContext:
    """The running task, as seen from inside it (``nbqueue.current_task()``).

    Made by the worker in the thread that runs the task."""

    def __init__(self, rec, store, output_limit, notes=True):
        self.id = rec.id
        self._notes = notes    # False in a process worker's child: its parent writes the notes
        self.name = rec.name
        self.attempt = rec.attempts
        self._store = store
        self._started = time.monotonic()
        self._cancel = rec.cancel_requested
        self._cancel_at = self._started if rec.cancel_requested else None
        self._deadline = None if rec.timeout is None else self._started + rec.timeout
        self._timeout = rec.timeout
        self.interrupter = interrupt.Interrupter(threading.get_ident())
        self.waker = None      # wakes the heartbeat that watches this run (set by the pool)
        self.on_cancel = None  # called at a cancel (a process worker tells its child at once)
        self._note = None      # "cancelling…": shown in the progress message while stopping
        self._note_shown = False
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

    @property
    def interrupted(self):
        """True once the worker raised TaskCancelled/TaskTimeout in this task's
        thread because it did not stop on its own within the grace."""
        return self.interrupter.sent > 0

    @property
    def interrupted_at(self):
        """``time.time()`` of the first such interrupt, or None."""
        return self.interrupter.first_sent_wall

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
        """Ask the run to stop (from any thread): its next check raises, an async
        task is cancelled, and the heartbeat interrupts it after ``GRACE``. The
        record says "cancelling…" at once. Raises nothing."""
        first = not self._cancel
        self._cancel = True
        loop, atask = self._loop, self._atask
        if loop is not None and atask is not None:
            loop.call_soon_threadsafe(atask.cancel)
        if first:
            self._cancel_at = time.monotonic()
            hook = self.on_cancel
            if hook is not None:
                hook()
            waker = self.waker
            if waker is not None:
                waker()  # the grace starts now, not at the heartbeat's next pass
            try:
                self.watch(self._cancel_at)
            except Exception:  # a store hiccup: the heartbeat writes the note at its next pass
                pass

    def watch(self, now):
        """Heartbeat side: interrupt the run if it should have stopped ``GRACE``
        seconds ago (TaskCancelled for a cancel, else TaskTimeout), again every
        ``interrupt.REPEAT`` seconds while it goes on; write the stopping note to
        the record when it changes. Returns the monotonic time it next wants a
        look, or None. Raises what the store raises."""
        if self._ended:
            return None
        if self._cancel:
            due = self.interrupter.poke(interrupt.CancelInterrupt, self._cancel_at + interrupt.GRACE, now)
        elif self._deadline is None:
            return None
        elif now < self._deadline:
            return self._deadline
        else:
            due = self.interrupter.poke(interrupt.TimeoutInterrupt, self._deadline + interrupt.GRACE, now)
        note = self._stop_note()
        if note != self._note:
            self._note, self._dirty = note, True
            self.flush(now)
        return due

    def _stop_note(self):
        itr = self.interrupter
        what = "cancelling" if self._cancel else f"timed out after {self._timeout:g} s, stopping"
        waited = itr.armed_for
        if waited is not None and waited >= interrupt.STUCK:
            return f"{what}: interrupted, waiting for the C call it is in to return"
        if itr.landed:
            return f"{what}: interrupted {itr.landed} time{'s' if itr.landed > 1 else ''}, still running"
        return f"{what}: interrupted" if itr.sent else f"{what}…"

    def stop_detail(self):
        """How this run was stopped, for its final record: "interrupted after a
        1.0 s grace", "the C call it was in returned after 3.0 s", "it caught the
        interrupt and returned...", "it finished late..."; None if it stopped on
        its own (or did not need to)."""
        itr = self.interrupter
        if not itr.landed:
            if itr.returned and self.timed_out:
                return f"it finished late, after {time.monotonic() - self._started:.1f} s"
            return None
        if itr.returned:
            return "it caught the interrupt and returned; its value was dropped"
        cancel = issubclass(itr.landed_kind, TaskCancelled)
        if itr.stuck:
            if cancel and self._cancel_at is not None:
                return (f"the C call it was in returned "
                        f"{itr.landed_at - self._cancel_at:.1f} s after the cancel")
            return f"the C call it was in returned after {itr.landed_at - self._started:.1f} s"
        return f"interrupted after a {interrupt.GRACE:.1f} s grace"

    def timeout_error(self, detail=None):
        """The TaskTimeout that ends this run, saying how it was stopped."""
        text = f"task {self.id} ({self.name}) ran past its timeout of {self._timeout}s"
        return TaskTimeout(f"{text}; {detail}" if detail else text)

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

    def fields(self, note=True):
        """The record fields this context owns: progress and output. While the run
        is being stopped (and ``note``), the progress message starts with a note
        saying so."""
        message = self._message
        if note and self._notes and self._note:
            message = f"{self._note} · {message}" if message else self._note
        return {"progress_done": self._done, "progress_total": self._total,
                "progress_message": message, "output": self.output()}

    def restart_clock(self):
        """Count the timeout from now (a process worker: once the call is loaded)."""
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout

    def mirror(self, fields):
        """Take progress and output a process worker's child reported (its own
        TaskContext's ``fields``) as this run's, to be flushed from here."""
        if "progress_done" in fields:
            self._done, self._total = fields["progress_done"], fields.get("progress_total")
        if "progress_message" in fields:
            self._message = fields["progress_message"]
        if "output" in fields:
            text = fields["output"] or ""
            self._chunks, self._size = [text], len(text)
        self._dirty = True

    def final_fields(self):
        """``fields()`` without the stopping note if anything changed since the last
        flush or a note was written, else nothing: a task that printed and reported
        nothing ends without rewriting them."""
        return self.fields(note=False) if self._dirty or self._note_shown else {}

    def flush(self, now=None):
        """Write progress and output to the store if they changed; learn of a cancel
        asked from another process. Safe from any thread; in the task's thread the
        store write is never interrupted (``interrupt.shielded``)."""
        self._next_flush = (now or time.monotonic()) + FLUSH_INTERVAL
        if not self._dirty:
            return
        with interrupt.shielded(), self._flush_lock:
            if self._ended:
                return
            self._dirty = False
            fields = self.fields()
            try:
                cancel = self._store.update(self.id, **fields)
            except BaseException:
                self._dirty = True  # written at the next flush
                raise
            self._note_shown = self._note_shown or bool(self._note)
        if cancel:
            self.request_cancel()

    def end(self):
        """Stop flushing (the worker writes the final fields with the outcome)."""
        with self._flush_lock:
            self._ended = True


def _progress_number(value, what, positive=False):
    checked = check_number(value, f"progress() argument {what}", minimum=0, strict=positive)
    return value if isinstance(value, int) else checked  # a count stays a whole number


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

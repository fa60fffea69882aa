"""Interrupting a thread task that never checks, the way Ctrl-C reaches the main thread.

The pool's heartbeat raises ``TaskCancelled``/``TaskTimeout`` in a task's thread
with CPython's ``PyThreadState_SetAsyncExc``. Such an exception lands at the
thread's next bytecode check: at once in a pure-Python loop, when the call
returns in a C call (``time.sleep``, a long numpy operation).

It must land in the user's code only, never in nbqueue's bookkeeping (a store
write half done, a lock held). One ``Interrupter`` per run keeps that promise:

- ``call_user`` opens it right before the user's function is called and closes
  it right after, under ``_guard``; the watcher sends only under ``_guard`` and
  only while it is open. Closing clears an exception sent but not landed yet.
- nbqueue code a task calls (``flush`` of progress and output) runs inside
  ``shielded()``: no sends meanwhile, and one sent but not landed is withdrawn
  (the watcher sends it again once the shield is left).

Why no check can slip in: CPython checks for a pending exception when a frame
starts, on a backward jump and at the end of a call to a C function, never
between taking a lock in a ``with`` and entering its body. The sections under
``_guard`` below call no Python function; their one C call clears the pending
exception itself, and after it nothing can be sent while the section holds the lock.
"""

import ctypes
import functools
import threading
import time

from ..exceptions import TaskCancelled, TaskTimeout

GRACE = 1.0    # seconds a task that checks cooperatively gets to stop on its own
REPEAT = 2.0   # a run that caught the interrupt and went on gets it again this often
STUCK = 0.25   # an interrupt not landed after this waits for a C call to return
RETRY = 0.05   # the user's code is not running just now (it is in nbqueue): look again soon

# CPython's public C API (``PyThreadState_SetAsyncExc``), typed twice: to send an
# exception class, and to clear what is pending (NULL).
_send = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))

_local = threading.local()  # .itr: the Interrupter whose user code this thread runs


class Interrupt:
    """Mixin of the exceptions the watcher raises in a task's thread."""

    default = "interrupted"

    def __init__(self, *args):
        # CPython makes the instance with no arguments where it lands (or at the
        # first handler): note the landing. An unpickled copy has its message.
        if not args:
            itr = getattr(_local, "itr", None)
            if itr is not None:
                itr._landed(type(self))
        super().__init__(*(args or (self.default,)))


class CancelInterrupt(Interrupt, TaskCancelled):
    """``TaskCancelled`` raised in the task's thread: cancel() was asked."""

    default = "interrupted: cancel() was asked for this task"


class TimeoutInterrupt(Interrupt, TaskTimeout):
    """``TaskTimeout`` raised in the task's thread: it ran past its timeout."""

    default = "interrupted: the task ran past its timeout"


class Interrupter:
    """The interrupt state of one run on one thread (``ident``).

    Read-only for others: ``sent`` (how many sends), ``first_sent`` (monotonic)
    and ``first_sent_wall`` (``time.time()``), ``landed`` (how many landed),
    ``landed_at`` (monotonic) and ``landed_kind`` (class) of the last one,
    ``stuck`` (it landed only when a C call returned), ``wait`` (seconds from
    its send to its landing), ``returned`` (the user's function returned).
    """

    def __init__(self, ident):
        self.ident = ident
        self._arg = ctypes.c_ulong(ident)  # built once: no call needed under _guard
        self._guard = threading.Lock()
        self._open = False      # the user's function runs: sends allowed
        self._done = False      # it has returned: never again
        self._shields = 0       # nbqueue code it called runs: no sends
        self._armed = None      # monotonic time of the send not landed yet, or None
        self._kinds = set()     # classes sent at least once
        self._last_sent = None
        self.sent = 0
        self.first_sent = None
        self.first_sent_wall = None  # time.time() of the first send
        self.landed = 0
        self.landed_at = None   # monotonic time the last one landed
        self.landed_kind = None
        self.stuck = False
        self.wait = None
        self.returned = False   # the user's function returned (did not raise)

    # ---- watcher side ------------------------------------------------------
    @property
    def armed_for(self):
        """Seconds the last send has waited to land (None: nothing pending)."""
        armed = self._armed
        return None if armed is None else time.monotonic() - armed

    def poke(self, exc_type, first_due, now):
        """Send ``exc_type`` if due: first at ``first_due``, then every ``REPEAT``
        seconds (a send while one is pending only replaces it). Atomic with
        respect to the task thread's open/close/shield. Returns the monotonic time
        to look again, or None (the user's code has returned). Raises nothing."""
        with self._guard:
            if self._done:
                return None
            due = first_due if exc_type not in self._kinds else self._last_sent + REPEAT
            if now < due:
                if self._armed is not None and now < self._armed + STUCK:
                    return min(due, self._armed + STUCK)  # time to say it waits for C
                return due
            if not self._open or self._shields:
                return now + RETRY
            # Noted before sending: it may land (``_landed``) before _send returns here.
            if self._armed is None:
                self._armed = now
            self._last_sent = now
            self._kinds.add(exc_type)
            self.sent += 1
            if self.first_sent is None:
                self.first_sent, self.first_sent_wall = now, time.time()
            if _send(self._arg, exc_type) != 1:
                _clear(self._arg, None)  # 0: no such thread; >1 would be a CPython bug
                self._done = True
                return None
            return now + STUCK

    # ---- task thread side ----------------------------------------------------
    def _landed(self, kind):
        # Attribute writes only: this runs where the exception lands.
        now = time.monotonic()
        armed = self._armed if self._armed is not None else now
        self._armed = None
        self.landed += 1
        self.landed_at = now
        self.landed_kind = kind
        self.wait = now - armed
        self.stuck = self.wait >= STUCK

    def __enter__(self):
        """Shield: nbqueue code called from the user's code runs without interrupts."""
        with self._guard:
            self._shields += 1
            if self.sent:
                # ``_armed`` is a hint (a send may race a landing): clear whatever is
                # pending, and have the watcher send again at once if one was.
                _clear(self._arg, None)
                if self._armed is not None:
                    self._armed = None
                    self._kinds.clear()
        return self

    def __exit__(self, *exc):
        with self._guard:
            self._shields -= 1
        return False


class _NoShield:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_SHIELD = _NoShield()


def shielded():
    """A context manager under which this thread's task cannot be interrupted
    (nbqueue's own work done for it: a store write, a lock held). Outside a
    task's user code it does nothing. Raises nothing itself."""
    itr = getattr(_local, "itr", None)
    return _NO_SHIELD if itr is None else itr


def call_user(itr, func, args, kwargs):
    """``func(*args, **kwargs)`` with interrupts allowed while it runs, and only then.

    Returns what it returns, raises what it raises (an interrupt that landed on the
    way in or out included). When this returns or raises, no interrupt is pending
    for this thread and none will be sent to it for this run.
    """
    try:
        _local.itr = itr
        with itr._guard:
            itr._open = True
        value = func(*args, **kwargs)
        itr.returned = True
        return value
    finally:
        # No Python call from here to the end of the ``with``: see the module doc.
        with itr._guard:
            itr._open = False
            itr._done = True
            if itr.sent:
                _clear(itr._arg, None)
                itr._armed = None
        _local.itr = None


def shield(method):
    """Decorate an nbqueue method a task may call (a submit, a read of another task):
    no interrupt lands inside it, so a store's indexes are never left half changed."""
    @functools.wraps(method)
    def shielded_method(*args, **kwargs):
        itr = getattr(_local, "itr", None)
        if itr is None:  # not inside a task's user code: nothing to shield from
            return method(*args, **kwargs)
        with itr:
            return method(*args, **kwargs)
    return shielded_method

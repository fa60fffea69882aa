"""The errors nbqueue raises, and the two exceptions a task raises to steer its own run.

``TaskCancelled`` is also a ``concurrent.futures.CancelledError`` and
``InvalidStateError`` also a ``concurrent.futures.InvalidStateError``, so code
written for concurrent.futures catches them unchanged.
"""

import concurrent.futures  # only its small _base loads; the executors load on first use


class NbqueueError(Exception):
    """Base class of every error nbqueue raises."""


class TaskException(NbqueueError):
    """Raised by ``Result.get()`` for a task that failed.

    Carries what the task raised: ``exc_type`` (qualified name), ``message``,
    ``traceback`` (text, formatted in the worker) and ``exc`` (the original
    exception object when it could be kept or unpickled, else None).
    """

    def __init__(self, exc_type, message, traceback="", exc=None, task_id=None):
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.exc = exc
        self.task_id = task_id
        super().__init__(f"{exc_type}: {message}" if message else exc_type)

    def __reduce__(self):  # its __init__ takes more than the message
        return type(self), (self.exc_type, self.message, self.traceback, self.exc, self.task_id)


class TaskTraceback(Exception):
    """The traceback of a task's exception as text, formatted where the task ran.

    ``Result.get()`` chains it as the ``__cause__`` of the task's exception when
    that exception crossed a pickle (which drops tracebacks), the way
    ``concurrent.futures.ProcessPoolExecutor`` shows a remote traceback: the
    printed traceback then shows the task's own lines.
    """

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return f'\n"""\n{self.text.rstrip()}\n"""'


class TaskCancelled(NbqueueError, concurrent.futures.CancelledError):
    """The task was cancelled; also raised inside a task by ``check_cancelled()``.

    Also a ``concurrent.futures.CancelledError``.
    """


class TaskTimeout(NbqueueError):
    """The task ran past its ``timeout``; raised inside the task at its next check."""


class TaskNotFound(KeyError, NbqueueError):
    """No task with this id is in the store (never submitted, or purged)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidStateError(NbqueueError, concurrent.futures.InvalidStateError):
    """A task was asked to make a move its state machine does not allow.

    Also a ``concurrent.futures.InvalidStateError``.
    """


class WorkerLost(NbqueueError):
    """The task's worker died more than ``max_recoveries`` times while running it."""


class PayloadRejected(NbqueueError):
    """A stored payload, value or job failed its signature check (unsigned, or
    signed with another secret) and was not unpickled. The task it belongs to
    fails with this error; nothing else is affected."""


class StoreUnavailable(NbqueueError, ConnectionError):
    """The store's server (Redis) cannot be reached. The message names it. A
    change the call asked for was made whole or not at all (if the server went
    away mid-call, either may be true)."""


class QueueClosed(NbqueueError, RuntimeError):
    """A task was submitted to a queue after ``shutdown()``."""


class RetryTask(Exception):
    """Raise inside a task to run it again later without using up a retry.

    ``delay`` is in seconds; None uses the task's ``retry_delay``.
    """

    def __init__(self, delay=None, message=""):
        if delay is not None and delay < 0:
            raise ValueError(f"RetryTask(delay={delay!r}): delay must be >= 0 seconds")
        self.delay = delay
        super().__init__(message or (f"retry in {delay}s" if delay is not None else "retry"))


class CancelExecution(Exception):
    """Raise inside a task to stop it; it ends ``cancelled``, not ``failed``."""

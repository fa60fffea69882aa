"""The ``@q.task`` wrapper, task options, signatures and pipelines."""

import dataclasses
import datetime
import functools
import inspect
import numbers
import time
from typing import Optional


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_on: tuple = (Exception,)
    timeout: Optional[float] = None
    priority: int = 0
    expires: object = None  # seconds, timedelta or datetime; see ``expires_at``


def _seconds(value, what, allow_none=True, minimum=0.0, strict=False):
    if value is None and allow_none:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{what}={value!r}: must be {bound} seconds")
    return float(value)


def make_options(retries=0, retry_delay=0.0, retry_backoff=1.0, retry_on=None, timeout=None,
                 priority=0, expires=None):
    """Validated TaskOptions. Raises ValueError/TypeError saying what to pass instead."""
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
        raise TypeError(f"retries must be a whole number, not {retries!r}")
    if retries < 0:
        raise ValueError(f"retries={retries}: must be >= 0 (0 means no retries)")
    retry_delay = _seconds(retry_delay, "retry_delay", allow_none=False)
    if isinstance(retry_backoff, bool) or not isinstance(retry_backoff, numbers.Real) or retry_backoff < 1:
        raise ValueError(f"retry_backoff={retry_backoff!r}: must be a number >= 1 "
                         "(1 keeps the delay, 2 doubles it each retry)")
    if retry_on is None:
        retry_on = (Exception,)
    elif isinstance(retry_on, type):
        retry_on = (retry_on,)
    else:
        retry_on = tuple(retry_on)
    for cls in retry_on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on must hold exception classes, not {cls!r}")
    timeout = _seconds(timeout, "timeout", strict=True)
    if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
        raise TypeError(f"priority must be a whole number (higher runs first), not {priority!r}")
    if expires is not None and not isinstance(expires, datetime.datetime):
        _seconds(expires, "expires", strict=True)
    return TaskOptions(int(retries), retry_delay, float(retry_backoff), retry_on, timeout,
                       int(priority), expires)


def to_timestamp(when, what="eta"):
    """A ``time.time()`` float from a datetime (naive means local time) or a float."""
    if isinstance(when, datetime.datetime):
        return when.timestamp()
    if isinstance(when, numbers.Real) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"{what} must be a datetime, not {when!r}")


def expires_at(expires, now):
    if expires is None:
        return None
    if isinstance(expires, datetime.datetime):
        return expires.timestamp()
    return now + _seconds(expires, "expires", strict=True)


def eta_from(delay, eta, now):
    """The eta for ``schedule(delay=|eta=)``: one of them, or neither (run now)."""
    if delay is not None and eta is not None:
        raise ValueError("give delay= or eta=, not both")
    if delay is not None:
        return now + _seconds(delay, "delay", allow_none=False)
    if eta is not None:
        return to_timestamp(eta)
    return None


def task_name(func):
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return qualname if module == "__main__" else f"{module}.{qualname}"


class TaskFunction:
    """A function registered on a queue: calling it enqueues a run and returns a Result."""

    def __init__(self, queue, func, name, options):
        if not callable(func):
            raise TypeError(
                f"@task needs a function, got {func!r} ({type(func).__name__}); "
                "use @q.task or @q.task(retries=3, ...) above a def")
        self.queue = queue
        self.func = func
        self.name = name or task_name(func)
        self.options = options
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)

    def __repr__(self):
        return f"<TaskFunction {self.name} on queue {self.queue.name!r}>"

    def __call__(self, *args, **kwargs):
        """Enqueue a run now; returns its Result."""
        return self.queue._submit(self, args, kwargs)

    def schedule(self, args=(), kwargs=None, delay=None, eta=None, priority=None, expires=None):
        """Enqueue a run after ``delay`` seconds (or timedelta), or at ``eta`` (a datetime;
        naive means local time). Huey's form; returns a Result that is ``scheduled``."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"schedule(args=...) takes a tuple of arguments, not {args!r}; "
                            "write args=(x,) for one argument")
        return self.queue._submit(self, tuple(args), dict(kwargs or {}),
                                  eta=eta_from(delay, eta, time.time()),
                                  priority=priority, expires=expires)

    def call_local(self, *args, **kwargs):
        """Run the function here, synchronously, as a plain call (no queue, no record)."""
        return self.func(*args, **kwargs)

    def map(self, iterable):
        """Enqueue one run per item (a tuple item is unpacked as arguments); returns a
        ResultGroup. Nothing is enqueued if any item cannot be stored."""
        sigs = [self.s(*(item if isinstance(item, tuple) else (item,))) for item in iterable]
        return self.queue._submit_many(sigs)

    def s(self, *args, **kwargs):
        """A signature: this task with these arguments, not yet enqueued (for pipelines)."""
        return Signature(self, args, kwargs)


class Signature:
    """A task plus its arguments, not yet enqueued. ``q.enqueue(sig)`` runs it."""

    def __init__(self, task, args=(), kwargs=None):
        if not isinstance(task, TaskFunction):
            raise TypeError(f"a pipeline step must be a @q.task function, not {task!r}")
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def __repr__(self):
        return f"<Signature {self.task.name}{self.args!r}>"

    def then(self, task, *args, **kwargs):
        """A pipeline: after this step succeeds, run ``task(*args, value, **kwargs)``."""
        return Pipeline([self]).then(task, *args, **kwargs)


class Pipeline:
    """Steps run one after another; each gets the previous value as its last argument."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __repr__(self):
        return "<Pipeline " + " -> ".join(s.task.name for s in self.steps) + ">"

    def then(self, task, *args, **kwargs):
        step = task if isinstance(task, Signature) else Signature(task, args, kwargs)
        return Pipeline(self.steps + [step])

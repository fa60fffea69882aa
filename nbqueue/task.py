"""The ``@q.task`` wrapper, task options, signatures and pipelines."""

import dataclasses
import datetime
import functools
import hashlib
import inspect
import time
from typing import Optional

from .serializer import code_fingerprint, dumps
from .validation import (
    HORIZON,
    check_count,
    check_number,
    check_priority,
    check_seconds,
    check_timestamp,
)


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_on: tuple = (Exception,)
    timeout: Optional[float] = None
    priority: int = 0
    expires: object = None  # seconds, timedelta or datetime; see ``expires_at``
    cache: Optional[float] = None  # memoized: max age in seconds (inf: no limit); None: off


def make_options(retries=0, retry_delay=0.0, retry_backoff=1.0, retry_on=None, timeout=None,
                 priority=0, expires=None, cache=False):
    """Validated TaskOptions. Raises ValueError/TypeError saying what to pass instead."""
    check_count(retries, "retries", hint="(0 means no retries)")
    retry_delay = check_seconds(retry_delay, "retry_delay", maximum=30 * 86400.0)
    retry_backoff = check_number(retry_backoff, "retry_backoff", minimum=1.0, maximum=100.0)
    if retry_on is None:
        retry_on = (Exception,)
    elif isinstance(retry_on, type):
        retry_on = (retry_on,)
    else:
        retry_on = tuple(retry_on)
    for cls in retry_on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on must hold exception classes, not {cls!r}")
    if timeout is not None:
        timeout = check_seconds(timeout, "timeout", strict=True)
    check_priority(priority)
    if expires is not None and not isinstance(expires, datetime.datetime):
        check_seconds(expires, "expires", strict=True)
    if cache is True:
        cache = float("inf")
    elif cache is False or cache is None:
        cache = None
    else:
        cache = check_seconds(cache, "cache", strict=True)
    return TaskOptions(int(retries), retry_delay, retry_backoff, retry_on, timeout,
                       int(priority), expires, cache)


def expires_at(expires, now):
    """The ``time.time()`` at which a task expires, from seconds, a timedelta or a
    datetime. Raises TypeError/ValueError for anything else."""
    if expires is None:
        return None
    if isinstance(expires, datetime.datetime):
        return check_timestamp(expires, "expires", now)
    return now + check_seconds(expires, "expires", strict=True)


def eta_from(delay, eta, now):
    """The eta for ``schedule(delay=|eta=)``: one of them, or neither (run now).
    Raises TypeError/ValueError for a bad one (NaN, infinite, past 100 years)."""
    if delay is not None and eta is not None:
        raise ValueError("give delay= or eta=, not both")
    if delay is not None:
        return now + check_seconds(delay, "delay", maximum=HORIZON)
    if eta is not None:
        return check_timestamp(eta, "eta", now)
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
        naive means local time). Huey's form; returns a Result that is ``scheduled``.
        Every argument is checked before anything is stored (TypeError/ValueError)."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"schedule(args=...) takes a tuple of arguments, not {args!r}; "
                            "write args=(x,) for one argument")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"schedule(kwargs=...) takes a dict, not {kwargs!r}")
        now = time.time()
        when = eta_from(delay, eta, now)
        if priority is not None:
            check_priority(priority)
        if expires is not None:
            expires_at(expires, now)  # validates
        return self.queue._submit(self, tuple(args), dict(kwargs or {}), eta=when,
                                  priority=priority, expires=expires)

    def cache_key(self, args, kwargs):
        """The memo key of a call: the task's name, its function's code (not where it
        was defined, so re-running the same cell hits) and its arguments.
        Raises TypeError if the arguments cannot be pickled."""
        h = hashlib.sha256(self.name.encode())
        h.update(code_fingerprint(self.func))
        try:
            h.update(dumps((args, sorted(kwargs.items()))))
        except Exception as err:
            raise TypeError(f"{self.name}(cache=...): the arguments must be picklable to be "
                            f"a memo key ({type(err).__name__}: {err})") from err
        return h.hexdigest()

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

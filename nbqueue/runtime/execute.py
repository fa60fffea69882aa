"""Running one task's call and deciding its outcome, the same way in a worker
thread of the kernel and in a process worker's child (``child``).

``call`` runs the user's function (interruptible only there, coroutines on an
event loop of the thread with a real asyncio timeout); ``classify`` turns what
it raised into the run's final state and record fields.
"""

import asyncio
import inspect
import threading
import time

from ..exceptions import CancelExecution, RetryTask, TaskCancelled, TaskTimeout
from ..states import CANCELLED, FAILED, PENDING, RETRYING
from . import interrupt

PLAIN = frozenset((int, float, str, bytes, bool, type(None), list, dict, tuple))  # never awaitable
# nbqueue frames not shown in a task's traceback (the worker and the child add theirs)
HIDDEN = {interrupt.call_user.__code__}

_local = threading.local()  # .loop: this thread's event loop for async tasks


def call(ctx, rec, func, args, kwargs):
    """Run ``func(*args, **kwargs)`` for the task ``ctx`` runs; return its value.
    Raises what it raises, TaskCancelled if cancel was asked before it started or
    it caught the interrupt and went on, ``ctx.timeout_error`` if it finished
    after its timeout."""
    if ctx.cancelled:
        raise TaskCancelled(f"task {rec.id} was cancelled before it started")
    value = interrupt.call_user(ctx.interrupter, func, args, kwargs)
    if type(value) not in PLAIN and inspect.isawaitable(value):
        value = run_async(ctx, value, rec.timeout)
    if ctx.timed_out:  # it ignored the timeout and finished late anyway
        raise ctx.timeout_error(ctx.stop_detail())
    if ctx.interrupter.landed:  # it caught the interrupt and went on
        raise TaskCancelled(f"task {rec.id} ({rec.name}) was cancelled")
    return value


def run_async(ctx, awaitable, timeout):
    """Run a coroutine on this thread's own event loop, with a real asyncio timeout
    and cancel() reaching it through ``ctx.request_cancel``."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()

    async def guarded():
        if timeout is None:
            return await awaitable
        left = max(0.0, ctx._deadline - time.monotonic())
        async with asyncio.timeout(left):
            return await awaitable

    atask = loop.create_task(guarded())
    ctx._loop, ctx._atask = loop, atask
    if ctx.cancelled:
        atask.cancel()
    try:
        return loop.run_until_complete(atask)
    finally:
        ctx._loop = ctx._atask = None


HIDDEN.update((call.__code__, run_async.__code__))


def classify(ctx, rec, exc, retry_on, fields, describe):
    """Decide the outcome of a run that raised ``exc``; fill ``fields``; return the
    status. ``describe(exc)`` makes the stored error.

    Once an interrupt landed in the run, its outcome is the interrupt's
    (cancelled, or TaskTimeout), whatever the task raised after it."""
    landed = ctx.interrupter.landed
    detail = ctx.stop_detail()
    if isinstance(exc, (CancelExecution, TaskCancelled)) or (
            isinstance(exc, asyncio.CancelledError) and ctx.cancelled) or (
            landed and ctx.cancelled):
        user_said = isinstance(exc, CancelExecution) and str(exc)
        fields["message"] = user_said or (
            f"cancelled: {detail}" if detail else "cancelled while running")
        return CANCELLED
    if landed and not isinstance(exc, TaskTimeout) or isinstance(exc, interrupt.Interrupt):
        # A TimeoutInterrupt, or what the task raised after one: a TaskTimeout
        # saying how it was stopped, at the line it was stopped at.
        timeout = ctx.timeout_error(detail)
        timeout.__context__ = exc.__context__ if isinstance(exc, interrupt.Interrupt) else exc
        exc = timeout.with_traceback(exc.__traceback__)
    if isinstance(exc, RetryTask):  # does not use up a retry
        delay = rec.retry_delay if exc.delay is None else exc.delay
        fields["message"] = f"RetryTask: {exc}"
        if delay <= 0:
            return PENDING
        fields["eta"] = time.time() + delay
        return RETRYING
    if isinstance(exc, TimeoutError) and ctx.timed_out and not isinstance(exc, TaskTimeout):
        # asyncio.timeout() raises a plain TimeoutError: report it as ours
        exc = ctx.timeout_error()
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code in HIDDEN:
        tb = tb.tb_next
    exc = exc.with_traceback(tb)  # the user's frames only
    why = f" ({detail})" if detail and isinstance(exc, TaskTimeout) else ""
    return fail_or_retry(rec, exc, isinstance(exc, retry_on), fields, describe, why,
                         f"timed out: {detail}" if why else None)


def fail_or_retry(rec, exc, retryable, fields, describe, why="", message=None):
    """A run that failed with ``exc``: RETRYING (fields say when) if it may be
    retried and retries remain, else FAILED. Fills ``fields``; returns the status."""
    fields["error"] = describe(exc)
    if retryable and rec.retries_used < rec.retries:
        fields["retries_used"] = rec.retries_used + 1
        fields["eta"] = time.time() + rec.retry_delay * rec.retry_backoff ** rec.retries_used
        fields["message"] = (f"retry {rec.retries_used + 1} of {rec.retries} "
                             f"after {type(exc).__name__}{why}")
        return RETRYING
    if message:
        fields["message"] = message
    return FAILED

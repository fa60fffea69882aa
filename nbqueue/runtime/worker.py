"""The worker pool: claim, run, retry, timeout, cancel, and the lease heartbeat.

Worker threads wait on the store's condition (an in-process submit wakes one
at once); on a store shared with other processes they also poll it, backing
off to ``max_poll``. One heartbeat thread renews the leases of the tasks this
process runs, learns of cancels asked elsewhere, writes quiet tasks' progress,
and requeues tasks whose worker died (``requeue_expired``) about once a second.

The heartbeat also stops thread tasks that never check: ``interrupt.GRACE``
after a cancel or a timeout it raises TaskCancelled/TaskTimeout in the task's
thread, and again every ``interrupt.REPEAT`` seconds while it still runs. Once
one landed, the run ends cancelled (or failed with TaskTimeout) whatever the
task does next. It wakes for those moments, else once a second.
"""

import asyncio
import inspect
import sys
import threading
import time

from ..exceptions import CancelExecution, RetryTask, TaskCancelled, TaskTimeout
from ..states import CANCELLED, FAILED, FINISHED, PENDING, RETRYING, SUCCEEDED
from . import capture, context, interrupt

MIN_POLL = 0.002
MIN_BEAT = 0.005  # the heartbeat never spins, whatever a task's deadline says
PLAIN = frozenset((int, float, str, bytes, bool, type(None), list, dict, tuple))  # never awaitable


class WorkerPool:
    """``workers`` threads running the tasks of ``state`` (a ``QueueState``), plus
    one heartbeat thread."""

    def __init__(self, state, workers):
        self.state = state
        self.store = state.store
        self.lease = state.lease
        # Shared by every pool a re-run Queue cell creates, so the new pool's
        # heartbeat keeps renewing the leases of tasks the old pool still runs.
        self.worker_id = state.worker_id
        self._target = workers
        self._threads = []
        self._stopping = threading.Event()
        self._wake = threading.Event()  # the heartbeat looks again now (a cancel was asked)
        self._heartbeat = None
        self._local_loop = threading.local()

    @property
    def size(self):
        return self._target

    def start(self):
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                               name=f"nbqueue-{self.state.name}-heartbeat")
            self._heartbeat.start()
        self.resize(self._target)

    def resize(self, workers):
        """Grow or shrink to ``workers`` threads; extra threads exit once idle."""
        self._target = workers
        self._threads = [t for t in self._threads if t.is_alive()]
        for index in range(len(self._threads), workers):
            t = threading.Thread(target=self._loop, args=(index,), daemon=True,
                                 name=f"nbqueue-{self.state.name}-worker-{index}")
            self._threads.append(t)
            t.start()
        if len(self._threads) > workers:
            self.store.notify_work(len(self._threads))

    def stop(self, wait=True):
        """Ask every thread to exit once its current task is done; join them if ``wait``."""
        self._target = 0
        self._stopping.set()
        self._wake.set()
        self.store.notify_work(len(self._threads) + 1)
        if wait:
            for t in self._threads + [self._heartbeat]:
                if t is not None and t is not threading.current_thread():
                    t.join()

    # ---- worker threads ------------------------------------------------
    def _loop(self, index):
        store = self.store
        poll = MIN_POLL
        rec = None
        looked_at = None  # the store's work sequence number before our last look found nothing

        def keep_going():
            return not self._stopping.is_set() and index < self._target

        while rec is not None or keep_going():  # a task already claimed is run, never dropped
            if rec is None:
                if looked_at is not None:
                    store.wait_for_work(looked_at, poll if store.shared else None)
                    poll = min(poll * 2, store.max_poll)
                looked_at = store.work_seq
                try:
                    rec = store.claim(self.worker_id, self.lease)
                except Exception:  # a store hiccup (disk full, locked) must not kill the worker
                    self.state.log("claim failed", sys.exc_info())
                    time.sleep(poll)
                    poll = min(poll * 2, store.max_poll)
                    looked_at = None
                    continue
                if rec is None:
                    continue
            poll = MIN_POLL
            looked_at = store.work_seq
            try:
                rec = self.run(rec, claim_next=keep_going)
            except BaseException as exc:  # not a task error (those are caught in run): ours
                self.state.log(f"worker error running task {rec.id}", sys.exc_info())
                self._fail_unhandled(rec, exc)
                rec = None

    def run(self, rec, claim_next=None):
        """Run one claimed task to its outcome and write that outcome to the store.

        If ``claim_next()`` is true when the task ends (asked then: the pool may be
        stopping or shrinking meanwhile), the same store transaction claims the next
        task, which is returned (or None)."""
        state = self.state
        ctx = context.TaskContext(rec, self.store, state.output_limit)
        ctx.waker = self._wake.set
        state.running[rec.id] = ctx
        routed = capture.route_to(state.parents.get(rec.id), displays=state.displays, task_id=rec.id)
        capture.install_capture()
        context.enter(ctx)
        fields = {}
        retry_on = ()  # a call that cannot even be loaded is not retried
        try:
            func, args, kwargs, retry_on = state.resolve_call(rec)
            if rec.has_prev:
                args = args + (state.decode_value(rec.prev),)
            if ctx.cancelled:
                raise TaskCancelled(f"task {rec.id} was cancelled before it started")
            hit, cached = state.memo_lookup(rec) if rec.cache_key else (False, None)
            if hit:  # memoized: an earlier call with the same code and arguments
                fields["result"], fields["cached"] = cached, True
            else:
                # Interruptible only in there; nothing is pending once it is over.
                value = interrupt.call_user(ctx.interrupter, func, args, kwargs)
                if type(value) not in PLAIN and inspect.isawaitable(value):
                    value = self._run_async(ctx, value, rec.timeout)
                if ctx.timed_out:  # it ignored the timeout and finished late anyway
                    raise ctx.timeout_error(ctx.stop_detail())
                if ctx.interrupter.landed:  # it caught the interrupt and went on
                    raise TaskCancelled(f"task {rec.id} ({rec.name}) was cancelled")
                fields["result"] = state.encode_value(value)
                if rec.cache_key:
                    state.memo_store(rec, fields["result"])
            status = SUCCEEDED
        except BaseException as exc:  # noqa: B036 -- user code must never kill the worker
            status = self._classify(ctx, rec, exc, retry_on, fields)
        finally:
            context.leave()
            capture.unroute(routed)
            ctx.end()
            state.running.pop(rec.id, None)
        fields.update(ctx.final_fields())
        # Not finished: our lease ran out and the task was requeued; its new run owns it.
        finished, nxt = self.store.finish_and_claim(
            rec.id, self.worker_id, status, self.lease if claim_next and claim_next() else None,
            **fields)
        if finished and status in FINISHED:
            state.task_finished(rec.id)
        return nxt

    def _fail_unhandled(self, rec, exc):
        # Don't leave the task running under a lease we keep renewing forever.
        self.state.running.pop(rec.id, None)
        try:
            if self.store.finish(rec.id, self.worker_id, FAILED, error=self.state.describe(exc)):
                self.state.task_finished(rec.id)
        except Exception:
            self.state.log(f"could not record the failure of task {rec.id}", sys.exc_info())

    def _classify(self, ctx, rec, exc, retry_on, fields):
        """Decide the outcome of a run that raised ``exc``; fill ``fields``; return the status.

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
        while tb is not None and tb.tb_frame.f_code in OUR_FRAMES:
            tb = tb.tb_next
        exc = exc.with_traceback(tb)  # the user's frames only
        fields["error"] = self.state.describe(exc)
        why = f" ({detail})" if detail and isinstance(exc, TaskTimeout) else ""
        if rec.retries_used < rec.retries and isinstance(exc, retry_on):
            fields["retries_used"] = rec.retries_used + 1
            fields["eta"] = time.time() + rec.retry_delay * rec.retry_backoff ** rec.retries_used
            fields["message"] = (f"retry {rec.retries_used + 1} of {rec.retries} "
                                 f"after {type(exc).__name__}{why}")
            return RETRYING
        if why:
            fields["message"] = f"timed out: {detail}"
        return FAILED

    def _run_async(self, ctx, awaitable, timeout):
        """Run a coroutine on this thread's own event loop, with a real asyncio timeout
        and cancel() reaching it through ``ctx.request_cancel``."""
        loop = getattr(self._local_loop, "loop", None)
        if loop is None or loop.is_closed():
            loop = self._local_loop.loop = asyncio.new_event_loop()

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

    # ---- heartbeat -----------------------------------------------------
    def _beat(self):
        """Upkeep every ``period``; between, wake for the moments a running task is
        due an interrupt (``TaskContext.watch``). Idle, it wakes once a second."""
        period = min(1.0, self.lease / 3)
        last_renew = time.monotonic()
        next_upkeep = wake_at = last_renew + period
        while True:
            self._wake.wait(max(MIN_BEAT, wake_at - time.monotonic()))
            self._wake.clear()  # before looking: a cancel asked from now on wakes us again
            if self._stopping.is_set():
                return
            now = time.monotonic()
            soonest = None  # the earliest moment a running task wants a look
            try:
                running = dict(self.state.running)
                for ctx in running.values():
                    ctx.waker = self._wake.set  # a re-run Queue's pool watches the old one's tasks
                    due = ctx.watch(now)
                    if due is not None and (soonest is None or due < soonest):
                        soonest = due
                if now >= next_upkeep:
                    next_upkeep = now + period
                    last_renew = self._upkeep(running, now, last_renew)
            except Exception:
                self.state.log("heartbeat error", sys.exc_info())
            wake_at = next_upkeep if soonest is None else min(next_upkeep, soonest)

    def _upkeep(self, running, now, last_renew):
        """Renew leases (learning of cancels asked elsewhere), write quiet tasks'
        progress, requeue tasks whose worker died, housekeeping. Returns when the
        leases were last renewed."""
        if running and now - last_renew >= self.lease / 3 - 0.01:
            last_renew = now
            held = self.store.renew(list(running), self.worker_id, self.lease)
            for tid, cancel in held.items():
                if cancel:
                    running[tid].request_cancel()
        elif running and self.store.shared:
            # A cancel asked in another process, learnt within a second (a read, not
            # a write), not only at the next renewal (lease / 3) or the task's next print.
            for tid, ctx in running.items():
                rec = self.store.get(tid)
                if rec is not None and rec.cancel_requested and not ctx.cancelled:
                    ctx.request_cancel()
        for ctx in running.values():
            ctx.flush()
        self.store.requeue_expired(max_recoveries=self.state.max_recoveries,
                                   alive=self.state.alive)
        self.state.housekeeping()
        return last_renew


OUR_FRAMES = (WorkerPool.run.__code__, interrupt.call_user.__code__)  # not shown in a task's traceback

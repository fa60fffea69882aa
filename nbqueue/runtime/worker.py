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

import sys
import threading
import time

from ..states import FAILED, FINISHED, PENDING, RUNNING, SUCCEEDED
from . import capture, context, execute, procworker

MIN_POLL = 0.002
MIN_BEAT = 0.005  # the heartbeat never spins, whatever a task's deadline says
ORPHAN_AGE = 1.0  # seconds a claim of ours must be old before it counts as lost in transit
OUTCOME_PATIENCE = 300.0  # seconds a finished run's outcome waits for an unreachable store


class WorkerPool:
    """``workers`` threads running the tasks of ``state`` (a ``QueueState``), plus
    one heartbeat thread. ``kind="process"``: each thread runs its tasks in a child
    process of its own (``procworker``). ``max_tasks``: the threads exit once
    that many tasks were run."""

    def __init__(self, state, workers, kind="thread", max_tasks=None, listener=None):
        self.state = state
        self.kind = kind  # "thread", or "process": each thread runs its tasks in a child
        # listener("start", rec) and listener("end", rec, status, fields): ``nbqueue worker``'s log
        self.listener = listener
        self._slots = None if max_tasks is None else threading.Semaphore(max_tasks)
        self._children = {}  # worker thread -> its procworker.ChildProcess
        self._resize_lock = threading.Lock()
        self._indexes = {}   # worker thread -> its index (it exits once index >= workers)
        self._exiting = set()  # threads that decided to exit (they finish their task first)
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
        self._look_now = False  # a cancel was asked elsewhere: read the flags at once
        self._abandoned = False  # hand_back() gave the running tasks back: write nothing
        # A store call failed: a claim may have been made whose reply never came
        # (``_hand_back_orphans`` looks once the store answers again).
        self._orphans_possible = False
        self._held = state.held  # claims outside state.running (see QueueState.held)

    @property
    def size(self):
        return self._target

    def start(self):
        if self._heartbeat is None:
            self.store.on_cancel(self._cancel_asked)
            self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                               name=f"nbqueue-{self.state.name}-heartbeat")
            self._heartbeat.start()
        self.resize(self._target)

    def resize(self, workers):
        """Grow or shrink to ``workers`` threads; extra threads exit once idle. A
        thread that has decided to exit is never counted on: its index gets a new
        thread (atomic with that decision, under ``_resize_lock``)."""
        with self._resize_lock:
            self._target = workers
            self._threads = [t for t in self._threads if t.is_alive()]
            active = {self._indexes[t] for t in self._threads if t not in self._exiting}
            for index in range(workers):
                if index not in active:
                    t = threading.Thread(target=self._loop, args=(index,), daemon=True,
                                         name=f"nbqueue-{self.state.name}-worker-{index}")
                    self._indexes[t] = index
                    self._threads.append(t)
                    t.start()
            self._indexes = {t: i for t, i in self._indexes.items() if t in self._threads}
            surplus = len(active) > workers
        if surplus:
            self.store.notify_work(len(self._threads))

    def _cancel_asked(self):
        """Another process asked to cancel a running task: look at the flags now."""
        self._look_now = True
        self._wake.set()

    def stop(self, wait=True):
        """Ask every thread to exit once its current task is done; join them if
        ``wait``. The heartbeat goes on while a task still runs (its lease, its
        timeout and cancels from elsewhere), and exits after the last one."""
        self._target = 0
        self._stopping.set()
        self._wake.set()  # the heartbeat exits now if no task runs
        self.store.notify_work(len(self._threads) + 1)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
            self._wake.set()
            if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
                self._heartbeat.join()

    def _working(self):
        return any(t.is_alive() for t in self._threads)

    # ---- worker threads ------------------------------------------------
    def _loop(self, index):
        store = self.store
        poll = MIN_POLL
        rec = None
        looked_at = None  # the store's work sequence number before our last look found nothing
        failing = False   # the last claim raised
        me = threading.current_thread()
        child = None
        if self.kind == "process":
            child = self._children[me] = procworker.ChildProcess()

        def keep_going():
            # Once it says no, this thread exits for good (``resize`` replaces it).
            with self._resize_lock:
                if me in self._exiting:
                    return False
                if not self._stopping.is_set() and index < self._target and self._take_slot():
                    return True
                self._exiting.add(me)
                return False

        try:
            while rec is not None or keep_going():  # a task already claimed is run, never dropped
                if rec is None:
                    if looked_at is not None:
                        store.wait_for_work(looked_at, poll if store.shared else None)
                        poll = min(poll * 2, store.max_poll)
                    looked_at = store.work_seq
                    try:
                        rec = store.claim(self.worker_id, self.lease)
                        if rec is not None:
                            self._held.add(rec.id)
                        failing = False
                    except Exception:  # a store hiccup (disk full, locked, server gone) must not kill the worker
                        if not failing:  # once per outage; then quietly with backoff
                            self.state.log("claim failed; trying again with backoff", sys.exc_info())
                        failing = self._orphans_possible = True
                        time.sleep(poll)
                        poll = min(poll * 2, store.max_poll)
                        looked_at = None
                    if rec is None:
                        self._give_back_slot()
                        continue
                poll = MIN_POLL
                looked_at = store.work_seq
                try:
                    rec = self.run(rec, claim_next=keep_going, child=child)
                except BaseException as exc:  # not a task error (those are caught in run): ours
                    self.state.log(f"worker error running task {rec.id}", sys.exc_info())
                    self._fail_unhandled(rec, exc)
                    rec = None
        finally:
            if child is not None:
                self._children.pop(me, None)
                child.close()
            with self._resize_lock:
                self._exiting.discard(me)

    def _take_slot(self):
        """With ``max_tasks``: reserve one of the tasks left to run; False once none is."""
        if self._slots is None:
            return True
        return self._slots.acquire(blocking=False)

    def _give_back_slot(self):
        if self._slots is not None:
            self._slots.release()

    def run(self, rec, claim_next=None, child=None):
        """Run one claimed task to its outcome (here, or in ``child``, a
        ``procworker.ChildProcess``) and write that outcome to the store.

        If ``claim_next()`` is true when the task ends (asked then: the pool may be
        stopping or shrinking meanwhile), the same store transaction claims the next
        task, which is returned (or None)."""
        state = self.state
        ctx = context.TaskContext(rec, self.store, state.output_limit)
        ctx.waker = self._wake.set
        state.running[rec.id] = ctx
        self._held.discard(rec.id)
        if self.listener is not None:
            self.listener("start", rec)
        try:
            if child is None:
                status, fields = self._run_here(rec, ctx)
            else:
                status, fields = self._run_in_child(rec, ctx, child)
        finally:
            self._held.add(rec.id)  # before it leaves running: never taken for an orphan
            ctx.end()
            state.running.pop(rec.id, None)
        fields.update(ctx.final_fields())
        if self._abandoned:
            self._held.discard(rec.id)
            return None  # handed back (``hand_back``): this run's outcome is not written
        want_next = bool(claim_next and claim_next())
        # Not finished: our lease ran out and the task was requeued; its new run owns it.
        finished, nxt = self._write_outcome(rec, status, want_next, fields)
        try:
            if self._abandoned and nxt is not None:  # told to stop at once meanwhile
                self._give_back(nxt.id, "handed back: its worker was told to stop at once")
                return None
            if finished and self.listener is not None:
                self.listener("end", rec, status, fields)
            if want_next and nxt is None:
                self._give_back_slot()
            if finished and status in FINISHED:
                state.task_finished(rec.id)
        except BaseException:  # the next task is never left claimed and unrun
            if nxt is not None:
                self._give_back(nxt.id, "handed back: its worker failed after claiming it")
            raise
        return nxt

    def _write_outcome(self, rec, status, want_next, fields):
        """``finish_and_claim``, tried again with backoff while the store's server
        cannot be reached (a ConnectionError) for up to OUTCOME_PATIENCE seconds: a
        finished run's outcome is kept, not lost, through a short outage. Then the
        error is raised (the lease brings the task back)."""
        delay, give_up = 0.05, time.monotonic() + OUTCOME_PATIENCE
        while True:  # (rec.id is in _held: its lease is renewed meanwhile)
            try:
                outcome = self.store.finish_and_claim(
                    rec.id, self.worker_id, status, self.lease if want_next else None, **fields)
                nxt = outcome[1]
                if nxt is not None:
                    self._held.add(nxt.id)  # held before the done callbacks run
                if nxt is None or nxt.id != rec.id:  # (a retry may claim the same task again)
                    self._held.discard(rec.id)
                return outcome
            except ConnectionError:
                self._orphans_possible = True
                if self._abandoned or time.monotonic() + delay > give_up:
                    self._held.discard(rec.id)
                    raise
                if delay == 0.05:
                    self.state.log(f"the store is unreachable; keeping the outcome of task "
                                   f"{rec.id} and trying again", sys.exc_info())
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _run_here(self, rec, ctx):
        """Run the call in this thread: ``(status, fields)``."""
        state = self.state
        routed = capture.route_to(state.parents.get(rec.id), displays=state.displays, task_id=rec.id)
        capture.install_capture()
        context.enter(ctx)
        fields = {}
        retry_on = ()  # a call that cannot even be loaded is not retried
        try:
            func, args, kwargs, retry_on = state.resolve_call(rec)
            if rec.has_prev:
                args = args + (state.decode_value(rec.prev),)
            # (a run cancelled before it started is not served from the memo: execute.call
            # ends it cancelled)
            hit, cached = state.memo_lookup(rec) if rec.cache_key and not ctx.cancelled \
                else (False, None)
            if hit:  # memoized: an earlier call with the same code and arguments
                fields["result"], fields["cached"] = cached, True
            else:
                value = execute.call(ctx, rec, func, args, kwargs)
                fields["result"] = state.encode_value(value)
                if rec.cache_key:
                    state.memo_store(rec, fields["result"])
            return SUCCEEDED, fields
        except BaseException as exc:  # noqa: B036 -- user code must never kill the worker
            return execute.classify(ctx, rec, exc, retry_on, fields, state.describe), fields
        finally:
            context.leave()
            capture.unroute(routed)

    def _run_in_child(self, rec, ctx, child):
        """Run the call in the thread's child process: ``(status, fields)``."""
        state = self.state
        hit, cached = state.memo_lookup(rec) if rec.cache_key and not ctx.cancelled \
            else (False, None)
        if hit:
            return SUCCEEDED, {"result": cached, "cached": True}
        serializes = self.store.serializes
        status, fields = procworker.run_in_child(
            child, procworker.shippable(rec, serializes), ctx, state.output_limit)
        if not serializes:
            fields = procworker.to_objects(fields)
        if status == SUCCEEDED and rec.cache_key:
            state.memo_store(rec, fields["result"])
        return status, fields

    def hand_back(self, message):
        """For a worker told to stop now (SIGTERM): kill the process workers'
        children, then give every task this pool runs back to pending. From
        then on no run of this pool writes an outcome (a thread task that ends
        later is dropped; the task runs again elsewhere). Returns the ids handed
        back. The caller exits at once afterwards."""
        self._abandoned = True
        self._stopping.set()
        self._target = 0
        # before the kills (their runs then end at once); with the claims not started
        # yet or whose outcome is still being written
        running = list(self.state.running) + list(self._held)
        for child in list(self._children.values()):
            child.kill()  # first: no task may go on running once it is pending again
        handed = [task_id for task_id in dict.fromkeys(running) if self._give_back(task_id, message)]
        self.store.notify_work(len(handed))
        return handed

    def _give_back(self, task_id, message):
        """Hand a claim of ours back to pending; True if it was still ours."""
        self._held.discard(task_id)
        try:
            return self.store.finish(task_id, self.worker_id, PENDING, message=message)
        except Exception:
            self.state.log(f"could not hand back task {task_id}", sys.exc_info())
            return False

    def join(self, timeout=None):
        """Wait for the worker threads to exit (after ``stop`` or ``max_tasks``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self._working()

    def _fail_unhandled(self, rec, exc):
        # Don't leave the task running under a lease we keep renewing forever.
        self.state.running.pop(rec.id, None)
        self._held.discard(rec.id)
        try:
            if self.store.finish(rec.id, self.worker_id, FAILED, error=self.state.describe(exc)):
                self.state.task_finished(rec.id)
        except Exception:
            self.state.log(f"could not record the failure of task {rec.id}", sys.exc_info())

    # ---- heartbeat -----------------------------------------------------
    def _beat(self):
        """Upkeep every ``period``; between, wake for the moments a running task is
        due an interrupt (``TaskContext.watch``). Idle, it wakes once a second."""
        period = min(1.0, self.lease / 3)
        last_renew = time.monotonic()
        next_upkeep = wake_at = last_renew + period
        failing = False
        while True:
            self._wake.wait(max(MIN_BEAT, wake_at - time.monotonic()))
            self._wake.clear()  # before looking: a cancel asked from now on wakes us again
            if self._stopping.is_set() and not self._working():
                self.store.on_cancel(self._cancel_asked, add=False)
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
                if self._look_now:
                    self._look_now = False
                    self._read_cancel_flags(running)
                if now >= next_upkeep:
                    next_upkeep = now + period
                    last_renew = self._upkeep(running, now, last_renew)
                failing = False
            except Exception:
                if not failing:  # once while it lasts (a store's server gone for a while)
                    self.state.log("heartbeat error", sys.exc_info())
                failing = self._orphans_possible = True
            wake_at = next_upkeep if soonest is None else min(next_upkeep, soonest)

    def _hand_back_orphans(self):
        """Give back to pending the tasks claimed in our name that none of our
        workers runs: the reply to their claim was lost with the connection. A
        read of the running tasks (as many as there are busy workers), done only
        after a store call failed."""
        self._orphans_possible = False  # before the read: a failure during it sets it again
        for rec in self.store.page(status=RUNNING, limit=None):
            if rec.worker == self.worker_id and rec.id not in self.state.running \
                    and rec.id not in self._held \
                    and rec.started_at is not None and rec.started_at < time.time() - ORPHAN_AGE:
                self.store.finish(rec.id, self.worker_id, PENDING,
                                  message="handed back: the reply to its claim was lost "
                                          "(the store could not be reached)")

    def _read_cancel_flags(self, running):
        for tid, ctx in running.items():
            rec = self.store.get(tid)
            # still this run's (not a finished one's flag, read late)
            if rec is not None and rec.cancel_requested and not ctx.cancelled \
                    and rec.status == RUNNING and rec.worker == self.worker_id:
                ctx.request_cancel()

    def _upkeep(self, running, now, last_renew):
        """Renew leases (learning of cancels asked elsewhere), write quiet tasks'
        progress, requeue tasks whose worker died, housekeeping. Returns when the
        leases were last renewed."""
        if self._orphans_possible:
            self._hand_back_orphans()
        waiting = list(self._held)
        if (running or waiting) and now - last_renew >= self.lease / 3 - 0.01:
            last_renew = now
            held = self.store.renew(list(running) + waiting, self.worker_id, self.lease)
            for tid, cancel in held.items():
                if cancel and tid in running:
                    running[tid].request_cancel()
        elif running and self.store.shared:
            # A cancel asked in another process, learnt within a second (a read, not
            # a write) even if its wake-up (``_cancel_asked``) was lost.
            self._read_cancel_flags(running)
        for ctx in running.values():
            ctx.flush()
        self.store.requeue_expired(max_recoveries=self.state.max_recoveries,
                                   alive=self.state.alive)
        self.state.housekeeping()
        return last_renew


execute.HIDDEN.update((WorkerPool.run.__code__, WorkerPool._run_here.__code__))

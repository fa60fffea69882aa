"""``Queue``: registry of tasks, submit, lookup, lifecycle.

A Queue created again with the same name and store in the same process (a
re-run notebook cell) takes over the live one: same store and results, the old
pool's idle workers exit, old handles and old task functions keep working.
"""

import datetime
import inspect
import numbers
import os
import sys
import threading
import time
import traceback

from . import context, serializer
from .exceptions import NbqueueError, QueueClosed, TaskException
from .result import (FINISHED, PENDING, SCHEDULED, STATES, WAITING, Result, ResultGroup,
                     cancelled_error)
from .scheduler import PeriodicJob, Scheduler, define_job, make_schedule
from .storage import TaskRecord, open_storage, storage_key
from .task import (Pipeline, Signature, TaskFunction, expires_at, make_options)
from .worker import WorkerPool, new_worker_id

_registry_lock = threading.Lock()
_live = {}        # storage key -> the live Queue on that store
_latest = None    # the most recently created Queue


def new_task_id():
    """32 random hex digits (what uuid4().hex gives, at a fifth of the cost)."""
    return os.urandom(16).hex()


def latest_queue():
    """The most recently created Queue. Raises NbqueueError if there is none."""
    if _latest is None:
        raise NbqueueError("no Queue exists yet; create one with nbqueue.Queue()")
    return _latest


class Queue:
    """A named task queue on a store, with a pool of worker threads.

    ``storage``: None (durable diskcache under ``./.nbqueue/<name>``),
    ``"memory"`` (in-process, no pickling) or a directory path (diskcache).
    ``lease``: seconds a running task is held before another worker may take
    it over if this process dies; ``max_recoveries``: how many such takeovers
    before the task fails with WorkerLost; ``output_limit``: characters of
    stdout/stderr kept per task (the tail).
    """

    def __init__(self, name="default", storage=None, workers=4, start=True, *,
                 lease=10.0, max_recoveries=3, output_limit=64 * 1024):
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
            raise ValueError(f"queue name {name!r}: use a non-empty name without slashes, like 'jobs'")
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
            raise ValueError(f"workers={workers!r}: give a whole number >= 0 (0: submit only)")
        if not isinstance(lease, numbers.Real) or lease <= 0:
            raise ValueError(f"lease={lease!r}: give a number of seconds > 0")
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, numbers.Integral) \
                or max_recoveries < 0:
            raise ValueError(f"max_recoveries={max_recoveries!r}: give a whole number >= 0")
        if isinstance(output_limit, bool) or not isinstance(output_limit, numbers.Integral) \
                or output_limit < 0:
            raise ValueError(f"output_limit={output_limit!r}: give a whole number of characters >= 0")
        self.name = name
        self.lease = float(lease)
        self.max_recoveries = int(max_recoveries)
        self.output_limit = int(output_limit)
        self._closed = False
        self._successor = None
        self._lock = threading.Lock()
        key = storage_key(storage, name)
        with _registry_lock:
            old = _live.get(key)
            if old is not None:
                # A re-run cell: keep the store, the results and what is in flight.
                self.store = old.store
                self.worker_id = old.worker_id
                self._tasks = dict(old._tasks)
                self._local_calls = old._local_calls
                self._callbacks = old._callbacks
                self._running = old._running
                self._parents = old._parents
                old._hand_over(self)
            else:
                self.store = open_storage(storage, name)
                self.worker_id = new_worker_id()
                self._tasks = {}
                self._local_calls = {}   # task id -> live (func, args, kwargs, retry_on)
                self._callbacks = {}     # task id -> [fn]
                self._running = {}       # task id -> TaskContext, for tasks this process runs
                self._parents = {}       # task id -> submitting cell, to route display() there
            self._key = key
            _live[key] = self
            global _latest
            _latest = self
        self._pool = WorkerPool(self, workers)
        self._scheduler = Scheduler(self)
        self._next_housekeeping = self._next_sweep = 0.0
        if start:
            self.start()

    def __repr__(self):
        state = "closed" if self._closed else f"{self._pool.size} workers"
        return f"<Queue {self.name!r} on {self.store!r}, {state}>"

    # ---- lifecycle -----------------------------------------------------
    def start(self):
        """Start the workers and the scheduler (``Queue(start=False)`` waits for this)."""
        self._check_open()
        self._scheduler.start()
        self._pool.start()
        return self

    @property
    def workers(self):
        return self._pool.size

    @workers.setter
    def workers(self, n):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"workers={n!r}: give a whole number >= 0")
        self._check_open()
        self._pool.resize(int(n))

    def shutdown(self, wait=True, cancel_pending=False):
        """Stop taking tasks. Workers finish their current task and exit (joined if
        ``wait``). With ``cancel_pending``, tasks still waiting are cancelled;
        otherwise they stay in the store for the next Queue on it. Results stay
        readable. Submitting afterwards raises QueueClosed."""
        with _registry_lock:
            if _live.get(self._key) is self:
                del _live[self._key]
        if self._closed:
            return
        self._closed = True
        if cancel_pending:
            for rec in self.store.list(status=(PENDING,) + tuple(WAITING)):
                self.cancel(rec.id)
        self._scheduler.stop(wait)
        self._pool.stop(wait)

    close = shutdown

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown(wait=True)

    def _hand_over(self, successor):
        # Called with _registry_lock held, by the Queue that replaces this one.
        self._successor = successor
        self._closed = True
        self._scheduler.stop(wait=False, release=False)  # the successor holds the same lock id
        self._pool.stop(wait=False)

    def _check_open(self):
        if self._closed and self._successor is None:
            raise QueueClosed(f"queue {self.name!r} is shut down; create a new Queue to submit tasks")

    def _live_queue(self):
        q = self
        while q._successor is not None:
            q = q._successor
        q._check_open()
        return q

    # ---- tasks ---------------------------------------------------------
    def task(self, func=None, *, retries=0, retry_delay=0.0, retry_backoff=1.0, retry_on=None,
             timeout=None, priority=0, name=None, expires=None):
        """Register ``func`` as a task: ``@q.task`` or ``@q.task(retries=3, ...)``.

        Registering a task under a name that exists replaces it (re-running the
        cell that defines it). Raises TypeError for a non-callable and
        ValueError/TypeError for bad options.
        """
        options = make_options(retries, retry_delay, retry_backoff, retry_on, timeout,
                                priority, expires)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name={name!r}: give a non-empty string")

        def register(fn):
            wrapper = TaskFunction(self, fn, name, options)
            self._tasks[wrapper.name] = wrapper
            return wrapper

        if func is None:
            return register
        if isinstance(func, str):
            raise TypeError(f"@q.task({func!r}): give the name as @q.task(name={func!r})")
        return register(func)

    def periodic(self, cron=None, *, every=None, name=None, timezone=None, retries=0,
                 retry_delay=0.0, retry_backoff=1.0, retry_on=None, timeout=None, priority=0,
                 overlap=False, catch_up=False):
        """Run the decorated function (no arguments) on a schedule; returns a PeriodicJob.

        ``cron``: a cron line (croniter syntax; 6 fields put seconds first) or a
        ``crontab(...)``; or ``every``: a timedelta or seconds. ``timezone``: an
        IANA name the cron line is read in (default local time). ``overlap``:
        start a tick while the previous run still runs (default: skip it and
        count the skip). ``catch_up``: after a pause or a stopped kernel, run
        once for the missed ticks (default: not at all). Re-defining a job of
        the same name replaces it. A bad cron line, interval or timezone raises
        ValueError here, at decoration.
        """
        schedule = make_schedule(cron, every, timezone)
        options = dict(retries=retries, retry_delay=retry_delay, retry_backoff=retry_backoff,
                       retry_on=retry_on, timeout=timeout, priority=priority, name=name)
        self.task(**options)  # validates the options now, before any function is given

        def register(fn):
            try:
                inspect.signature(fn).bind()
            except TypeError:
                raise TypeError(f"periodic job {getattr(fn, '__name__', fn)!r} must take no "
                                "arguments: each run is called with none") from None
            except ValueError:
                pass  # no signature to read (a builtin): let it run
            task = self.task(fn, **options)
            return define_job(self._live_queue(), task, schedule, bool(overlap), bool(catch_up))

        if callable(cron) and not isinstance(cron, str) and every is None and not hasattr(cron, "line"):
            raise TypeError("@q.periodic needs a schedule: @q.periodic('*/15 * * * *') or "
                            "@q.periodic(every=timedelta(seconds=30))")
        return register

    def periodic_task(self, validate_datetime, **options):
        """Huey's spelling: ``@q.periodic_task(crontab(minute="*/15"))``."""
        return self.periodic(validate_datetime, **options)

    def periodic_jobs(self):
        """Handles of every periodic job in the store, by name."""
        return [PeriodicJob(self, name, self._tasks.get(name))
                for name in sorted(self.store.jobs())]

    def dashboard(self):
        """A live table of this queue's tasks and jobs (text outside a kernel)."""
        from .widgets import Dashboard
        return Dashboard(self)

    def _job_payload(self, task):
        call = (task.func, (), {}, task.options.retry_on)
        return serializer.encode_call(task.name, *call) if self.store.serializes else call

    def _job_run_record(self, job, due):
        """A pending run of periodic ``job`` for its tick ``due``."""
        task_id = new_task_id()
        live = self._tasks.get(job.name)
        if self.store.serializes and live is not None:
            self._local_calls[task_id] = (live.func, (), {}, live.options.retry_on)
        return TaskRecord(id=task_id, name=job.name, status=PENDING, priority=job.priority,
                          created_at=time.time(), eta=due, retries=job.retries,
                          retry_delay=job.retry_delay, retry_backoff=job.retry_backoff,
                          timeout=job.timeout, payload=job.payload)

    def enqueue(self, job):
        """Enqueue a Signature (returns its Result) or a Pipeline (returns a ResultGroup
        of its steps; each step runs after the previous one succeeded)."""
        if isinstance(job, Signature):
            return self._submit(job.task, job.args, job.kwargs)
        if isinstance(job, Pipeline):
            return self._submit_many(job.steps, chain=True)
        raise TypeError(f"enqueue() takes task.s(...) or a pipeline built with .then(...), not {job!r}")

    def _submit(self, task, args, kwargs, eta=None, priority=None, expires=None):
        q = self._live_queue()
        rec = q._record(task, args, kwargs, eta, priority, expires)
        q.store.add([rec])
        return Result._new(rec.id, q)

    def _submit_many(self, sigs, chain=False):
        """Enqueue many signatures atomically (all or none). With ``chain``, each
        step waits for the previous one and gets its value."""
        q = self._live_queue()
        records = []
        try:
            for i, sig in enumerate(sigs):
                records.append(q._record(sig.task, sig.args, sig.kwargs, status=(
                    SCHEDULED if chain and i else None)))
            if chain:
                for rec, nxt in zip(records, records[1:]):
                    rec.next_id = nxt.id
            q.store.add(records)
        except BaseException:
            for rec in records:
                q._local_calls.pop(rec.id, None)
            raise
        return ResultGroup(Result._new(rec.id, q) for rec in records)

    def _record(self, task, args, kwargs, eta=None, priority=None, expires=None, status=None):
        opts = task.options
        now = time.time()
        task_id = new_task_id()
        call = (task.func, args, kwargs, opts.retry_on)
        if self.store.serializes:
            payload = serializer.encode_call(task.name, *call)  # TypeError names the bad argument
            self._local_calls[task_id] = call                  # in-process workers use live objects
        else:
            payload = call
        parent = context.submit_parent()
        if parent is not None:
            self._parents[task_id] = parent
        if status is None:
            status = SCHEDULED if eta is not None and eta > now else PENDING
        return TaskRecord(
            id=task_id, name=task.name, status=status,
            priority=opts.priority if priority is None else priority,
            created_at=now, eta=eta if status == SCHEDULED else None,
            expires_at=expires_at(opts.expires if expires is None else expires, now),
            retries=opts.retries, retry_delay=opts.retry_delay, retry_backoff=opts.retry_backoff,
            timeout=opts.timeout, payload=payload)

    def _resolve_call(self, rec):
        # Kept (not popped) until the task finishes, so a retry calls the same live objects.
        call = self._local_calls.get(rec.id)
        if call is not None:
            return call
        if self.store.serializes:
            return serializer.decode_call(rec.payload)
        return rec.payload

    # ---- results -------------------------------------------------------
    def result(self, task_id):
        """A Result for ``task_id``, also one submitted by another process or before a
        restart. Raises TaskNotFound if the store has no such task."""
        return Result(task_id, self)

    def tasks(self, status=None, name=None, limit=None):
        """Results of the tasks in the store, oldest first; ``status`` is a state or a
        list of states, ``limit`` keeps the newest ``limit``."""
        statuses = (status,) if isinstance(status, str) else status
        for s in statuses or ():
            if s not in STATES:
                raise ValueError(f"unknown status {s!r}; the states are: {', '.join(STATES)}")
        if limit is not None and (not isinstance(limit, numbers.Integral) or limit < 0):
            raise ValueError(f"limit={limit!r}: give a whole number >= 0")
        if limit == 0:
            return []
        return [Result._new(rec.id, self) for rec in self.store.list(statuses, name, limit)]

    def pending(self):
        return self.tasks(status=PENDING)

    def scheduled(self):
        """Tasks waiting for an eta: delayed ones and retries waiting out their delay."""
        return self.tasks(status=tuple(WAITING))

    def purge(self, older_than=None, status=None):
        """Delete finished tasks' records (all finished states unless ``status`` says),
        those finished more than ``older_than`` (seconds or timedelta) ago. Returns
        how many were deleted. Pending and running tasks are never purged."""
        statuses = tuple(FINISHED) if status is None else (
            (status,) if isinstance(status, str) else tuple(status))
        for s in statuses:
            if s not in FINISHED:
                raise ValueError(f"purge(status={s!r}): only finished tasks can be purged "
                                 f"({', '.join(sorted(FINISHED))}); cancel waiting tasks first")
        if isinstance(older_than, datetime.timedelta):
            older_than = older_than.total_seconds()
        return self.store.purge(older_than, statuses)

    def cancel(self, task_id):
        """Cancel a task by id (see ``Result.cancel``). Raises TaskNotFound."""
        ok = self.store.cancel(task_id)
        ctx = self._running.get(task_id)
        if ctx is not None:
            ctx.request_cancel()
        if ok:
            rec = self.store.get(task_id)
            if rec is not None and rec.status in FINISHED:
                self._task_finished(task_id)
        return ok

    def _outcome(self, rec):
        """The value of a finished record, or raise what ``Result.get`` raises."""
        if rec.status == "succeeded":
            return self._decode_value(rec.result)
        if rec.status == "cancelled":
            raise cancelled_error(rec)
        err = rec.error or {"type": "unknown", "message": "", "traceback": ""}
        exc = serializer.exception_from(err, self.store.serializes)
        raise TaskException(err["type"], err["message"], err.get("traceback", ""), exc, rec.id)

    def _decode_value(self, value):
        return serializer.loads(value) if self.store.serializes else value

    # ---- callbacks and housekeeping ------------------------------------
    def _add_done_callback(self, result, fn):
        with self._lock:
            if not result.done():
                self._callbacks.setdefault(result.id, []).append(fn)
                return
        self._call(fn, result)

    def _task_finished(self, task_id):
        self._local_calls.pop(task_id, None)
        self._parents.pop(task_id, None)
        with self._lock:
            fns = self._callbacks.pop(task_id, ())
        for fn in fns:
            self._call(fn, Result._new(task_id, self))

    def _call(self, fn, result):
        try:
            fn(result)
        except Exception:
            self._log(f"done callback {fn!r} for task {result.id} raised", sys.exc_info())

    def _housekeeping(self, now=None):
        """From the heartbeat: every few seconds fire callbacks of tasks that finished
        elsewhere and purge expired records; every half minute drop the live calls
        of tasks another process ran (one store read each, so not more often)."""
        now = time.monotonic() if now is None else now
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + 2.0
        for task_id in list(self._callbacks):
            rec = self.store.get(task_id)
            if rec is None or rec.status in FINISHED:
                self._task_finished(task_id)
        if now >= self._next_sweep:
            self._next_sweep = now + 30.0
            for task_id in set(self._local_calls) | set(self._parents):
                rec = self.store.get(task_id)
                if rec is None or rec.status in FINISHED:
                    self._task_finished(task_id)
        self.store.purge_expired()

    def _log(self, what, exc_info):
        # Errors of nbqueue itself, never of user tasks (those go to the record).
        sys.__stderr__.write(f"nbqueue [{self.name}]: {what}\n"
                             + "".join(traceback.format_exception(*exc_info)))

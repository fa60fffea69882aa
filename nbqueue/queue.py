"""``Queue``: the composition root. It wires a store, a worker pool and a
scheduler around one ``QueueState``, and offers submit, lookup and lifecycle.

A Queue created again with the same name and store in the same process (a
re-run notebook cell) takes over the live one: it is handed the same
``QueueState`` (store, results, in-flight tasks, callbacks), the old pool's
idle workers exit, old handles and old task functions keep working.
"""

import datetime
import inspect
import time

from . import registry, serializer
from .exceptions import InvalidStateError, QueueClosed
from .periodic import PeriodicJob, define_job
from .records import TaskRecord
from .result import Result, ResultGroup
from .runtime import capture
from .runtime.interrupt import shield
from .runtime.scheduler import Scheduler
from .runtime.state import QueueState, new_task_id
from .runtime.worker import WorkerPool
from .schedules import make_schedule
from .states import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    SCHEDULED,
    WAITING,
    check_states,
)
from .storage import open_storage, storage_key
from .task import Pipeline, Signature, TaskFunction, expires_at, make_options
from .validation import check_count, check_seconds, check_worker_type

DEFAULT_KEEP = datetime.timedelta(days=7)
MEMORY_MAX_FINISHED = 10_000
MAX_NAME = 200


class Queue:
    """A named task queue on a store, with a pool of worker threads.

    ``storage``: None (a store directory ``./.nbqueue/<name>``), ``"memory"``
    (in-process, no pickling), a directory path, or a Redis URL
    (``redis://[:password@]host:port/db``, ``rediss://`` for TLS; ``pip install
    'nbqueue[redis]'``) shared by notebooks and workers on many machines.
    ``secret`` (or ``$NBQUEUE_SECRET``): what every pickled call and value kept
    in the store is signed with (HMAC-SHA256); one that fails the check is never
    unpickled. Required on Redis, optional on a directory. ``keep``: how long finished
    records stay (a timedelta or seconds; None: for ever); a memory queue also
    keeps at most ``max_finished`` (default 10,000) finished records.
    ``worker_type="process"``: each worker runs its tasks in a child process (a
    hard ``timeout``, a cancel that stops any task, the kernel never slowed);
    calls and values are then pickled, on a memory store too. ``workers=0``
    only submits (a sidecar or ``nbqueue worker`` runs the tasks).
    ``lease``: seconds a running task is held before another process may take it
    over if this one died; ``max_recoveries``: how many such takeovers before the
    task fails with WorkerLost; ``output_limit``: characters of stdout/stderr
    kept per task (the tail). Raises TypeError/ValueError naming a bad argument.
    """

    def __init__(self, name="default", storage=None, workers=4, start=True, *,
                 worker_type="thread", keep=DEFAULT_KEEP, max_finished=None, lease=10.0, max_recoveries=1,
                 output_limit=64 * 1024, secret=None):
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") \
                or name in (".", "..") or len(name) > MAX_NAME:
            raise ValueError(f"queue name {name!r}: use a non-empty name of at most {MAX_NAME} "
                             "characters without slashes, like 'jobs'")
        check_count(workers, "workers", hint="(0: submit only)")
        check_worker_type(worker_type)
        lease = check_seconds(lease, "lease", minimum=0.1, maximum=86400.0)
        check_count(max_recoveries, "max_recoveries")
        check_count(output_limit, "output_limit", hint="characters")
        keep = None if keep is None else check_seconds(keep, "keep", minimum=1.0)  # to HORIZON
        if max_finished is not None:
            check_count(max_finished, "max_finished")
        self.name = name
        self._closed = False
        self._successor = None
        key = storage_key(storage, name)
        with registry.lock:
            old = registry.live.get(key)
            if old is not None:
                # A re-run cell: keep the store, the results and what is in flight.
                self.state = old.state
                old._hand_over(self)
            else:
                self.state = QueueState(name, open_storage(storage, name, secret))
            self.state.configure(
                lease=lease, max_recoveries=int(max_recoveries), output_limit=int(output_limit),
                keep=keep, max_finished=max_finished if max_finished is not None else (
                    None if self.state.store.shared else MEMORY_MAX_FINISHED))
            self._key = key
            registry.live[key] = self
            registry.set_latest(self)
        self._pool = WorkerPool(self.state, workers, kind=worker_type)
        self._scheduler = Scheduler(self.state)
        if start and registry.autostart:
            self.start()

    @property
    def store(self):
        return self.state.store

    @property
    def lease(self):
        return self.state.lease

    @property
    def max_recoveries(self):
        return self.state.max_recoveries

    @property
    def output_limit(self):
        return self.state.output_limit

    @property
    def worker_id(self):
        return self.state.worker_id

    @property
    def _tasks(self):
        return self.state.tasks

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

    @property
    def worker_type(self):
        """"thread" or "process": where this queue's own workers run tasks."""
        return self._pool.kind

    @workers.setter
    def workers(self, n):
        check_count(n, "workers")
        self._check_open()
        self._pool.resize(int(n))

    def shutdown(self, wait=True, cancel_pending=False):
        """Stop taking tasks. Workers finish their current task and exit (joined if
        ``wait``). With ``cancel_pending``, tasks still waiting are cancelled;
        otherwise they stay in the store for the next Queue on it. The store's
        files are let go; results stay readable (read from them again).
        Submitting afterwards raises QueueClosed."""
        with registry.lock:
            if registry.live.get(self._key) is self:
                del registry.live[self._key]
        if self._closed:
            return
        self._closed = True
        if cancel_pending:
            for rec in self.store.page(status=(PENDING, *WAITING), limit=None):
                self.cancel(rec.id)
        self._scheduler.stop(wait)
        self._pool.stop(wait)
        # Let the store's files go (the SQLite log is merged back); a handle that reads
        # a result later opens it again.
        self.store.close()

    close = shutdown

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown(wait=True)

    def _hand_over(self, successor):
        # Called with registry.lock held, by the Queue that replaces this one.
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
             timeout=None, priority=0, name=None, expires=None, cache=False):
        """Register ``func`` as a task: ``@q.task`` or ``@q.task(retries=3, ...)``.

        ``cache=True`` (or a timedelta: an age limit) memoizes it: a call with the
        same function code and arguments as an earlier successful one gets that
        value without running (``r.cached`` is True), also after a restart.
        Registering a task under a name that exists replaces it (re-running the
        cell that defines it). Raises TypeError for a non-callable and
        ValueError/TypeError for bad options.
        """
        options = make_options(retries, retry_delay, retry_backoff, retry_on, timeout,
                                priority, expires, cache)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name={name!r}: give a non-empty string")

        def register(fn):
            if isinstance(fn, PeriodicJob):
                raise TypeError(f"@q.task on the periodic job {fn.name!r}: a function can be "
                                "one task or one periodic job; decorate the def once")
            wrapper = TaskFunction(self, fn, name, options)
            self.state.tasks[wrapper.name] = wrapper
            return wrapper

        if func is None:
            return register
        if isinstance(func, str):
            raise TypeError(f"@q.task({func!r}): give the name as @q.task(name={func!r})")
        return register(func)

    def periodic(self, cron=None, *, every=None, name=None, timezone=None, retries=0,
                 retry_delay=0.0, retry_backoff=1.0, retry_on=None, timeout=None, priority=0,
                 overlap=False, catch_up=False, keep=100):
        """Run the decorated function (no arguments) on a schedule; returns a PeriodicJob.

        ``cron``: a cron line (croniter syntax; 6 fields put seconds first) or a
        ``crontab(...)``; or ``every``: a timedelta or seconds. ``timezone``: an
        IANA name the cron line is read in (default local time). ``overlap``:
        start a tick while the previous run still runs (default: skip it and
        count the skip). ``catch_up``: after a pause or a stopped kernel, run
        once for the missed ticks (default: not at all). Re-defining a job of
        the same name replaces it. ``keep``: how many finished runs stay. A bad
        cron line, interval or timezone raises ValueError here, at decoration.
        """
        schedule = make_schedule(cron, every, timezone)
        check_count(keep, "keep", minimum=1, hint="finished runs")
        options = dict(retries=retries, retry_delay=retry_delay, retry_backoff=retry_backoff,
                       retry_on=retry_on, timeout=timeout, priority=priority, name=name)
        self.task(**options)  # validates the options now, before any function is given

        def register(fn):
            if isinstance(fn, (PeriodicJob, TaskFunction)):
                raise TypeError(f"@q.periodic on {fn!r}: stack no decorators; one function is "
                                "one periodic job (define a second function for a second schedule)")
            try:
                inspect.signature(fn).bind()
            except TypeError:
                raise TypeError(f"periodic job {getattr(fn, '__name__', fn)!r} must take no "
                                "arguments: each run is called with none") from None
            except ValueError:
                pass  # no signature to read (a builtin): let it run
            task = self.task(fn, **options)
            return define_job(self._live_queue(), task, schedule, bool(overlap), bool(catch_up),
                              int(keep))

        if callable(cron) and not isinstance(cron, str) and every is None and not hasattr(cron, "line"):
            raise TypeError("@q.periodic needs a schedule: @q.periodic('*/15 * * * *') or "
                            "@q.periodic(every=timedelta(seconds=30))")
        return register

    def periodic_task(self, validate_datetime, **options):
        """Huey's spelling: ``@q.periodic_task(crontab(minute="*/15"))``."""
        return self.periodic(validate_datetime, **options)

    def periodic_jobs(self):
        """Handles of every periodic job in the store, by name."""
        return [PeriodicJob(self, name, self.state.tasks.get(name))
                for name in sorted(self.store.jobs())]

    def start_sidecar(self, workers=4, worker_type="process", wait=30.0):
        """Start ``nbqueue worker`` on this queue's store as a detached process that
        outlives a kernel restart (its log: ``sidecar.log`` in the store), or
        reuse the one that runs there. Returns its ``sidecar_status()``. Raises
        NbqueueError on a memory store or if it exits at once (with its log)."""
        from . import sidecar
        return sidecar.start(self, workers, worker_type, wait)

    def sidecar_status(self):
        """The live sidecar of this store (pid, host, workers, kind, busy, beat_at,
        started_at), or None."""
        from . import sidecar
        return sidecar.status(self)

    def stop_sidecar(self, now=False, timeout=30.0):
        """Stop the store's sidecar: it finishes its running tasks (``now=True``:
        hands them back to pending) and exits. False if none ran."""
        from . import sidecar
        return sidecar.stop(self, now, timeout)

    def dashboard(self):
        """A live table of this queue's tasks and jobs (text outside a kernel)."""
        from .ui.widgets import Dashboard
        return Dashboard(self)

    def enqueue(self, job):
        """Enqueue a Signature (returns its Result) or a Pipeline (returns a ResultGroup
        of its steps; each step runs after the previous one succeeded)."""
        if isinstance(job, Signature):
            return self._submit(job.task, job.args, job.kwargs)
        if isinstance(job, Pipeline):
            return self._submit_many(job.steps, chain=True)
        raise TypeError(f"enqueue() takes task.s(...) or a pipeline built with .then(...), not {job!r}")

    @shield
    def _submit(self, task, args, kwargs, eta=None, priority=None, expires=None):
        q = self._live_queue()
        rec = q._record(task, args, kwargs, eta, priority, expires)
        try:
            q.store.add([rec])
        except BaseException:
            q.state.forget(rec.id)
            raise
        return Result._new(rec.id, q)

    @shield
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
                q.state.forget(rec.id)
            raise
        return ResultGroup(Result._new(rec.id, q) for rec in records)

    def _record(self, task, args, kwargs, eta=None, priority=None, expires=None, status=None):
        opts = task.options
        now = time.time()
        task_id = new_task_id()
        state = self.state
        call = (task.func, args, kwargs, opts.retry_on)
        cache_key = task.cache_key(args, kwargs) if opts.cache else None
        if state.store.serializes or self._pool.kind == "process":
            payload = serializer.encode_call(  # TypeError names the bad argument
                task.name, *call, hint=serializer.MEMORY_HINT if self._pool.kind == "thread"
                else serializer.THREAD_HINT)
            if state.store.serializes:
                state.calls[task_id] = call                    # in-process threads use live objects
        else:
            payload = call
        parent = capture.submit_parent()
        if parent is not None:
            state.parents[task_id] = parent
        if status is None:
            status = SCHEDULED if eta is not None and eta > now else PENDING
        return TaskRecord(
            id=task_id, name=task.name, status=status,
            priority=opts.priority if priority is None else priority,
            created_at=now, eta=eta if status == SCHEDULED else None,
            expires_at=expires_at(opts.expires if expires is None else expires, now),
            retries=opts.retries, retry_delay=opts.retry_delay, retry_backoff=opts.retry_backoff,
            timeout=opts.timeout, payload=payload, cache_key=cache_key)

    @shield
    def retry(self, task_id):
        """Submit a failed or cancelled task's call again, as a new task with the same
        name and options (priority, retries, delays, timeout, what expires
        counted from now); returns its Result. The new record's ``message`` is
        ``"retry of <task_id>"``; the old record is left as it was.

        The function is the one registered under the task's name in this process
        when there is one (as Huey looks tasks up by name: fix the code, re-run
        its cell, retry), else the stored one. The arguments are the original
        ones: the live objects while this process holds them (a memory store
        always does), else the stored copy. A pipeline step is retried alone,
        with the value it was given; the steps after it stay cancelled.

        Raises TaskNotFound for an unknown id, InvalidStateError unless the task
        ended failed or cancelled, QueueClosed after ``shutdown``, and TypeError
        if the call cannot be stored (a disk store that cannot pickle it now).
        """
        q = self._live_queue()
        state = q.state
        rec = q.store.get(task_id, ("payload", "prev"))
        if rec is None:
            raise state.not_found(task_id)
        if rec.status not in (FAILED, CANCELLED):
            raise InvalidStateError(
                f"task {task_id} ({rec.name}) is {rec.status}: only a failed or cancelled task can "
                "be retried" + ("" if rec.status in FINISHED else "; wait for it, or cancel it first"))
        func, args, kwargs, retry_on = state.resolve_call(rec)
        if rec.has_prev:  # the value the previous pipeline step handed it
            args = (*args, state.decode_value(rec.prev))
        live = state.tasks.get(rec.name)
        same = getattr(func, "__qualname__", None)  # not another function of that name
        if live is not None and same is not None and getattr(live.func, "__qualname__", None) == same:
            func, retry_on = live.func, live.options.retry_on
        cache_key = live.cache_key(args, kwargs) if live is not None and live.func is func \
            and live.options.cache else rec.cache_key  # the key of the code that will run
        call = (func, args, kwargs, retry_on)
        now = time.time()
        new = TaskRecord(
            id=new_task_id(), name=rec.name, status=PENDING, priority=rec.priority, created_at=now,
            expires_at=None if rec.expires_at is None else now + max(0.0, rec.expires_at
                                                                     - rec.created_at),
            retries=rec.retries, retry_delay=rec.retry_delay, retry_backoff=rec.retry_backoff,
            timeout=rec.timeout, cache_key=cache_key, message=f"retry of {task_id}",
            payload=serializer.encode_call(rec.name, *call) if state.store.serializes else call)
        if state.store.serializes:
            state.calls[new.id] = call
        parent = capture.submit_parent()
        if parent is not None:
            state.parents[new.id] = parent
        try:
            q.store.add([new])
        except BaseException:
            state.forget(new.id)
            raise
        return Result._new(new.id, q)

    # ---- results -------------------------------------------------------
    def result(self, task_id):
        """A Result for ``task_id``, also one submitted by another process or before a
        restart. Raises TaskNotFound if the store has no such task (never submitted,
        purged, or dropped by retention), TypeError if ``task_id`` is not a string."""
        return Result(task_id, self)

    @shield
    def tasks(self, status=None, name=None, limit=None, offset=0):
        """One page of the store's tasks, through an index: skip the ``offset`` newest,
        take the next ``limit`` (None: all the rest), and list them oldest first.
        ``status`` is a state or a list of states. Raises ValueError for a bad one."""
        statuses = None if status is None else check_states(status)
        if limit is not None:
            check_count(limit, "limit")
        check_count(offset, "offset")
        if limit == 0:
            return []
        page = self.store.page(statuses, name, limit, offset)
        return [Result._new(rec.id, self) for rec in reversed(page)]

    @shield
    def counts(self):
        """``{state: number of tasks}`` for every state (kept by the store as tasks move)."""
        return self.store.counts()

    def pending(self):
        return self.tasks(status=PENDING)

    def scheduled(self):
        """Tasks waiting for an eta: delayed ones and retries waiting out their delay."""
        return self.tasks(status=tuple(WAITING))

    @shield
    def purge(self, older_than=None, status=None):
        """Delete finished tasks' records (all finished states unless ``status`` says),
        those finished more than ``older_than`` (seconds or timedelta) ago. Returns
        how many were deleted. Pending and running tasks are never purged."""
        statuses = tuple(FINISHED) if status is None else check_states(status, "status")
        for s in statuses:
            if s not in FINISHED:
                raise ValueError(f"purge(status={s!r}): only finished tasks can be purged "
                                 f"({', '.join(sorted(FINISHED))}); cancel waiting tasks first")
        if older_than is not None:
            older_than = check_seconds(older_than, "older_than")
        return self.store.purge(older_than, statuses)

    def cache_clear(self):
        """Empty the memo cache of ``@q.task(cache=...)`` tasks. Returns how many
        values were dropped."""
        return self.state.memo_cache().clear()

    @shield
    def cancel(self, task_id):
        """Cancel a task by id (see ``Result.cancel``). Raises TaskNotFound."""
        ok = self.store.cancel(task_id)
        ctx = self.state.running.get(task_id)
        if ctx is not None:
            ctx.request_cancel()
        if ok and self.store.status(task_id) in FINISHED:
            self.state.task_finished(task_id)
        return ok

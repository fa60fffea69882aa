"""``QueueState``: what a queue's workers, scheduler and handles share, in one object.

A re-run ``Queue(...)`` cell hands this object to the new Queue, so in-flight
tasks, live calls, callbacks and the worker id carry over as one thing. The
worker pool and the scheduler talk to their queue only through the methods
here (resolve a call, decode a value, report a finish, log), never through
the Queue's private attributes.
"""

import random
import sys
import threading
import time
import traceback

from .. import serializer
from ..cellrun import ShippedCell
from ..exceptions import TaskCancelled, TaskException, TaskNotFound, TaskTraceback
from ..records import TaskRecord
from ..states import CANCELLED, FINISHED, PENDING, SUCCEEDED
from ..storage.memo import open_memo
from .liveness import holder_alive, new_worker_id

HOUSEKEEPING_EVERY = 2.0
SWEEP_EVERY = 30.0


def new_task_id():
    """32 random hex digits, as unique as uuid4's. From ``random`` (seeded from the
    OS, reseeded after fork), not ``os.urandom``: that system call lets go of the GIL
    on every submit, and the submitting thread then queues behind busy workers for it."""
    return f"{random.getrandbits(128):032x}"


class QueueState:
    """The store, the worker id, the registered tasks and the in-process task data
    of one queue. Settings (``lease``, ``keep``...) are plain attributes, set by
    ``configure`` (again by each Queue that takes the state over)."""

    def __init__(self, name, store):
        self.name = name
        self.store = store
        self.worker_id = new_worker_id()
        self.tasks = {}          # name -> TaskFunction registered on the queue
        self.calls = {}          # task id -> live (func, args, kwargs, retry_on), in-process only
        self.callbacks = {}      # task id -> [(fn, the Result it was registered on)]
        self.running = {}        # task id -> TaskContext, for tasks this process runs
        # Ids claimed in our name that are not in ``running``: claimed and not started
        # yet, or ended with the outcome still being written. Shared by every pool a
        # re-run Queue cell makes; renewed by the heartbeats, never taken for orphans.
        self.held = set()
        self.parents = {}        # task id -> submitting cell, to route display() there
        # task id -> rich outputs a task displayed (nbformat output dicts, in order),
        # shown in its widget; in-process only (a sidecar's display() has no kernel)
        self.displays = {}
        self.memo = None         # the memo cache, opened on first use (``memo_cache``)
        self._lock = threading.Lock()
        self._next_housekeeping = self._next_sweep = 0.0

    def configure(self, *, lease, max_recoveries, output_limit, keep, max_finished):
        """Set the settings (checked by the Queue). ``keep``: seconds finished records
        are kept (None: for ever); ``max_finished``: at most that many (None: no limit)."""
        self.lease, self.max_recoveries, self.output_limit = lease, max_recoveries, output_limit
        self.keep, self.max_finished = keep, max_finished

    # ---- calls and values ------------------------------------------------
    def resolve_call(self, rec):
        """``(func, args, kwargs, retry_on)`` of a claimed record: the live objects
        when this process submitted it (kept until it finishes, so a retry calls
        the same objects), else the stored call."""
        call = self.calls.get(rec.id)
        if call is not None:
            return call
        if self.store.serializes or isinstance(rec.payload, bytes):  # bytes: a process queue's
            return serializer.decode_call(rec.payload)
        return rec.payload

    def encode_value(self, value):
        """A value as the store keeps it. Raises TypeError (unpicklable, disk store)."""
        return serializer.encode_value(value) if self.store.serializes else value

    def decode_value(self, value):
        return serializer.loads(value) if self.store.serializes else value

    def describe(self, exc):
        return serializer.describe_exception(exc, self.store.serializes)

    def exception_from(self, error):
        return serializer.exception_from(error, self.store.serializes)

    def outcome(self, rec):
        """The value of a finished record (loaded with its result), or raise what
        ``Result.get`` raises: TaskException (failed) or TaskCancelled.

        The TaskException's ``__cause__`` is the task's own exception when it was
        kept, so the printed traceback shows the task's lines, as
        ``ProcessPoolExecutor`` does: an exception still holding its traceback
        (memory store) shows it as is; one that crossed a pickle (disk store, or
        never raised) gets a ``TaskTraceback`` cause holding the worker's
        traceback text. Without the object the TaskTraceback is the cause itself.
        """
        if rec.status == SUCCEEDED:
            value = self.decode_value(rec.result)
            return value.load_value() if type(value) is ShippedCell else value
        if rec.status == CANCELLED:
            raise TaskCancelled(f"task {rec.id} ({rec.name}) was cancelled" + (
                f": {rec.message}" if rec.message and rec.message != "cancelled" else ""))
        err = rec.error or {"type": "unknown", "message": "", "traceback": ""}
        text = err.get("traceback") or ""
        exc = self.exception_from(err)
        remote = TaskTraceback(text) if "Traceback (most recent call last)" in text else None
        if not isinstance(exc, BaseException):
            exc = None
        elif remote is not None and exc.__traceback__ is None and exc.__cause__ is None:
            exc.__cause__ = remote  # a fresh unpickled copy (or a never-raised object)
        cause = exc if exc is not None else remote
        raise TaskException(err["type"], err["message"], text, exc, rec.id) from cause

    def shipped_names(self, task_id):
        """``{name: value}`` a succeeded ``%%background -k process`` cell assigned
        (``cellrun.ShippedCell``); empty for anything else. A name whose value
        cannot be unpickled here is left out."""
        rec = self.store.get(task_id, load=("result",))
        if rec is None or rec.status != SUCCEEDED:
            return {}
        value = self.decode_value(rec.result)
        if type(value) is not ShippedCell:
            return {}
        names = {}
        for name, blob in value.names.items():
            try:
                names[name] = serializer.loads(blob)
            except Exception:
                self.log(f"the value of {name!r} that task {task_id} sent back cannot be read",
                         sys.exc_info())
        return names

    def job_payload(self, task):
        call = (task.func, (), {}, task.options.retry_on)
        return serializer.encode_call(task.name, *call) if self.store.serializes else call

    def job_run_record(self, job, due):
        """A new pending run of periodic ``job`` for its tick ``due``."""
        task_id = new_task_id()
        live = self.tasks.get(job.name)
        payload = job.payload
        if live is not None:
            call = (live.func, (), {}, live.options.retry_on)
            if self.store.serializes:
                self.calls[task_id] = call
            else:
                payload = call
        return TaskRecord(id=task_id, name=job.name, status=PENDING, priority=job.priority,
                          created_at=time.time(), eta=due, retries=job.retries,
                          retry_delay=job.retry_delay, retry_backoff=job.retry_backoff,
                          timeout=job.timeout, payload=payload)

    def forget(self, task_id):
        """Drop the in-process data of a task that will not run here (its displays
        stay until the record goes: its widget still shows them)."""
        self.calls.pop(task_id, None)
        self.parents.pop(task_id, None)

    # ---- memoized values ----------------------------------------------------
    def memo_cache(self):
        """The memo cache of this queue's store, opened on first use."""
        with self._lock:
            if self.memo is None:
                self.memo = open_memo(self.store)
            return self.memo

    def memo_lookup(self, rec):
        """``(True, encoded value)`` if a memoized task's value is cached and young
        enough, else ``(False, None)``. A broken cache is logged and treated as a miss."""
        task = self.tasks.get(rec.name)
        max_age = task.options.cache if task is not None and task.options.cache else float("inf")
        try:
            return self.memo_cache().get(rec.cache_key, max_age)
        except Exception:
            self.log(f"memo cache read failed for task {rec.id}", sys.exc_info())
            return False, None

    def memo_store(self, rec, encoded):
        try:
            self.memo_cache().set(rec.cache_key, encoded)
        except Exception:
            self.log(f"memo cache write failed for task {rec.id}", sys.exc_info())

    # ---- finishing -----------------------------------------------------------
    def add_done_callback(self, result, fn):
        """Call ``fn(result)`` once the task has finished (at once if it has)."""
        with self._lock:
            if not result.done():
                self.callbacks.setdefault(result.id, []).append((fn, result))
                return
        self._call(fn, result)

    def task_finished(self, task_id):
        """A task ended (here or, seen by housekeeping, elsewhere): forget its live
        call and run its done callbacks."""
        self.forget(task_id)
        with self._lock:
            fns = self.callbacks.pop(task_id, ())
        for fn, result in fns:
            self._call(fn, result)

    def finished_elsewhere(self, task_id):
        """A reader saw the task finished: run its done callbacks now if they still
        wait (another process ran it; housekeeping would only see it within
        ``HOUSEKEEPING_EVERY``). Cheap when none wait."""
        if task_id in self.callbacks:
            self.task_finished(task_id)

    def _call(self, fn, result):
        try:
            fn(result)
        except Exception:
            self.log(f"done callback {fn!r} for task {result.id} raised", sys.exc_info())

    def not_found(self, task_id):
        """The TaskNotFound for a handle whose record is gone, saying why it may be
        and how to keep records longer."""
        rules = []
        if self.keep is not None:
            rules.append(f"finished records are kept {_span(self.keep)}")
        if self.max_finished is not None:
            rules.append(f"at most {self.max_finished:,} finished records are kept")
        how = ("; ".join(rules) + ": Queue(..., keep=timedelta(days=30), max_finished=...) keeps "
               "more, keep=None keeps them for ever") if rules else "this queue keeps every record"
        return TaskNotFound(f"no task {task_id!r} in queue {self.name!r}: never submitted, purged, "
                            f"or dropped by retention ({how})")

    # ---- upkeep, from the heartbeat -------------------------------------------
    def alive(self, worker, task_id=None):
        """Whether ``worker`` still runs ``task_id`` (``Storage.requeue_expired``):
        for this process's own claims, whether one of its workers runs it: a claim
        whose reply was lost on the way (a store's server gone mid-call) is held in
        our name by no one, and must not be kept for ever."""
        if worker == self.worker_id and task_id is not None:
            return task_id in self.running or task_id in self.held
        return holder_alive(worker)

    def housekeeping(self, now=None):
        """Every few seconds: fire callbacks of tasks that finished elsewhere and apply
        retention; every half minute drop the live calls of tasks another process
        ran (one store read each, so not more often)."""
        now = time.monotonic() if now is None else now
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_EVERY
        store = self.store
        for task_id in list(self.callbacks):
            status = store.status(task_id)
            if status is None or status in FINISHED:
                self.task_finished(task_id)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            for task_id in set(self.calls) | set(self.parents):
                status = store.status(task_id)
                if status is None or status in FINISHED:
                    self.task_finished(task_id)
        store.retain(self.keep, self.max_finished)

    def log(self, what, exc_info=None):
        """Errors of nbqueue itself, never of user tasks (those go to the record)."""
        text = f"nbqueue [{self.name}]: {what}\n"
        if exc_info is not None:
            text += "".join(traceback.format_exception(*exc_info))
        sys.__stderr__.write(text)


def _span(seconds):
    if seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"

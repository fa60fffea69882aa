"""Process workers: each worker thread of a ``worker_type="process"`` pool runs
its tasks in a child process of its own (``nbqueue.runtime.child.serve``).
Never a ``fork`` (a kernel has threads and sockets a fork would copy
half-made), nor multiprocessing's ``spawn`` (it runs the parent's main script
again in the child, and a script without a ``__main__`` guard would start
its queue again there).

The thread keeps what a thread worker does (the claim, its lease, the record)
and the child only runs the call, so: a ``timeout=`` is hard (the child is
terminated ``STOP_GRACE`` after the deadline if the task did not stop by
itself); a cancel terminates it within ``STOP_GRACE`` too; a child that dies
(segfault, ``os._exit``, out of memory) fails that attempt with WorkerLost, and
the thread starts a new child for its next task. The kernel's GIL is never
held by the task, so the notebook stays responsive.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import wait as wait_for

from .. import serializer
from ..exceptions import WorkerLost
from ..records import PROGRESS_FIELDS
from ..states import CANCELLED
from . import child as child_module
from .execute import fail_or_retry

_NBQUEUE_HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOP_GRACE = 0.3  # a cancelled or timed-out task gets this long to stop by itself
LOAD_LIMIT = 30.0  # seconds a task with a timeout may take to start and load its call
LOOK = 0.1        # how often the thread looks for a cancel while its child runs


class ChildProcess:
    """One child process, started on first use and again after it died or was
    terminated. Used by one worker thread only."""

    def __init__(self):
        self.process = None
        self.conn = None

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def ensure(self):
        """A live child; starts one if needed. Raises OSError if it cannot."""
        if self.alive():
            return
        self.discard()
        ours, theirs = socket.socketpair()
        # -P and a PYTHONPATH of nbqueue's own directory only: the child loads its
        # modules from the standard library first; then it takes our sys.path, so
        # the tasks import what this process would (``child.serve``).
        env = dict(os.environ, PYTHONPATH=_NBQUEUE_HOME,
                   NBQUEUE_SYS_PATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-c", f"from nbqueue.runtime.child import serve; "
                 f"serve({theirs.fileno()}, {os.getpid()})"],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process, self.conn = process, child_module.Channel(ours)

    def wait(self, timeout):
        """The child's exit code once it ended within ``timeout``, else None."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL the child and reap it: nothing it runs goes on."""
        if self.alive():
            self.process.kill()
            self.wait(5)
        self.discard()

    def terminate(self):
        """Stop the child now: SIGTERM, then SIGKILL if it lingers."""
        if self.alive():
            self.process.terminate()
            if self.wait(0.5) is None:
                self.process.kill()
                self.wait(2)
        self.discard()

    def discard(self):
        if self.conn is not None:
            self.conn.close()
        if self.process is not None:
            self.process.poll()  # reap it if it ended
        self.process = self.conn = None

    def close(self):
        """Ask an idle child to exit; terminate it if it does not."""
        if self.process is None:
            return
        try:
            self.conn.send(("exit",))
            self.wait(1)
        except (OSError, ValueError):
            pass
        self.terminate()


def shippable(rec, serializes):
    """The copy of ``rec`` a child gets: its call and the previous step's value as
    bytes. On a memory store they are objects (a process queue on memory pickles
    calls at submit, so this only pickles the pipeline value)."""
    rec = rec.copy()
    if not serializes:
        if not isinstance(rec.payload, bytes):
            rec.payload = serializer.encode_call(rec.name, *rec.payload)
        if rec.has_prev:
            rec.prev = serializer.dumps(rec.prev)
    return rec


def run_in_child(child, rec, ctx, output_limit):
    """Run the claimed ``rec`` in ``child``; return ``(status, fields)`` with the
    result and error as bytes. Progress and output the child reports become
    ``ctx``'s (written to the store by its flushes, and with the run's end);
    a cancel asked meanwhile (``ctx.request_cancel``) is passed on at once, and
    the child terminated if the task did not stop within ``STOP_GRACE``; so is
    a task past its timeout (counted from when the child loaded the call).
    Raises OSError if no child can be started; if anything else goes wrong here,
    the child is terminated before it is raised (a child still running a task
    must never get the next one)."""
    child.ensure()
    conn = child.conn

    def cancel_now():  # in the thread that asked: the child's next check raises at once
        try:
            conn.send(("cancel", rec.id))
        except (OSError, ValueError):
            pass

    ctx.on_cancel = cancel_now  # (a cancel asked before the run: the record says so)
    try:
        return _supervise(child, rec, ctx, output_limit)
    except BaseException:
        child.terminate()
        raise
    finally:
        ctx.on_cancel = None


def _supervise(child, rec, ctx, output_limit):
    conn, process = child.conn, child.process
    try:
        conn.send(("run", rec, output_limit))
    except (OSError, ValueError):
        return _lost(child, rec, {}, None)
    retry = {"timeout": True, "lost": True}  # until the child says what retry_on allows
    stop_at, why = None, None
    # The timeout counts once the child loaded the call ("started"): starting the
    # child and the imports the call needs are not the task's time, within a limit.
    loaded = False
    load_deadline = None if rec.timeout is None else time.monotonic() + max(LOAD_LIMIT, rec.timeout)
    while True:
        now = time.monotonic()
        deadline = ctx._deadline if loaded else load_deadline
        if why is None:
            if ctx.cancelled:  # the grace counts from the cancel, not from this look
                why, stop_at = "cancel", (ctx._cancel_at or now) + STOP_GRACE
            elif deadline is not None and now >= deadline:
                why, stop_at = "timeout", now + STOP_GRACE
        if stop_at is not None and now >= stop_at:  # whatever the child still sends
            child.terminate()
            return _stopped(rec, ctx, why, retry)
        wait = LOOK
        if stop_at is not None:
            wait = min(wait, stop_at - now)
        elif deadline is not None:
            wait = min(wait, deadline - now)
        update = None
        while wait_for([conn], max(0.0, wait)):  # every message waiting, then one write
            wait = 0.0
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return _lost(child, rec, retry, why)
            kind, task_id = message[0], message[1]
            if task_id != rec.id:
                continue  # never another task's (none should come: a stale one is dropped)
            if kind == "done":
                status, fields = message[2], message[3]
                ctx.mirror({k: fields.pop(k) for k in PROGRESS_FIELDS if k in fields})
                return status, fields
            if kind == "update":
                update = message[2]
            elif kind == "started":
                ctx.restart_clock()  # the child counts from here too
                loaded = True
                retry["timeout"], retry["lost"] = message[2], message[3]
        if update is not None:
            ctx.mirror(update)
            try:
                ctx.flush()  # learns of a cancel asked elsewhere, too
            except Exception:  # a store hiccup: written at the next flush (ctx stays dirty)
                pass
        if process.poll() is not None:  # it ended without a word (its socket closes too)
            return _lost(child, rec, retry, why)


def _stopped(rec, ctx, why, retry):
    fields = {}
    if why == "cancel":
        fields["message"] = (f"cancelled: its worker process was terminated "
                             f"{STOP_GRACE:g} s after the cancel")
        return CANCELLED, fields
    exc = ctx.timeout_error(f"its worker process was terminated {STOP_GRACE:g} s after the timeout")
    status = fail_or_retry(rec, exc, retry["timeout"], fields, _describe, " (terminated)",
                           "timed out: its worker process was terminated")
    return status, fields


def _lost(child, rec, retry, why):
    """The child died while running ``rec``: WorkerLost (retried if retries remain),
    or cancelled if it was being cancelled anyway."""
    code = child.wait(1) if child.process is not None else None
    child.discard()
    if why == "cancel":
        return CANCELLED, {"message": "cancelled: its worker process ended"}
    how = f"exit code {code}" if code is None or code >= 0 else _signal_name(-code)
    exc = WorkerLost(f"the worker process running task {rec.id} ({rec.name}) died ({how}); "
                     "a crash in a C extension, os._exit() or the out-of-memory killer")
    fields = {}
    return fail_or_retry(rec, exc, retry.get("lost", True), fields, _describe), fields


def _signal_name(number):
    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"


def _describe(exc):
    return serializer.describe_exception(exc, True)


def to_objects(fields):
    """Fields from a child (result and error pickled) as a memory store keeps them."""
    if "result" in fields:
        fields["result"] = serializer.loads(fields["result"])
    error = fields.get("error")
    if error is not None:
        error["exc"] = serializer.exception_from(error, True)
    return fields


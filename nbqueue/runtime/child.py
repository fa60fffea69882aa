"""A process worker's child: the process that runs one task at a time for one
worker thread of its parent (``procworker.ChildProcess``).

It gets ``("run", record, output_limit)``, runs the stored call like a worker
thread does (``execute``), and answers ``("started", retry_timeout, retry_lost)``
once the call is loaded, ``("update", fields)`` for progress and output (at most
every ``context.FLUSH_INTERVAL``), and ``("done", status, fields)`` at the end.
``("cancel", task_id)`` makes the running task's next check raise TaskCancelled;
the parent terminates the child if the task does not stop by itself. The child
exits when its parent goes away (the pipe closes), so a killed sidecar leaves no
orphan running a task.
"""

import ctypes
import os
import pickle
import queue
import signal
import socket
import struct
import sys
import threading
import time

from .. import registry, serializer
from ..exceptions import TaskTimeout, WorkerLost
from ..states import SUCCEEDED
from . import capture, context, execute


_SIZE = struct.Struct("!Q")
PR_SET_PDEATHSIG = 1  # prctl(2)


class Channel:
    """Messages (pickled) over a stream socket, each prefixed by its length: the
    pipe between a worker thread and its child. ``send`` is atomic per message
    (one lock); ``recv`` raises EOFError once the other end is gone."""

    def __init__(self, sock):
        self.sock = sock
        self._send_lock = threading.Lock()

    def fileno(self):
        return self.sock.fileno()

    def send(self, message):
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self.sock.sendall(_SIZE.pack(len(data)) + data)

    def recv(self):
        (size,) = _SIZE.unpack(self._exactly(_SIZE.size))
        return pickle.loads(self._exactly(size))

    def _exactly(self, n):
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise EOFError("the other end of the channel closed")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _ParentLink:
    """What a child's TaskContext writes to in place of the store: progress and
    output go to the parent (tagged with the task's id), which writes them to
    the store. ``cancelled``: ids a cancel was asked for (by the parent)."""

    def __init__(self, conn):
        self._conn = conn
        self.cancelled = set()

    def send(self, message):
        self._conn.send(message)

    def update(self, task_id, **fields):
        self.send(("update", task_id, fields))
        return task_id in self.cancelled


def main(conn):
    """The child's loop, on its Channel to the parent."""
    link = _ParentLink(conn)
    inbox = queue.SimpleQueue()
    running = {}  # task id -> TaskContext

    def read():
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone: never outlive it
            if message[0] == "cancel":
                ctx = running.get(message[1])
                if ctx is not None:  # a late cancel of a task that ended is dropped
                    link.cancelled.add(message[1])
                    ctx.request_cancel()
            else:
                inbox.put(message)

    def flush():
        # What a task printed or reported reaches its record even if it then goes
        # quiet (a flush otherwise happens only when it writes again): the child's
        # heartbeat, as the worker's heartbeat flushes thread tasks.
        while True:
            time.sleep(context.FLUSH_INTERVAL)
            for ctx in list(running.values()):
                try:
                    ctx.flush()
                except Exception:  # the pipe closed: the reader ends the process
                    pass

    threading.Thread(target=read, daemon=True, name="nbqueue-child-reader").start()
    threading.Thread(target=flush, daemon=True, name="nbqueue-child-flusher").start()
    while True:
        message = inbox.get()
        if message[0] != "run":
            return
        _, rec, output_limit = message
        link.cancelled.clear()
        if rec.cancel_requested:
            link.cancelled.add(rec.id)
        ctx = context.TaskContext(rec, link, output_limit, notes=False)
        running[rec.id] = ctx
        # The task's prints and log records go to its output, as in a worker thread
        # (sys.stdout/sys.stderr and logging handlers, put back if the task swapped them).
        capture.install_capture()
        try:
            status, fields = run(rec, ctx, link)
        finally:
            running.pop(rec.id, None)
            ctx.end()
        fields.update(ctx.final_fields())
        link.send(("done", rec.id, status, fields))


def run(rec, ctx, link):
    """Run the record's call in this process; ``(status, fields)`` with the result
    and error pickled. Its timeout counts from when the call was loaded (the
    imports its unpickling needs are not the task's time)."""
    fields = {}
    retry_on = ()  # a call that cannot even be loaded is not retried
    context.enter(ctx)
    try:
        func, args, kwargs, retry_on = serializer.decode_call(rec.payload)
        ctx.restart_clock()
        link.send(("started", rec.id, issubclass(TaskTimeout, retry_on),
                   issubclass(WorkerLost, retry_on)))
        if rec.has_prev:
            args = args + (serializer.loads(rec.prev),)
        value = execute.call(ctx, rec, func, args, kwargs)
        fields["result"] = serializer.encode_value(value, hint=RETURN_HINT)
        return SUCCEEDED, fields
    except BaseException as exc:  # noqa: B036 -- user code must never end the child
        describe = lambda e: serializer.describe_exception(e, True)  # noqa: E731
        return execute.classify(ctx, rec, exc, retry_on, fields, describe), fields
    finally:
        context.leave()


RETURN_HINT = "; a process worker sends its task's value back pickled: return plain data"
execute.HIDDEN.add(run.__code__)


def _die_with(parent):
    """On Linux, have the kernel SIGKILL us the moment our parent dies (a SIGKILLed
    sidecar), so a task never goes on to finish after its worker was lost; the
    closed pipe ends us elsewhere (a little later)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before we asked
        os._exit(0)


def serve(fd, parent):
    """The child process's entry point: ``fd`` is its end of the parent's socket
    pair, ``parent`` the parent's pid. Its own modules are loaded by now, from
    the standard library first (a ``queue.py`` beside a notebook cannot break
    it); the tasks' imports see the parent's ``sys.path``, in its order
    (``NBQUEUE_SYS_PATH``).

    It runs in a session of its own: Ctrl-C in a terminal or a SIGTERM to the
    worker's process group reaches the worker, which decides (finish the
    running task, or terminate it), never the task's own code."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = os.environ.pop("NBQUEUE_SYS_PATH", None)
    if path is not None:
        sys.path[:] = path.split(os.pathsep)
    registry.autostart = False  # a module a task imports must not start its Queue's workers here
    main(Channel(socket.socket(fileno=fd)))

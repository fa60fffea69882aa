"""Sidecars: an ``nbqueue worker`` process started from a notebook, detached
(its own session) so it outlives a kernel restart, on the queue's store
directory or Redis server. It registers itself in the store; any kernel on that store finds it
(``status``), reuses it, or stops it.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from .exceptions import NbqueueError
from .runtime.liveness import live_workers
from .signing import ENV
from .storage.storedir import SIDECAR_LOG, prepare_directory
from .validation import check_count, check_seconds, check_worker_type



def _target(q):
    """``(worker arguments naming the store, log file path)`` for ``q``'s store.
    Raises NbqueueError for a store no other process can open."""
    directory = getattr(q.store, "directory", None)
    if directory is not None:
        return [directory], os.path.join(directory, SIDECAR_LOG)
    url = getattr(q.store, "url", None)
    if url is not None:  # a Redis store: the log goes beside the notebook
        prepare_directory(".nbqueue")
        return [url, "--queue", q.name], os.path.join(".nbqueue", f"{q.name}.{SIDECAR_LOG}")
    raise NbqueueError(
        f"queue {q.name!r} is on {q.store!r}, which lives only in this process: a sidecar "
        "needs a store directory it can open too. Use Queue(..., storage='some/dir') "
        "(or the default, storage=None)")


def _environment(q):
    """The sidecar's environment: ours, with the store's secret (a child of ours
    only: /proc/PID/environ is readable by this user alone)."""
    env = os.environ.copy()
    signer = getattr(q.store, "signer", None)
    if signer is not None:
        env[ENV] = os.fsdecode(signer.key)
    return env


def status(q, stopping=False):
    """The live sidecar of ``q``'s store as a dict (``worker``, ``pid``, ``host``,
    ``workers``, ``kind``, ``busy``, ``beat_at``, ``started_at``), or None. One
    asked to stop counts only with ``stopping`` (it takes no new work for long)."""
    found = [dict(info, worker=w) for w, info in live_workers(q.store).items()
             if info.get("sidecar") and (stopping or not info.get("stop"))]
    found.sort(key=lambda info: info.get("started_at", 0))
    return found[0] if found else None


def start(q, workers=4, worker_type="process", wait=30.0):
    """Start a sidecar on ``q``'s store unless one lives there (then return it):
    ``nbqueue worker DIR -w workers -k worker_type``, in a new session, its
    output going to ``DIR/sidecar.log`` (a Redis store: ``.nbqueue/<name>.sidecar.log``). Waits until it registered; returns
    ``status(q)``. Raises NbqueueError (a memory store, or the sidecar exited:
    the message holds its log's tail), ValueError/TypeError for bad arguments."""
    check_count(workers, "workers", minimum=1)
    check_worker_type(worker_type)
    wait = check_seconds(wait, "wait", minimum=1.0)
    target, log_path = _target(q)
    live = status(q)
    if live is not None:
        return live
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbqueue", "worker", *target, "-w", str(int(workers)),
             "-k", worker_type, "--lease", repr(q.lease),
             "--max-recoveries", str(q.max_recoveries), "--sidecar"],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=os.getcwd(), env=_environment(q),
            start_new_session=True)  # not in the kernel's process group: a restart spares it
    finally:
        os.close(fd)
    # Reap it when it exits, so it never lingers as a zombie of this kernel.
    threading.Thread(target=proc.wait, daemon=True, name="nbqueue-sidecar-reaper").start()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        live = status(q)
        if live is not None and live.get("pid") == proc.pid:
            return live
        if proc.poll() is not None:
            raise NbqueueError(f"the sidecar exited at once (code {proc.returncode}); "
                               f"the end of {log_path}:\n{_tail(log_path)}")
        time.sleep(0.05)
    return status(q) or {"pid": proc.pid, "starting": True}


def stop(q, now=False, timeout=30.0):
    """Stop the live sidecar of ``q``'s store: it finishes its running tasks and
    exits (``now=True``: at once, handing them back to pending). Waits up to
    ``timeout`` seconds for it to exit. Returns True if one was stopped, False if
    none was running. Raises TimeoutError if it still runs after ``timeout``."""
    timeout = check_seconds(timeout, "timeout")
    live = status(q, stopping=True)
    if live is None:
        return False
    asked = live.get("stop") and (live.get("now") or not now)  # asked already, as much
    if not asked:
        q.store.update_worker(live["worker"], stop=True, now=bool(now))
        # A signal is quicker than its next look at the store. SIGINT once only: a
        # second one means "now" to it.
        how = signal.SIGTERM if now else None if live.get("stop") else signal.SIGINT
        if how is not None and live.get("host") == os.uname().nodename \
                and isinstance(live.get("pid"), int):
            try:
                os.kill(live["pid"], how)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live["worker"] not in live_workers(q.store):
            return True
        time.sleep(0.05)
    raise TimeoutError(f"the sidecar (pid {live.get('pid')}) still runs {timeout:g} s after "
                       "it was asked to stop: its tasks are still running; "
                       "q.stop_sidecar(now=True) hands them back and exits at once")


def _tail(path, size=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError as err:
        return f"(unreadable: {err})"

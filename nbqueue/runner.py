"""``nbqueue worker``: a process that runs a queue's tasks and its scheduler.

It works on a store directory (or a Queue found in an importable module, like
Huey's consumer), registers itself in the store (``beat_worker``: pid, workers,
busy, last beat) so notebooks and dashboards see it, and logs task starts, ends
and errors. SIGINT (or a stop asked through the store) finishes the running
tasks and exits; SIGINT twice or SIGTERM exits at once, handing the running
tasks back to pending so another worker runs them.
"""

import logging
import os
import signal
import threading
import time

from .runtime.liveness import holder_alive
from .runtime.scheduler import Scheduler
from .runtime.worker import WorkerPool
from .states import FAILED, RETRYING, SUCCEEDED

BEAT = 1.0          # seconds between two registrations of a live worker
STALE = 10 * BEAT   # a worker not seen for this long (on another host) is taken for dead

log = logging.getLogger("nbqueue.worker")


def worker_info(q, pool, sidecar, started_at):
    return {"pid": os.getpid(), "host": os.uname().nodename, "queue": q.name,
            "workers": pool.size, "kind": pool.kind, "busy": len(q.state.running),
            "sidecar": bool(sidecar), "started_at": started_at}


def is_live(worker, info, now=None):
    """Whether a registered worker still lives: on this host, its process runs;
    elsewhere, it beat within ``STALE``."""
    verdict = holder_alive(worker)
    if verdict is None:
        now = time.time() if now is None else now
        beat = info.get("beat_at")
        verdict = isinstance(beat, (int, float)) and now - beat < STALE
    return verdict


def live_workers(store, now=None, forget_dead=True):
    """``{worker id: info}`` of the registered workers that still live; with
    ``forget_dead``, the registrations of the others are removed."""
    alive = {}
    for worker, info in store.registered_workers().items():
        if is_live(worker, info, now):
            alive[worker] = info
        elif forget_dead:
            store.remove_worker(worker)
    return alive


def describe_worker(info, now=None):
    """One line about a registered worker, for dashboards."""
    now = time.time() if now is None else now
    beat = info.get("beat_at")
    ago = f"{max(0.0, now - beat):.0f} s ago" if isinstance(beat, (int, float)) else "never"
    what = "sidecar" if info.get("sidecar") else "worker"
    return (f"{what} pid {info.get('pid', '?')} on {info.get('host', '?')}: "
            f"{info.get('workers', '?')} {info.get('kind', '?')} workers, "
            f"{info.get('busy', 0)} busy, last heartbeat {ago}")


def _describe_end(rec, status, fields, took):
    span = f" in {took:.3f}s" if took is not None else ""
    if status == SUCCEEDED:
        return logging.INFO, f"{rec.name} {rec.id} succeeded{span}"
    error = fields.get("error") or {}
    what = f"{error.get('type', '?')}: {error.get('message', '')}" if error else fields.get("message", "")
    if status == RETRYING:
        return logging.WARNING, f"{rec.name} {rec.id} will retry ({fields.get('message')}): {what}"
    if status == FAILED:
        text = error.get("traceback") or what
        return logging.ERROR, f"{rec.name} {rec.id} failed{span}\n{text.rstrip()}"
    return logging.INFO, f"{rec.name} {rec.id} {status}{span}: {fields.get('message', '')}"


class _Events:
    """The pool's listener: log each task's start and end."""

    def __init__(self):
        self._starts = {}

    def __call__(self, event, rec, status=None, fields=None):
        if event == "start":
            self._starts[rec.id] = time.monotonic()
            log.info("%s %s started (attempt %d)", rec.name, rec.id, rec.attempts)
            return
        started = self._starts.pop(rec.id, None)
        took = None if started is None else time.monotonic() - started
        level, text = _describe_end(rec, status, fields or {}, took)
        log.log(level, "%s", text)


def run_worker(q, workers=4, kind="thread", max_tasks=None, sidecar=False):
    """Run ``q``'s tasks with ``workers`` threads or processes until told to stop
    (signal, ``stop`` in the store) or ``max_tasks`` ran. Returns the exit code."""
    state, store = q.state, q.store
    pool = WorkerPool(state, workers, kind=kind, max_tasks=max_tasks, listener=_Events())
    scheduler = Scheduler(state)
    stop = {"graceful": threading.Event(), "now": threading.Event()}
    look = threading.Event()  # a signal came: the main loop looks at once

    def on_signal(number, frame):
        if number == signal.SIGINT and not stop["graceful"].is_set():
            log.info("SIGINT: finishing the running tasks, then exiting (SIGINT again: now)")
            stop["graceful"].set()
        else:
            stop["now"].set()
        look.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started_at = time.time()
    worker = state.worker_id
    log.info("worker %s on queue %r (%s): %d %s worker%s%s", worker, q.name, store, workers, kind,
             "" if workers == 1 else "s", f", at most {max_tasks} tasks" if max_tasks else "")
    store.beat_worker(worker, worker_info(q, pool, sidecar, started_at))
    scheduler.start()
    pool.start()
    try:
        next_beat = 0.0
        while True:
            # Waiting for the running tasks to end: look often, so the exit is prompt.
            look.wait(0.05 if stop["graceful"].is_set() or max_tasks is not None else BEAT)
            look.clear()
            if stop["now"].is_set():
                break
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + BEAT
                try:
                    seen = store.beat_worker(worker, worker_info(q, pool, sidecar, started_at))
                except Exception:
                    log.exception("could not register in the store")
                    seen = {}
                if seen.get("stop"):
                    (stop["now"] if seen.get("now") else stop["graceful"]).set()
                    continue
            if stop["graceful"].is_set() and pool.size:
                pool.stop(wait=False)
            if (stop["graceful"].is_set() or max_tasks is not None) and pool.join(0):
                break
    finally:
        if stop["now"].is_set():
            handed = pool.hand_back("handed back: its worker was told to stop at once")
            if handed:
                log.info("handed %d running task%s back: %s", len(handed),
                         "" if len(handed) == 1 else "s", ", ".join(handed))
        scheduler.stop(wait=not stop["now"].is_set())
        try:
            store.remove_worker(worker)
        except Exception:
            log.exception("could not unregister")
        log.info("worker %s stopped", worker)
        logging.shutdown()
    if stop["now"].is_set():
        os._exit(0)  # threads may be inside tasks that never return
    pool.stop(wait=True)
    store.close()
    return 0

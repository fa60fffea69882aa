"""``nbqueue worker``: a process that runs a queue's tasks and its scheduler.

It works on a store directory (or a Queue found in an importable module, like
Huey's consumer), registers itself in the store (``beat_worker``: pid, workers,
busy, last beat) so notebooks and dashboards see it, and logs task starts, ends
and errors. SIGINT (or a stop asked through the store) finishes the running
tasks and exits; SIGINT twice or SIGTERM exits at once, handing the running
tasks back to pending so another worker runs them.
"""

import contextlib
import logging
import os
import select
import signal
import time

from .runtime.liveness import BEAT
from .runtime.scheduler import Scheduler
from .runtime.worker import WorkerPool
from .states import FAILED, RETRYING, SUCCEEDED


log = logging.getLogger("nbqueue.worker")


def worker_info(q, pool, sidecar, started_at):
    return {"pid": os.getpid(), "host": os.uname().nodename, "queue": q.name,
            "workers": pool.size, "kind": pool.kind, "busy": len(q.state.running),
            "sidecar": bool(sidecar), "started_at": started_at}


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


def _log_event(event, rec, status=None, fields=None):
    """The pool's listener: log each task's start and end (timed from the
    claim's ``started_at``)."""
    if event == "start":
        log.info("%s %s started (attempt %d)", rec.name, rec.id, rec.attempts)
        return
    took = None if rec.started_at is None else time.time() - rec.started_at
    level, text = _describe_end(rec, status, fields or {}, took)
    log.log(level, "%s", text)


def _unregister(store, worker):
    try:
        store.remove_worker(worker)
    except Exception:
        log.exception("could not unregister")


def run_worker(q, workers=4, kind="thread", max_tasks=None, sidecar=False):
    """Run ``q``'s tasks with ``workers`` threads or processes until told to stop
    (signal, ``stop`` in the store) or ``max_tasks`` ran. Returns the exit code."""
    state, store = q.state, q.store
    pool = WorkerPool(state, workers, kind=kind, max_tasks=max_tasks, listener=_log_event)
    scheduler = Scheduler(state)
    stop = {"graceful": False, "now": False}
    # The handler only sets flags: it runs between two bytecodes of the main thread,
    # which may hold a lock it would need (logging's, an Event's). The signal's byte
    # on the wake-up pipe ends the main loop's select() at once.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    def on_signal(number, frame):
        if number == signal.SIGINT and not stop["graceful"]:
            stop["graceful"] = True
        else:
            stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started_at = time.time()
    worker = state.worker_id
    log.info("worker %s on queue %r (%s): %d %s worker%s%s", worker, q.name, store, workers, kind,
             "" if workers == 1 else "s", f", at most {max_tasks} tasks" if max_tasks else "")
    store.beat_worker(worker, worker_info(q, pool, sidecar, started_at))
    scheduler.start()
    pool.start()
    told = lost_store = False
    try:
        next_beat = 0.0
        while not stop["now"]:
            # Waiting for the running tasks to end: look often, so the exit is prompt.
            draining = stop["graceful"] or max_tasks is not None
            if select.select([wake_r], [], [], 0.05 if draining else BEAT)[0]:
                with contextlib.suppress(OSError):
                    os.read(wake_r, 512)
            if stop["graceful"] and not told:
                told = True
                log.info("finishing the running tasks, then exiting (SIGINT again: now)")
            if stop["now"]:
                break
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + BEAT
                try:
                    seen = store.beat_worker(worker, worker_info(q, pool, sidecar, started_at))
                    if lost_store:
                        log.info("the store is reachable again")
                    lost_store = False
                except Exception:
                    if not lost_store:  # once per outage; the workers retry with backoff
                        log.exception("could not register in the store; trying again each second")
                    lost_store = True
                    seen = {}
                if seen.get("stop"):
                    stop["now" if seen.get("now") else "graceful"] = True
                    continue
            if stop["graceful"] and pool.size:
                pool.stop(wait=False)
            if draining and pool.join(0):
                break
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        if stop["now"]:
            # Unregister first and hand the tasks back last, just before exiting:
            # once pending, another worker may start them.
            scheduler.stop(wait=False)
            _unregister(store, worker)
            handed = pool.hand_back("handed back: its worker was told to stop at once")
            log.info("handed %d running task%s back%s", len(handed), "" if len(handed) == 1
                     else "s", (": " + ", ".join(handed)) if handed else "")
        else:
            scheduler.stop(wait=True)
            _unregister(store, worker)
        log.info("worker %s stopped", worker)
        logging.shutdown()
    if stop["now"]:
        os._exit(0)  # threads may be inside tasks that never return
    pool.stop(wait=True)
    store.close()
    return 0

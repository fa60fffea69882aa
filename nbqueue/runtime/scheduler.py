"""The scheduler thread: delayed tasks, retries waiting out their delay, periodic jobs.

One thread per Queue sleeps until the next thing is due, the earliest eta of a
waiting task or the next tick of a periodic job, then promotes the due tasks
and fires the due jobs. In-process changes (a submit with an eta, a job
defined, paused or resumed) wake it at once, so runs are late by well under
10 ms and an idle queue costs no CPU. On a store shared with other processes it
also looks at least every ``SHARED_POLL`` seconds (etas set elsewhere) and
holds the store's scheduler lock: only the holder fires jobs, so each tick runs
once however many kernels and sidecars share the store; when the holder dies
its lock expires after ``LOCK_TTL`` seconds and another process takes over.

It never dies: an error firing one job is logged and counted on that job
(``errors``, ``last_error``, shown on its widget) and the other jobs go on.
"""

import sys
import threading
import time

from ..schedules import next_tick, plan_tick
from ..states import FINISHED

SHARED_POLL = 1.0
LOCK_TTL = 5.0
ERROR_BACKOFF = 1.0


class Scheduler:
    """Fires what is due on ``state.store`` (a ``QueueState``)."""

    def __init__(self, state):
        self.state = state
        self.store = state.store
        self.holder = state.worker_id
        self._stopping = False
        self._thread = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"nbqueue-{self.state.name}-scheduler")
            self._thread.start()

    def stop(self, wait=True, release=True):
        self._stopping = True
        self.store.notify_eta()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if release and self.store.shared:
            try:
                self.store.release_lock(self.holder)
            except Exception:
                pass

    def tick(self, now=None):
        """Promote due tasks and fire due jobs. Returns seconds until the next thing is
        due (None: nothing is waiting)."""
        now = time.time() if now is None else now
        store = self.store
        store.promote_due(now)
        due = [store.next_eta()]
        if not store.shared or store.hold_lock(self.holder, LOCK_TTL, now):
            for job in store.jobs().values():
                if job.paused or job.next_run is None:
                    continue
                try:
                    if job.next_run <= now:
                        self.fire(job, now)
                        job = store.get_job(job.name)
                        if job is None or job.next_run is None:
                            continue
                    next_tick(job, job.next_run)  # computed now, while there is time
                    due.append(job.next_run)
                except Exception as exc:  # one bad job must not stop the others
                    self._job_failed(job, exc, now)
                    due.append(now + ERROR_BACKOFF)
        due = [t for t in due if t is not None]
        return None if not due else max(0.0, min(due) - time.time())

    def fire(self, job, now):
        """Handle a due tick of ``job``: run it, skip it (still running), or count it missed."""
        action, nxt, missed = plan_tick(job, now)
        store = self.store
        if action == "miss":
            store.fire_job(job.name, job.next_run, nxt, missed=missed)
            return
        if not job.overlap and job.last_run_id:
            last = store.status(job.last_run_id)
            if last is not None and last not in FINISHED:
                store.fire_job(job.name, job.next_run, nxt, skipped=1)
                return
        rec = self.state.job_run_record(job, job.next_run)
        if not store.fire_job(job.name, job.next_run, nxt, run=rec, runs=1):
            self.state.forget(rec.id)  # another scheduler fired this tick
            return
        store.trim_runs(job.name, job.keep)

    def _job_failed(self, job, exc, now):
        self.state.log(f"periodic job {job.name!r} could not fire", sys.exc_info())
        try:
            self.store.update_job(job.name, errors=job.errors + 1,
                                  last_error=f"{type(exc).__name__}: {exc}",
                                  next_run=None if job.next_run is None or job.next_run > now
                                  else _skip_past(job, now))
        except Exception:
            self.state.log(f"could not record the error of job {job.name!r}", sys.exc_info())

    def _loop(self):
        store = self.store
        failing = False
        while not self._stopping:
            seen = store.eta_seq
            try:
                wait = self.tick()
                failing = False
            except Exception:
                if not failing:  # once while it lasts (a store's server gone for a while)
                    self.state.log("scheduler error", sys.exc_info())
                failing = True
                wait = ERROR_BACKOFF
            if store.shared:
                wait = SHARED_POLL if wait is None else min(wait, SHARED_POLL)
            store.wait_for_eta(seen, wait)


def _skip_past(job, now):
    """The job's first tick after ``now``, or None (paused until redefined) if even
    that cannot be computed."""
    try:
        return next_tick(job, now)
    except Exception:
        return None

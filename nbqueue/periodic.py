"""``PeriodicJob``: the handle ``@q.periodic`` returns, and ``define_job`` that stores a job.

The scheduler thread (``runtime.scheduler``) fires the ticks; schedules are
read in ``schedules``.
"""

import datetime
import time

from .exceptions import NbqueueError
from .records import JobRecord
from .result import Result
from .schedules import next_tick, zone


class PeriodicJob:
    """A periodic job on a queue: ``q.periodic(...)`` returns one, ``q.periodic_jobs()`` lists them.

    Its runs are ordinary tasks named after the job (``q.tasks(name=job.name)``).
    Calling the job runs it now, like ``run_now()``.
    """

    def __init__(self, queue, name, task=None):
        self.queue = queue
        self.name = name
        self.task = task

    def _record(self):
        job = self.queue.store.get_job(self.name)
        if job is None:
            raise NbqueueError(f"periodic job {self.name!r} was removed; define it again to restore it")
        return job

    @property
    def schedule(self):
        return self._record().schedule

    @property
    def timezone(self):
        return self._record().timezone

    @property
    def next_run(self):
        """When it fires next (an aware datetime in the job's timezone); None while paused."""
        job = self._record()
        if job.paused or job.next_run is None:
            return None
        return datetime.datetime.fromtimestamp(job.next_run, zone(job.timezone))

    @property
    def paused(self):
        return self._record().paused

    @property
    def runs(self):
        return self._record().runs

    @property
    def skipped(self):
        """Ticks skipped because the previous run was still going (``overlap=False``)."""
        return self._record().skipped

    @property
    def missed(self):
        """Ticks missed while no scheduler ran them (kernel stopped, ``catch_up=False``)."""
        return self._record().missed

    @property
    def errors(self):
        """Ticks that failed to fire (logged, shown on the job's widget); the job goes on."""
        return self._record().errors

    @property
    def last_error(self):
        return self._record().last_error

    @property
    def last_result(self):
        job = self._record()
        if job.last_run_id is None or self.queue.store.status(job.last_run_id) is None:
            return None
        return Result._new(job.last_run_id, self.queue)

    @property
    def last_status(self):
        r = self.last_result
        return None if r is None else r.status

    def results(self, status=None, limit=None):
        """The job's runs, oldest first."""
        return self.queue.tasks(status=status, name=self.name, limit=limit)

    def pause(self):
        """Stop firing until ``resume()``; a run in progress goes on."""
        self._record()
        self.queue.store.update_job(self.name, paused=True)

    def resume(self):
        """Fire again. Ticks missed while paused run once if ``catch_up``, else not at all."""
        self._record()
        self.queue.store.update_job(self.name, paused=False)

    def remove(self):
        """Delete the job; its past runs stay. Returns False if it was already gone."""
        return self.queue.store.remove_job(self.name)

    def run_now(self):
        """Run the job once now, outside its schedule; returns the run's Result."""
        job = self._record()
        rec = self.queue.state.job_run_record(job, time.time())
        if not self.queue.store.fire_job(self.name, None, None, run=rec, runs=1):
            raise NbqueueError(f"periodic job {self.name!r} was removed")
        return Result._new(rec.id, self.queue)

    __call__ = run_now

    def __repr__(self):
        try:
            job = self._record()
        except NbqueueError:
            return f"<PeriodicJob {self.name} (removed)>"
        when = "paused" if job.paused else (
            "next=" + datetime.datetime.fromtimestamp(job.next_run, zone(job.timezone)).isoformat(
                timespec="seconds") if job.next_run else "next=?")
        last = self.last_status
        return (f"<PeriodicJob {self.name} {job.schedule!r} {when} runs={job.runs}"
                + (f" skipped={job.skipped}" if job.skipped else "")
                + (f" missed={job.missed}" if job.missed else "")
                + (f" errors={job.errors}" if job.errors else "")
                + (f" last={last}" if last else "") + ">")

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .ui.widgets import mimebundle
        return mimebundle(self, repr(self))

    _nbqueue_view_ = "job"


def define_job(queue, task, schedule, overlap, catch_up, keep=100):
    """Store (or replace) the job that runs ``task`` on ``schedule``, keeping its
    ``keep`` newest finished runs; returns its handle."""
    text, every, tz = schedule
    opts = task.options
    now = time.time()
    job = JobRecord(name=task.name, schedule=text, every=every, timezone=tz, overlap=overlap,
                    catch_up=catch_up, retries=opts.retries, retry_delay=opts.retry_delay,
                    retry_backoff=opts.retry_backoff, timeout=opts.timeout,
                    priority=opts.priority, payload=queue.state.job_payload(task), created_at=now,
                    keep=keep)
    job.next_run = next_tick(job, now)
    queue.store.put_job(job)
    return PeriodicJob(queue, task.name, task)

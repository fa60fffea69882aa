"""Delayed tasks and periodic jobs: the only module that imports croniter.

One thread per Queue sleeps until the next thing is due, the earliest eta of a
waiting task or the next tick of a periodic job, then promotes the due tasks
and fires the due jobs. In-process changes (a submit with an eta, a job
defined, paused or resumed) wake it at once, so runs are late by well under
10 ms and an idle queue costs no CPU. On a store shared with other processes it
also looks at least every ``SHARED_POLL`` seconds (etas set elsewhere) and
holds the store's scheduler lock: only the holder fires jobs, so each tick runs
once however many kernels and sidecars share the store; when the holder dies
its lock expires after ``LOCK_TTL`` seconds and another process takes over.

Cron lines are read by croniter in the job's timezone (default: local time,
DST included). A six-field line puts seconds first: ``"*/10 * * * * *"`` runs
every 10 seconds. ``every=`` intervals are aligned to the epoch, so
``every=timedelta(seconds=30)`` fires at :00 and :30.
"""

import datetime
import functools
import math
import numbers
import os
import sys
import threading
import time

from .exceptions import NbqueueError
from .result import FINISHED
from .storage import JobRecord

SHARED_POLL = 1.0
LOCK_TTL = 5.0
MAX_COUNTED_MISSES = 1000


# ---- schedules ----------------------------------------------------------------
def local_zone():
    """Local time as a DST-aware zone: $TZ, else /etc/localtime, else a fixed offset."""
    from zoneinfo import ZoneInfo
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except Exception:
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.datetime.now().astimezone().tzinfo


def zone(name):
    """The tzinfo for an IANA name (None: local). Raises ValueError naming a bad one."""
    if name is None:
        return local_zone()
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as err:
        raise ValueError(f"unknown timezone {name!r}; give an IANA name like 'Europe/Paris' "
                         "or 'America/New_York' (None means local time)") from err


def check_cron(line):
    """Validate a cron line (5 fields, or 6 with seconds first). Returns it stripped."""
    from croniter import croniter
    if not isinstance(line, str):
        raise TypeError(f"a cron line is a string like '*/15 * * * *', not {line!r}")
    line = " ".join(line.split())
    fields = len(line.split())
    if fields not in (5, 6):
        raise ValueError(
            f"bad cron line {line!r}: give 5 fields (minute hour day month day_of_week) "
            "or 6 with seconds first ('*/10 * * * * *' = every 10 seconds)")
    if not croniter.is_valid(line, second_at_beginning=True):
        raise ValueError(f"bad cron line {line!r}: croniter cannot read it; fields are "
                         "minute hour day month day_of_week (a 6th, first, for seconds)")
    return line


class crontab:  # noqa: N801 -- Huey's spelling
    """A validated cron schedule, Huey-style: ``crontab(minute="*/15")``.

    ``str()`` is the cron line (``str(crontab(minute="0", hour="3")) == "0 3 * * *"``);
    calling it with a datetime tells whether that minute matches, as Huey's does.
    Raises ValueError at once for a bad field.
    """

    def __init__(self, minute="*", hour="*", day="*", month="*", day_of_week="*", second=None):
        parts = [minute, hour, day, month, day_of_week]
        if second is not None:
            parts.insert(0, second)
        for value in parts:
            if not isinstance(value, (str, int)) or " " in str(value).strip():
                raise ValueError(f"crontab field {value!r}: give one cron field like '*/5' or '0,30'")
        self.line = check_cron(" ".join(str(p).strip() for p in parts))

    def __str__(self):
        return self.line

    def __repr__(self):
        return f"crontab({self.line!r})"

    def __eq__(self, other):
        return isinstance(other, crontab) and other.line == self.line

    def __hash__(self):
        return hash(self.line)

    def __call__(self, when):
        from croniter import croniter
        return croniter.match(self.line, when, second_at_beginning=True)


def make_schedule(cron=None, every=None, timezone=None):
    """(schedule text, interval seconds or None, timezone name) from the decorator's
    arguments. Raises ValueError/TypeError naming what is wrong."""
    if (cron is None) == (every is None):
        raise ValueError("give a cron line (@q.periodic('*/15 * * * *')) or an interval "
                         "(@q.periodic(every=timedelta(seconds=30))), not both or neither")
    zone(timezone)  # validates
    if every is not None:
        if isinstance(every, datetime.timedelta):
            every = every.total_seconds()
        if isinstance(every, bool) or not isinstance(every, numbers.Real) or every <= 0:
            raise ValueError(f"every={every!r}: give a timedelta or a number of seconds > 0")
        return f"every {every:g}s", float(every), timezone
    if isinstance(cron, crontab):
        cron = str(cron)
    return check_cron(cron), None, timezone


def next_tick(job, after):
    """The first tick of ``job`` strictly after the ``time.time()`` float ``after``."""
    if job.every:
        return (math.floor(after / job.every) + 1) * job.every
    return _next_cron_tick(job.schedule, job.timezone, after)


@functools.lru_cache(maxsize=256)
def _next_cron_tick(schedule, timezone, after):
    # croniter takes about a millisecond: the scheduler asks for the tick after a
    # job's next run before it sleeps, so firing on the boundary finds it here.
    from croniter import croniter
    start = datetime.datetime.fromtimestamp(after, zone(timezone))
    return croniter(schedule, start, second_at_beginning=True).get_next(float)


def plan_tick(job, now):
    """What to do with a due tick at ``now``: ``("run" | "miss", next_run, missed)``.

    A tick is missed when it is late by more than half its period (at most
    10 s, at least 1 s): nobody was scheduling then (kernel stopped, job
    paused). Missed ticks run once if ``catch_up``, else not at all.
    """
    due = job.next_run
    after_due = next_tick(job, due)
    nxt = after_due if now < after_due else next_tick(job, now)
    period = after_due - due
    if now - due <= max(1.0, min(10.0, period / 2)):
        return "run", nxt, 0
    missed, t = 0, due
    while t <= now and missed < MAX_COUNTED_MISSES:
        missed += 1
        t = next_tick(job, t)
    return ("run" if job.catch_up else "miss"), nxt, missed


# ---- the job handle ----------------------------------------------------------
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
    def last_result(self):
        from .result import Result
        job = self._record()
        if job.last_run_id is None or self.queue.store.get(job.last_run_id) is None:
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
        from .result import Result
        job = self._record()
        rec = self.queue._job_run_record(job, time.time())
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
                + (f" last={last}" if last else "") + ">")

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .widgets import mimebundle
        return mimebundle(self, repr(self))


def define_job(queue, task, schedule, overlap, catch_up):
    """Store (or replace) the job that runs ``task`` on ``schedule``; returns its handle."""
    text, every, tz = schedule
    opts = task.options
    now = time.time()
    job = JobRecord(name=task.name, schedule=text, every=every, timezone=tz, overlap=overlap,
                    catch_up=catch_up, retries=opts.retries, retry_delay=opts.retry_delay,
                    retry_backoff=opts.retry_backoff, timeout=opts.timeout,
                    priority=opts.priority, payload=queue._job_payload(task), created_at=now)
    job.next_run = next_tick(job, now)
    queue.store.put_job(job)
    return PeriodicJob(queue, task.name, task)


# ---- the thread ----------------------------------------------------------------
class Scheduler:
    def __init__(self, queue):
        self.queue = queue
        self.store = queue.store
        self.holder = queue.worker_id
        self._stopping = False
        self._thread = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"nbqueue-{self.queue.name}-scheduler")
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
                if job.next_run <= now:
                    self.fire(job, now)
                    job = store.get_job(job.name)
                    if job is None or job.next_run is None:
                        continue
                next_tick(job, job.next_run)  # computed now, while there is time
                due.append(job.next_run)
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
            last = store.get(job.last_run_id)
            if last is not None and last.status not in FINISHED:
                store.fire_job(job.name, job.next_run, nxt, skipped=1)
                return
        rec = self.queue._job_run_record(job, job.next_run)
        if not store.fire_job(job.name, job.next_run, nxt, run=rec, runs=1):
            self.queue._local_calls.pop(rec.id, None)  # another scheduler fired this tick

    def _loop(self):
        store = self.store
        while not self._stopping:
            seen = store._eta_seq
            try:
                wait = self.tick()
            except Exception:
                self.queue._log("scheduler error", sys.exc_info())
                wait = SHARED_POLL
            if store.shared:
                wait = SHARED_POLL if wait is None else min(wait, SHARED_POLL)
            store.wait_for_eta(seen, wait)


__all__ = ["crontab", "PeriodicJob", "Scheduler"]

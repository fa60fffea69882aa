"""Periodic jobs: schedule math with injected time, overlap, catch-up, DST, re-run
safety, real firing on the boundary, and one scheduler per shared store."""

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

import nbqueue
from nbqueue import crontab
from nbqueue.schedules import next_tick, plan_tick
from nbqueue.records import JobRecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARIS = ZoneInfo("Europe/Paris")


def ts(*args, tz=PARIS):
    return datetime.datetime(*args, tzinfo=tz).timestamp()


def job(schedule, tz="Europe/Paris", every=None, **kw):
    return JobRecord(name="j", schedule=schedule, every=every, timezone=tz, **kw)


@pytest.fixture
def idle_queue():
    """A memory queue with no threads: tests drive ``Scheduler.tick(now=...)`` by hand."""
    q = nbqueue.Queue(f"periodic-{uuid.uuid4().hex[:8]}", storage="memory", start=False)
    yield q
    q.shutdown()


# ---- schedule math ---------------------------------------------------------------
def test_crontab_builds_a_validated_line():
    assert str(crontab(minute="0", hour="3")) == "0 3 * * *"
    assert str(crontab()) == "* * * * *"
    assert str(crontab(minute="*/15", day_of_week="1-5")) == "*/15 * * * 1-5"
    assert crontab(minute="0", hour="3")(datetime.datetime(2026, 1, 1, 3, 0))
    assert not crontab(minute="0", hour="3")(datetime.datetime(2026, 1, 1, 4, 0))
    with pytest.raises(ValueError, match="cron"):
        crontab(minute="61")
    with pytest.raises(ValueError, match="one cron field"):
        crontab(minute="0 3")


def test_next_tick_minute_hour_month_end_and_seconds():
    assert next_tick(job("*/15 * * * *"), ts(2026, 1, 1, 10, 7, 30)) == ts(2026, 1, 1, 10, 15)
    assert next_tick(job("0 * * * *"), ts(2026, 1, 1, 10, 0)) == ts(2026, 1, 1, 11, 0)  # strictly after
    assert next_tick(job("0 0 31 * *"), ts(2026, 4, 2)) == ts(2026, 5, 31)            # April has no 31st
    assert next_tick(job("*/10 * * * * *"), ts(2026, 1, 1, 0, 0, 3)) == ts(2026, 1, 1, 0, 0, 10)
    assert next_tick(job("every 30s", every=30.0), 1000.0) == 1020.0                 # epoch aligned


def test_next_tick_follows_dst_in_the_jobs_timezone():
    # Paris springs forward at 02:00 on 2026-03-29: 02:30 does not exist that day.
    daily = job("30 2 * * *")
    first = next_tick(daily, ts(2026, 3, 28, 12, 0))
    assert datetime.datetime.fromtimestamp(first, PARIS).date() == datetime.date(2026, 3, 29)
    after = next_tick(daily, first)
    assert datetime.datetime.fromtimestamp(after, PARIS) == datetime.datetime(2026, 3, 30, 2, 30, tzinfo=PARIS)
    # An hourly job keeps firing on the hour of wall-clock time across the jump.
    hourly, t, seen = job("0 * * * *"), ts(2026, 3, 29, 0, 30), []
    for _ in range(3):
        t = next_tick(hourly, t)
        seen.append(datetime.datetime.fromtimestamp(t, PARIS).strftime("%H:%M%z"))
    assert seen == ["01:00+0100", "03:00+0200", "04:00+0200"]
    # The same line in New York is another instant.
    assert next_tick(job("0 9 * * *", tz="America/New_York"), ts(2026, 6, 1, 0, 0)) == \
        ts(2026, 6, 1, 9, 0, tz=ZoneInfo("America/New_York"))


def test_plan_tick_runs_on_time_and_misses_or_catches_up_when_late():
    j = job("0 * * * *", next_run=ts(2026, 1, 1, 10, 0))
    assert plan_tick(j, ts(2026, 1, 1, 10, 0, 0) + 0.004) == ("run", ts(2026, 1, 1, 11, 0), 0)
    late = ts(2026, 1, 1, 13, 20)  # the kernel was stopped from 10:00 to 13:20
    assert plan_tick(j, late) == ("miss", ts(2026, 1, 1, 14, 0), 4)
    j.catch_up = True
    assert plan_tick(j, late) == ("run", ts(2026, 1, 1, 14, 0), 4)


# ---- the scheduler with injected time --------------------------------------------
def test_tick_fires_once_and_moves_next_run_on(idle_queue):
    q = idle_queue

    @q.periodic("*/15 * * * *", timezone="Europe/Paris")
    def report():
        return "done"

    t0 = ts(2026, 1, 1, 10, 15)
    q.store.update_job(report.name, next_run=t0)
    q._scheduler.tick(now=t0 + 0.001)
    q._scheduler.tick(now=t0 + 0.002)  # same tick again: nothing new
    runs = report.results()
    assert len(runs) == 1 and runs[0].status == "pending" and runs[0].name == report.name
    assert q.store.get(runs[0].id).eta == t0
    assert report.runs == 1 and report.next_run.timestamp() == ts(2026, 1, 1, 10, 30)


def test_overlap_false_skips_a_tick_while_the_last_run_is_unfinished(idle_queue):
    q = idle_queue

    @q.periodic(every=timedelta(minutes=1))
    def slow():
        pass

    q.store.update_job(slow.name, next_run=600.0)
    q._scheduler.tick(now=600.0)
    q.store.update_job(slow.name, next_run=660.0)
    q._scheduler.tick(now=660.0)          # first run still pending: skip
    assert (slow.runs, slow.skipped, len(slow.results())) == (1, 1, 1)


def test_overlap_true_starts_another_run(idle_queue):
    q = idle_queue

    @q.periodic(every=timedelta(minutes=1), overlap=True)
    def slow():
        pass

    for t in (600.0, 660.0):
        q.store.update_job(slow.name, next_run=t)
        q._scheduler.tick(now=t)
    assert (slow.runs, slow.skipped, len(slow.results())) == (2, 0, 2)


def test_catch_up_after_a_stopped_kernel(idle_queue):
    q = idle_queue

    @q.periodic("0 * * * *", timezone="UTC")
    def hourly():
        pass

    @q.periodic("0 * * * *", timezone="UTC", name="hourly-catch-up", catch_up=True)
    def hourly2():
        pass

    t0 = ts(2026, 1, 1, 10, 0, tz=datetime.timezone.utc)
    for name in (hourly.name, hourly2.name):
        q.store.update_job(name, next_run=t0)
    q._scheduler.tick(now=t0 + 3 * 3600 + 60)  # back 3 h later
    assert (hourly.runs, hourly.missed, len(hourly.results())) == (0, 4, 0)
    assert (hourly2.runs, hourly2.missed, len(hourly2.results())) == (1, 0, 1)  # one run for all 4
    for j in (hourly, hourly2):
        assert j.next_run == datetime.datetime(2026, 1, 1, 14, 0, tzinfo=ZoneInfo("UTC"))


def test_pause_resume_remove_and_run_now(idle_queue):
    q = idle_queue

    @q.periodic("* * * * *")
    def job_():
        return 1

    job_.pause()
    assert job_.paused and job_.next_run is None
    q.store.update_job(job_.name, next_run=100.0)
    q._scheduler.tick(now=100.5)
    assert job_.runs == 0
    job_.resume()
    r = job_.run_now()
    assert r.name == job_.name and job_.runs == 1 and job_.last_result == r
    assert job_.remove() is True and job_.remove() is False
    assert q.periodic_jobs() == []
    assert "removed" in repr(job_)
    with pytest.raises(nbqueue.NbqueueError, match="removed"):
        job_.run_now()


def test_redefining_a_job_replaces_it_never_duplicates(idle_queue):
    q = idle_queue
    for version in range(3):  # the defining cell run three times
        @q.periodic("*/5 * * * *", name="cleanup")
        def cleanup():
            return version

    jobs = q.periodic_jobs()
    assert [j.name for j in jobs] == ["cleanup"]
    q.store.update_job("cleanup", next_run=300.0)
    q._scheduler.tick(now=300.0)
    assert len(q.tasks(name="cleanup")) == 1

    @q.periodic("*/7 * * * *", name="cleanup")
    def cleanup():  # noqa: F811 -- a new schedule replaces the old one and keeps counters
        return "v2"

    assert cleanup.schedule == "*/7 * * * *" and cleanup.runs == 1


def test_bad_schedules_fail_at_decoration(idle_queue):
    q = idle_queue
    with pytest.raises(ValueError, match="bad cron line '61 \\* \\* \\* \\*'"):
        q.periodic("61 * * * *")
    with pytest.raises(ValueError, match="5 fields"):
        q.periodic("* * *")
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        q.periodic("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="not both or neither"):
        q.periodic()
    with pytest.raises(ValueError, match="every"):
        q.periodic(every=-1)
    with pytest.raises(ValueError, match="retries"):
        q.periodic("* * * * *", retries=-1)
    with pytest.raises(TypeError, match="no arguments"):
        @q.periodic("* * * * *")
        def needs_arg(x):
            pass
    assert q.periodic_jobs() == []


def test_huey_spelling(idle_queue):
    q = idle_queue

    @q.periodic_task(crontab(minute="0", hour="3"))
    def nightly():
        pass

    assert nightly.schedule == "0 3 * * *"


# ---- real time -----------------------------------------------------------------
@pytest.mark.slow
def test_seconds_job_fires_on_the_boundary_in_real_time():
    q = nbqueue.Queue(f"rt-{uuid.uuid4().hex[:8]}", storage="memory")
    starts = []
    try:
        @q.periodic("* * * * * *")
        def every_second():
            starts.append(time.time())
            return len(starts)

        time.sleep(3.3)
        every_second.pause()
        assert 2 <= len(starts) <= 4
        # each run starts just after a whole second (tolerant: shared machines are noisy)
        assert all((t % 1.0) < 0.25 for t in starts), starts
        assert all(r.status == "succeeded" for r in every_second.results())
    finally:
        q.shutdown()


def test_a_job_run_is_an_ordinary_task_with_progress_and_output():
    q = nbqueue.Queue(f"rt-{uuid.uuid4().hex[:8]}", storage="memory")
    try:
        done = threading.Event()

        @q.periodic(every=timedelta(seconds=0.2))
        def chatty():
            print("tick")
            nbqueue.progress(1, 1, "done")
            done.set()

        assert done.wait(10)
        r = chatty.results()[0]
        r.wait(10)
        assert r.output == "tick\n" and r.progress.fraction == 1.0
    finally:
        q.shutdown()


# ---- one scheduler per store ------------------------------------------------------
KERNEL = """
import sys, time, nbqueue
q = nbqueue.Queue("shared-cron", storage=sys.argv[1], workers=2)
@q.periodic("* * * * * *", name="beat")
def beat():
    return time.time()
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
q.shutdown()
"""


def spawn(store, seconds):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(KERNEL), store, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_processes_sharing_a_store_fire_each_tick_once(tmp_path):
    store = str(tmp_path / "store")
    procs = [spawn(store, 4.5) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    q = nbqueue.Queue("shared-cron", storage=store, workers=0)
    try:
        runs = [q.store.get(r.id) for r in q.tasks(name="beat")]
        ticks = [r.eta for r in runs]
        assert len(ticks) == len(set(ticks)), "a tick fired twice"
        assert 2 <= len(ticks) <= 6
    finally:
        q.shutdown()


@pytest.mark.slow
def test_another_process_takes_over_when_the_scheduler_holder_dies(tmp_path):
    store = str(tmp_path / "store")
    first = spawn(store, 60)
    assert first.stdout.readline().strip() == "ready", first.stderr.read()
    time.sleep(1.5)  # it holds the scheduler lock now
    second = spawn(store, 60)
    assert second.stdout.readline().strip() == "ready", second.stderr.read()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    q = nbqueue.Queue("shared-cron", storage=store, workers=0)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            later = [r for r in q.tasks(name="beat") if q.store.get(r.id).eta > killed_at + 1]
            if len(later) >= 2:
                break
            time.sleep(0.2)
        assert len(later) >= 2, "nobody took over the schedule"
        took_over = min(q.store.get(r.id).eta for r in later) - killed_at
        assert took_over < 10
        ticks = [q.store.get(r.id).eta for r in q.tasks(name="beat")]
        assert len(ticks) == len(set(ticks))
    finally:
        second.kill()
        second.wait()
        q.shutdown()

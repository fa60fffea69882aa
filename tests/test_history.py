"""History that does not grow without bound, read one page at a time, and memoized
results: ``keep``, ``max_finished``, a periodic job's ``keep``, ``q.tasks`` pages,
``q.counts``, the dashboard's page, and ``@q.task(cache=...)``. On both stores."""

import datetime
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import nbqueue
from conftest import wait_until

WAIT = 10


def value(x):
    return x


def test_keep_drops_finished_records_after_their_time(make_queue):
    q = make_queue(keep=1.0)
    r = q.task(value)(1)
    assert r.get(timeout=WAIT) == 1
    # the heartbeat applies retention every couple of seconds
    assert wait_until(lambda: q.store.status(r.id) is None, timeout=8)
    with pytest.raises(nbqueue.TaskNotFound) as info:
        r.get()
    message = str(info.value)
    assert "dropped by retention" in message and "keep=" in message


def test_keep_never_drops_waiting_or_running_tasks(make_queue):
    q = make_queue(keep=1.0, workers=0)
    waiting = q.task(value).schedule(args=(1,), delay=3600)
    pending = q.task(value)(2)
    dropped = q.store.retain(keep=1.0, now=time.time() + 10_000)
    assert dropped == 0
    assert waiting.status == "scheduled" and pending.status == "pending"


def test_keep_none_keeps_everything(make_queue):
    q = make_queue(keep=None)
    r = q.task(value)(1)
    r.get(timeout=WAIT)
    assert q.store.retain(q.state.keep, q.state.max_finished, now=time.time() + 10 ** 8) == 0
    assert r.get() == 1


def test_memory_queue_keeps_at_most_max_finished():
    # one worker: tasks finish in the order they were submitted, and retention keeps
    # the newest finished
    q = nbqueue.Queue("capped", storage="memory", workers=1, max_finished=5)
    try:
        rs = q.task(value).map(range(12))
        assert rs.get(timeout=WAIT) == list(range(12))
        q.state.housekeeping(now=10 ** 9)  # what the heartbeat does every 2 s
        assert q.counts()["succeeded"] == 5
        kept = [r.id for r in q.tasks()]
        assert kept == [r.id for r in rs.results[-5:]]
    finally:
        q.shutdown()


def test_memory_queue_default_cap_is_ten_thousand():
    q = nbqueue.Queue("default-cap", storage="memory", workers=0, start=False)
    try:
        assert q.state.max_finished == 10_000 and q.state.keep == 7 * 86400
    finally:
        q.shutdown()


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "7 days", True])
def test_keep_is_checked(bad):
    with pytest.raises((TypeError, ValueError), match="keep"):
        nbqueue.Queue("bad-keep", storage="memory", keep=bad, start=False)


def test_periodic_job_keeps_its_last_runs(make_queue):
    q = make_queue(workers=2)
    job = q.periodic(every=datetime.timedelta(hours=1), keep=3)(lambda: 1)
    runs = [job.run_now() for _ in range(6)]
    for r in runs:
        r.get(timeout=WAIT)
    # trimming happens when the scheduler fires a tick; fire one by hand
    q.store.trim_runs(job.name, q.store.get_job(job.name).keep)
    assert [r.id for r in job.results()] == [r.id for r in runs[-3:]]


def test_periodic_keep_is_checked(make_queue):
    q = make_queue(workers=0)
    with pytest.raises(ValueError, match="keep"):
        q.periodic(every=60, keep=0)


def test_tasks_pages_through_the_history_newest_page_first(make_queue):
    q = make_queue(workers=0)
    rs = q.task(value).map(range(30))
    ids = [r.id for r in rs]
    assert [r.id for r in q.tasks(limit=10)] == ids[-10:]             # oldest first in a page
    assert [r.id for r in q.tasks(limit=10, offset=10)] == ids[10:20]
    assert [r.id for r in q.tasks(limit=10, offset=25)] == ids[:5]
    assert [r.id for r in q.tasks()] == ids
    assert q.tasks(limit=10, offset=30) == []
    assert q.counts()["pending"] == 30


def test_tasks_filters_by_state_and_name(make_queue):
    q = make_queue(workers=0)
    a = q.task(value, name="a")
    b = q.task(value, name="b")
    ra = [a(i) for i in range(3)]
    rb = [b(i) for i in range(2)]
    ra[1].cancel()
    assert [r.id for r in q.tasks(name="b")] == [r.id for r in rb]
    assert [r.id for r in q.tasks(status="cancelled")] == [ra[1].id]
    assert [r.id for r in q.tasks(status=["cancelled", "pending"], name="a")] == [ra[0].id, ra[1].id, ra[2].id]


@pytest.mark.parametrize("kwargs, error", [
    ({"status": "done"}, ValueError), ({"limit": -1}, ValueError), ({"offset": -5}, ValueError),
    ({"limit": 2.5}, TypeError), ({"offset": "1"}, TypeError)])
def test_tasks_checks_its_arguments(make_queue, kwargs, error):
    q = make_queue(workers=0)
    with pytest.raises(error):
        q.tasks(**kwargs)


def test_dashboard_text_shows_counts_and_one_page(make_queue):
    q = make_queue(workers=0)
    rs = q.task(value).map(range(40))
    text = q.dashboard().text(limit=5)
    lines = text.splitlines()
    assert "40 tasks, 40 pending" in lines[0]
    assert len(lines) == 1 + 5
    assert rs[-1].id[:8] in lines[1]  # newest first


# ---- memoized results --------------------------------------------------------------
def test_cache_returns_the_earlier_value_without_running(make_queue):
    q = make_queue()
    calls = []

    @q.task(cache=True)
    def square(x):
        calls.append(x)
        return x * x

    first = square(4)
    assert first.get(timeout=WAIT) == 16 and not first.cached
    again = square(4)
    assert again.get(timeout=WAIT) == 16 and again.cached
    other = square(5)
    assert other.get(timeout=WAIT) == 25 and not other.cached
    assert calls == [4, 5]  # in-process workers call the live function


def test_cache_clear_forgets(make_queue):
    q = make_queue()

    @q.task(cache=True)
    def triple(x):
        return 3 * x

    triple(1).get(timeout=WAIT)
    hit = triple(1)
    assert hit.get(timeout=WAIT) == 3 and hit.cached
    assert q.cache_clear() == 1
    r = triple(1)
    r.get(timeout=WAIT)
    assert r.cached is False


def test_editing_the_body_is_a_new_key(make_queue):
    q = make_queue()

    @q.task(cache=True, name="f")
    def f(x):
        return x + 1

    assert f(1).get(timeout=WAIT) == 2

    @q.task(cache=True, name="f")
    def f(x):  # noqa: F811 -- re-running the cell with a new body
        return x + 2

    r = f(1)
    assert r.get(timeout=WAIT) == 3 and not r.cached

    @q.task(cache=True, name="f")
    def f(x):  # noqa: F811 -- the first body again, defined elsewhere: same code, same key
        return x + 1

    r = f(1)
    assert r.get(timeout=WAIT) == 2 and r.cached


def test_cache_age_limit(make_queue):
    q = make_queue()

    @q.task(cache=datetime.timedelta(seconds=0.3))
    def now_value():
        return time.time()

    first = now_value().get(timeout=WAIT)
    assert now_value().get(timeout=WAIT) == first
    time.sleep(0.4)
    r = now_value()
    assert r.get(timeout=WAIT) != first and not r.cached


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "yes"])
def test_cache_option_is_checked(make_queue, bad):
    q = make_queue(workers=0)
    with pytest.raises((TypeError, ValueError), match="cache"):
        q.task(cache=bad)(value)


@pytest.mark.slow
def test_memoized_value_survives_a_new_process(tmp_path):
    store = str(tmp_path / "store")
    code = textwrap.dedent("""
        import sys, nbqueue, time
        q = nbqueue.Queue("memo", storage=sys.argv[1], workers=1)
        @q.task(cache=True)
        def slow_square(x):
            return x * x
        r = slow_square(7)
        print(r.get(timeout=30), r.cached)
        q.shutdown()
    """)
    outputs = [subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True,
                              timeout=60) for _ in range(2)]
    for out in outputs:
        assert out.returncode == 0, out.stderr
    assert [o.stdout.split() for o in outputs] == [["49", "False"], ["49", "True"]]


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_task_cancelled_before_its_run_ends_cancelled_even_if_its_value_is_cached(
        make_queue, worker_type):
    """A run that starts with its cancel already asked (a recovered task that was
    cancelled while its dead worker held it) never runs, cached value or not."""
    q = make_queue(workers=1, worker_type=worker_type)
    cached = q.task(value, cache=True)
    assert cached(5).get(timeout=WAIT) == 5  # the value is in the memo now
    q.workers = 0
    assert wait_until(lambda: not any(t.name.startswith(f"nbqueue-{q.name}-worker-")
                                      for t in threading.enumerate()), timeout=WAIT)
    r = cached(5)
    assert q.store.claim("a-worker-that-dies", 1.0).id == r.id
    assert q.cancel(r.id)  # running: only flagged
    q.store.requeue_expired(now=time.time() + 100)  # its worker died: pending again, flagged
    q.workers = 1
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)

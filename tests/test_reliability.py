"""No busy task, bad value or foreign file stops the queue, runs work twice, or
runs someone else's code. One regression test per finding of the reliability
issue, on both stores where it applies; real processes, real files."""

import datetime
import math
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import nbqueue
from conftest import wait_until

WAIT = 15
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def value(x=None):
    return x


def run_script(code, *args, timeout=90):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


# ---- 1. a task holding the GIL past its lease keeps its claim ------------------------
@pytest.mark.slow
def test_a_task_holding_the_gil_past_its_lease_runs_once_and_succeeds(tmp_path):
    """A C call that keeps the GIL (a backtracking ``re`` match, ~4 s) against a 1 s
    lease, while a second process has the store open and reaps expired leases: the
    holder is alive, so its claim is kept; one run, succeeded."""
    store = str(tmp_path / "store")
    watcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time, nbqueue
            q = nbqueue.Queue("gil", storage=sys.argv[1], workers=0, lease=1.0)
            print("ready", flush=True)
            time.sleep(float(sys.argv[2]))
            q.shutdown()
        """), store, "20"], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert watcher.stdout.readline().strip() == "ready"
        out = run_script("""
            import re, sys, time, nbqueue
            q = nbqueue.Queue("gil", storage=sys.argv[1], workers=1, lease=1.0)
            @q.task
            def hold_the_gil():
                t = time.time()
                re.match(r"(a+)+b", "a" * 27)   # C code that never releases the GIL
                return time.time() - t
            r = hold_the_gil()
            held = r.get(timeout=60)
            print(r.status, r.attempts, q.store.get(r.id).recoveries, round(held, 1))
            q.shutdown()
        """, store)
        assert out.returncode == 0, out.stderr
        status, attempts, recoveries, held = out.stdout.split()
        assert float(held) > 2.0, "the match did not hold the GIL past the lease"
        assert (status, attempts, recoveries) == ("succeeded", "1", "0")
    finally:
        watcher.kill()
        watcher.wait()


# ---- 2. bad numbers are refused at the call, nothing is stored -----------------------
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("option, bad", [
    ("retry_delay", NAN), ("retry_delay", INF), ("retry_delay", -1),
    ("retry_backoff", NAN), ("retry_backoff", 0.5), ("retry_backoff", INF),
    ("timeout", NAN), ("timeout", 0), ("timeout", -3), ("timeout", INF),
    ("expires", NAN), ("expires", 0), ("expires", INF),
    ("priority", "x"), ("priority", 1e9), ("priority", 10 ** 9), ("priority", True),
    ("retries", -1), ("retries", 1.5),
])
def test_task_options_are_checked(make_queue, option, bad):
    q = make_queue(workers=0)
    with pytest.raises((TypeError, ValueError), match=option):
        q.task(**{option: bad})(value)


@pytest.mark.parametrize("kwargs", [
    {"delay": INF}, {"delay": NAN}, {"delay": -1}, {"delay": "soon"},
    {"eta": datetime.datetime(2400, 1, 1)}, {"eta": INF}, {"eta": "tomorrow"},
    {"priority": "x"}, {"priority": 1e9}, {"priority": 10 ** 9},
    {"expires": NAN}, {"expires": -1},
])
def test_schedule_arguments_are_checked_before_anything_is_stored(make_queue, kwargs):
    q = make_queue(workers=0)
    name = next(iter(kwargs))
    with pytest.raises((TypeError, ValueError), match=name):
        q.task(value).schedule(args=(1,), **kwargs)
    assert sum(q.counts().values()) == 0


@pytest.mark.parametrize("lease", [NAN, INF, 0, -1, "10"])
def test_lease_is_checked(lease):
    with pytest.raises((TypeError, ValueError), match="lease"):
        nbqueue.Queue("bad-lease", storage="memory", lease=lease, start=False)


@pytest.mark.parametrize("every", [INF, NAN, 1e-9, 0, -5, datetime.timedelta(0)])
def test_periodic_interval_is_checked_at_decoration(make_queue, every):
    q = make_queue(workers=0)
    with pytest.raises((TypeError, ValueError), match="every"):
        q.periodic(every=every)
    assert q.store.jobs() == {}


# ---- 3. progress values are checked in the task; a bad record breaks no reader ---------
@pytest.mark.parametrize("args, error", [
    (("a", "b"), TypeError), ((NAN, 10), ValueError), ((1, INF), ValueError),
    ((1, 0), ValueError), ((-1, 10), ValueError), ((None,), TypeError)])
def test_bad_progress_fails_that_task_only(make_queue, args, error):
    q = make_queue()

    @q.task
    def reports():
        nbqueue.progress(*args)

    r = reports()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == error.__name__ and "progress(" in info.value.message
    ok = q.task(value)(1)
    assert ok.get(timeout=WAIT) == 1
    assert "queue" in q.dashboard().text() and str(r.progress) is not None


def test_odd_stored_progress_does_not_break_displays(make_queue):
    from nbqueue.ui.widgets import _progress_text
    q = make_queue(workers=0)
    rec = q.store.page(limit=1) or None
    assert rec is None
    r = q.task(value)(1)
    stored = q.store.get(r.id)
    stored.progress_done, stored.progress_total = "a", "b"   # what an old version could store
    assert _progress_text(stored) == "?"
    assert str(nbqueue.Progress("a", "b", None)) == "a/b"


# ---- the scheduler survives a poisoned job --------------------------------------------
def test_scheduler_survives_a_poisoned_job_and_counts_it(make_queue):
    from nbqueue.records import JobRecord
    q = make_queue(workers=2)
    poisoned = JobRecord(name="poisoned", schedule="not a cron line", every=None,
                         next_run=time.time() - 0.1, payload=None)
    q.store.put_job(poisoned)
    job = q.periodic("* * * * * *")(lambda: "tick")
    assert wait_until(lambda: job.runs >= 2, timeout=WAIT)
    bad = q.store.get_job("poisoned")
    assert bad.errors >= 1 and bad.last_error
    assert "errors=" in repr(nbqueue.PeriodicJob(q, "poisoned"))


# ---- 4. store trust -----------------------------------------------------------------
def test_a_new_store_is_private(tmp_path):
    store = tmp_path / "store"
    q = nbqueue.Queue("private", storage=str(store), workers=1)
    try:
        q.task(value)(1).get(timeout=WAIT)
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
        for name in os.listdir(store):
            mode = stat.S_IMODE(os.stat(store / name).st_mode)
            assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
    finally:
        q.shutdown()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o770, 0o777])
def test_a_store_others_can_read_or_write_is_refused(tmp_path, mode):
    store = tmp_path / "store"
    store.mkdir()
    os.chmod(store, mode)
    with pytest.raises(nbqueue.NbqueueError, match="chmod 700"):
        nbqueue.Queue("shared-dir", storage=str(store), start=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_database_owned_by_another_user_is_refused_before_unpickling(tmp_path):
    store = tmp_path / "store"
    q = nbqueue.Queue("owned", storage=str(store), workers=0)
    q.task(value)(1)
    q.shutdown()
    os.chown(store / "nbqueue.db", 65534, 65534)  # nobody
    with pytest.raises(nbqueue.NbqueueError, match="another user|belongs to|owned"):
        nbqueue.Queue("owned", storage=str(store), start=False)


# ---- 5. a task that kills its process crashes at most one more kernel -----------------
@pytest.mark.slow
def test_a_task_that_kills_its_process_is_rerun_once_then_fails(tmp_path):
    store = str(tmp_path / "store")
    kernel = """
        import os, sys, time, nbqueue
        q = nbqueue.Queue("poison", storage=sys.argv[1], workers=0, lease=0.5)
        @q.task
        def poison():
            os._exit(3)               # a segfault, an OOM kill
        if sys.argv[2] == "submit":
            print(poison().id, flush=True)
        q.workers = 1
        time.sleep(4)                 # a kernel the user works in
        print("survived", flush=True)
        q.shutdown()
    """
    first = run_script(kernel, store, "submit")
    task_id = first.stdout.split()[0]
    assert first.returncode == 3
    second = run_script(kernel, store, "open")
    assert second.returncode == 3  # re-run once, as a recovered task
    third = run_script(kernel, store, "open")
    assert third.returncode == 0 and "survived" in third.stdout
    q = nbqueue.Queue("poison", storage=store, workers=0, start=False)
    try:
        r = q.result(task_id)
        assert r.status == "failed" and r.attempts == 2
        assert "WorkerLost" in r.exception().__class__.__name__ + str(r.exception())
        assert "died" in q.store.get(task_id).message
    finally:
        q.shutdown()


# ---- 6. bad paths, names and damaged databases give clear errors -----------------------
def test_a_dangling_symlink_as_store_is_a_clear_error(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "deeper")
    with pytest.raises(nbqueue.NbqueueError, match="link"):
        nbqueue.Queue("dangling", storage=str(link), start=False)


def test_a_long_queue_name_is_a_clear_error():
    with pytest.raises(ValueError, match="queue name"):
        nbqueue.Queue("q" * 300, storage="memory", start=False)


def test_result_of_a_non_string_id_says_what_an_id_is(make_queue):
    q = make_queue(workers=0)
    with pytest.raises(TypeError, match="task id"):
        q.result(123)


def _damage(path, how):
    size = os.path.getsize(path)
    if how == "emptied":
        open(path, "wb").close()
    else:
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(min(8192, size // 2)))


@pytest.mark.parametrize("how", ["emptied", "garbage"])
def test_a_damaged_database_is_reported_not_written_into(tmp_path, how):
    store = tmp_path / "store"
    q = nbqueue.Queue("damaged", storage=str(store), workers=0)
    q.task(value).map(range(2000))
    q.shutdown()
    db = store / "nbqueue.db"
    _damage(db, how)
    before = db.read_bytes()
    with pytest.raises(nbqueue.NbqueueError, match="move it aside|damaged|emptied"):
        q2 = nbqueue.Queue("damaged", storage=str(store), workers=0)
        # a cheap open check may not read the damaged pages: touching them must raise
        q2.tasks()
        q2.counts()
        q2.task(value).map(range(100))
        [r.status for r in q2.tasks()]
        q2.shutdown()
    assert db.read_bytes() == before
    for q3 in list(nbqueue.registry.live.values()):
        if q3.name == "damaged":
            q3.shutdown(wait=False)


def test_nan_in_a_retry_is_impossible(make_queue):
    """retry_delay=nan once left a task retrying for ever at 100% CPU."""
    q = make_queue()
    with pytest.raises(ValueError, match="retry_delay"):
        q.task(retries=2, retry_delay=math.nan)(value)


def test_unreadable_stored_error_and_job_break_no_reader(tmp_path):
    """Rows written by something else (another version, a damaged value): each shows
    as unreadable; pages, the dashboard and the scheduler go on."""
    import sqlite3
    store = str(tmp_path / "store")
    q = nbqueue.Queue("odd-rows", storage=store, workers=1)
    try:
        @q.task
        def boom():
            raise ValueError("bad")

        r = boom()
        r.wait(WAIT)
        good = q.periodic(every=3600)(lambda: 1)
        con = sqlite3.connect(os.path.join(store, "nbqueue.db"))
        with con:
            con.execute("UPDATE tasks SET error = ? WHERE id = ?", (b"not a pickle", r.id))
            con.execute("INSERT INTO jobs VALUES (?, ?)", ("odd", b"not a pickle either"))
        con.close()
        assert r.status == "failed"
        with pytest.raises(nbqueue.TaskException, match="could not be read"):
            r.get()
        assert "odd" in q.dashboard().text() and r.id[:8] in q.dashboard().text()
        jobs = q.store.jobs()
        assert jobs["odd"].paused and "could not be read" in jobs["odd"].last_error
        assert jobs[good.name].schedule.startswith("every")
        # defined again, as the stand-in says: it runs, with nothing of the stand-in
        again = q.periodic(every=3600, name="odd")(lambda: 2)
        assert not again.paused and again.errors == 0
    finally:
        q.shutdown()

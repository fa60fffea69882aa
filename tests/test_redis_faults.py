"""The Redis store under faults, against real ``redis-server`` processes: many
producer and worker processes (every task exactly once), a worker SIGKILLed
mid-task (its lease runs out, another worker runs it), the server restarted or
killed while workers run (append-only file, nothing lost, the workers carry on),
and a producer whose server is down (a ConnectionError naming the URL).

Workers are ``python -m nbqueue worker redis://... --queue NAME`` processes with
``NBQUEUE_SECRET`` in their environment; producers are other Python processes
or this one. Task functions live at module level here: a worker imports this
module (its directory is on their PYTHONPATH) to run them. Each run appends one
line ``KEY PID ATTEMPT`` to a ledger file (O_APPEND: whole lines), so the tests
count executions, not just results. Every process a test starts is SIGKILLed
with its process group at teardown. Needs ``redis-server`` (see conftest.py).
"""

import collections
import contextlib
import os
import signal
import sys
import textwrap
import time

import pytest
from conftest import _redis_server_or_skip, append_line, read_lines, unique_name, wait_until
import test_sidecar
from test_sidecar import _stat

import nbqueue

SECRET = "test-secret"

pytestmark = [pytest.mark.redis, pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")]


# ---- task functions (module level: the worker processes import them) ---------------
def _runs(path):
    """[(key, pid, attempt)] of the ledger at ``path``, in the order they ran."""
    return [(key, int(pid), int(attempt))
            for key, pid, attempt in (line.split() for line in read_lines(path))]


def record_run(ledger, key, seconds=0.0):
    """One ledger line per run; sleeps ``seconds``; returns ``key``."""
    append_line(ledger, f"{key} {os.getpid()} {nbqueue.current_task().attempt}")
    if seconds:
        time.sleep(seconds)
    return key


def stuck_first_attempt(ledger):
    """Attempt 1 notes itself in the ledger and blocks for a minute; later ones finish."""
    attempt = nbqueue.current_task().attempt
    append_line(ledger, f"stuck {os.getpid()} {attempt}")
    if attempt == 1:
        time.sleep(60)
    return f"done on attempt {attempt}"


# ---- processes ---------------------------------------------------------------------
def _alive(pid):
    stat = _stat(pid)
    return stat is not None and stat[0] not in (b"Z", b"X")


class Processes(test_sidecar.Processes):
    """test_sidecar's processes (each leading a session of its own, its output in a log
    file, all killed at teardown), with the test secret, Redis workers and log search."""

    def start(self, argv, stdout=False):
        return super().start(argv, stdout=stdout, env={"NBQUEUE_SECRET": SECRET})

    def worker(self, url, queue, workers=2, lease=None):
        """``python -m nbqueue worker URL --queue QUEUE -w WORKERS [--lease LEASE]``"""
        argv = [sys.executable, "-m", "nbqueue", "worker", url, "--queue", queue,
                "-w", workers]
        if lease is not None:
            argv += ["--lease", lease]
        return self.start(argv)

    def python(self, code, *args, stdout=True):
        return self.start([sys.executable, "-c", textwrap.dedent(code), *args], stdout=stdout)

    def log(self, proc):
        return f"--- log of process {proc.pid} ({proc.args[3:6]}):\n" + \
            self.logs[proc.pid].read_text()[-6000:]

    def grep(self, *needles):
        """Lines of every process's log that hold one of ``needles``."""
        return [f"[{pid}] {line}" for pid, log in self.logs.items()
                for line in log.read_text().splitlines() if any(n in line for n in needles)]

    def all_logs(self):
        return "\n".join(self.log(p) for p in self.popens)


@pytest.fixture
def procs(tmp_path):
    processes = Processes(tmp_path)
    yield processes
    processes.cleanup()


@pytest.fixture
def queues():
    """``queues(url, **kwargs)``: a submit-only Queue (workers=0) on a Redis URL with
    the test secret; shut down at teardown."""
    made = []

    def make(url, name=None, **kwargs):
        kwargs.setdefault("workers", 0)
        q = nbqueue.Queue(name or unique_name("rq"), storage=url, secret=SECRET, **kwargs)
        made.append(q)
        return q

    yield make
    for q in reversed(made):
        with contextlib.suppress(Exception):  # the server may be gone: best effort
            q.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own (append-only, fsync always), for tests that
    stop, kill or restart it; stopped at teardown."""
    redisserver = _redis_server_or_skip()
    server = redisserver.RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def _worker_pids(q):
    """Pids of the live worker processes registered on ``q``'s store."""
    return {info.get("pid") for info in q.store.registered_workers().values()
            if _alive(info.get("pid") or 0)}


def _wait_registered(q, workers, procs, timeout=30):
    pids = {w.pid for w in workers}
    assert wait_until(lambda: pids <= _worker_pids(q), timeout=timeout, interval=0.05), (
        f"workers {sorted(pids)} never registered on the store (registered: "
        f"{sorted(_worker_pids(q))})\n{procs.all_logs()}")


def _wait_counts(q, status, n, procs, timeout):
    """Wait until ``n`` tasks are ``status``; fail early if any task failed or was
    cancelled, saying which tasks are not done and what the worker logs say of them."""
    last = {}

    def done():
        last.update(q.counts())
        return last.get(status, 0) >= n or last.get("failed") or last.get("cancelled")

    wait_until(done, timeout=timeout, interval=0.05)
    if last.get(status, 0) != n:
        now, report = time.time(), []
        for rec in q.store.page(limit=None):
            if rec.status != status:
                lease = None if rec.lease_until is None else round(rec.lease_until - now, 1)
                report.append(f"{rec.id} {rec.status} attempts={rec.attempts} worker="
                              f"{rec.worker} lease_left={lease} message={rec.message!r}; "
                              + " | ".join(procs.grep(rec.id)))
        raise AssertionError(f"waited {timeout}s for {n} {status} tasks: counts {last}; "
                             f"unfinished:\n" + "\n".join(report[:10])
                             + f"\nworker warnings:\n{procs.grep('WARNING', 'ERROR')[-20:]}")


def _stop_gracefully(workers, procs):
    for w in workers:
        w.send_signal(signal.SIGINT)
    for w in workers:
        assert w.wait(timeout=30) == 0, procs.log(w)


# =============================================================================
# a. Two producer processes, three worker processes: 5,000 tasks, each run once
# =============================================================================
PRODUCER = """
    import sys, nbqueue, test_redis_faults
    url, name, ledger, prefix, count = sys.argv[1:6]
    q = nbqueue.Queue(name, storage=url, secret="test-secret", workers=0)
    task = q.task(test_redis_faults.record_run)
    ids = [task(ledger, "%s-%d" % (prefix, i)).id for i in range(int(count))]
    q.shutdown()
    print(" ".join(ids))
"""


def test_two_producers_and_three_workers_run_5000_tasks_exactly_once(
        redis_url, queues, procs, tmp_path):
    q = queues(redis_url)
    ledger = tmp_path / "ledger"
    workers = [procs.worker(redis_url, q.name, workers=2) for _ in range(3)]
    _wait_registered(q, workers, procs)
    producers = [procs.python(PRODUCER, redis_url, q.name, ledger, f"p{n}", 2500)
                 for n in range(2)]
    ids = []
    for p in producers:
        out, _ = p.communicate(timeout=90)
        assert p.returncode == 0, procs.log(p)
        ids += out.split()
    assert len(ids) == len(set(ids)) == 5000

    _wait_counts(q, "succeeded", 5000, procs, timeout=90)
    records = q.store.page(limit=None)
    assert sorted(rec.id for rec in records) == sorted(ids)
    assert {rec.status for rec in records} == {"succeeded"}
    assert collections.Counter(rec.attempts for rec in records) == {1: 5000}
    assert q.result(ids[0]).get(timeout=5) == "p0-0"
    assert q.result(ids[-1]).get(timeout=5) == "p1-2499"

    runs = _runs(ledger)
    executions = collections.Counter(key for key, _, _ in runs)
    assert set(executions) == {f"p{n}-{i}" for n in range(2) for i in range(2500)}
    twice = sorted(key for key, n in executions.items() if n != 1)
    assert twice == [], f"{len(twice)} tasks ran more than once: {twice[:20]}"
    ran_by = collections.Counter(pid for _, pid, _ in runs)
    assert set(ran_by) == {w.pid for w in workers}, ran_by  # all three took part
    _stop_gracefully(workers, procs)
    assert _worker_pids(q) == set()  # they unregistered


# =============================================================================
# b. A worker SIGKILLed mid-task: its lease runs out and another worker runs it
# =============================================================================
def test_a_worker_killed_mid_task_loses_it_to_another_worker_and_nothing_is_lost(
        redis_url, queues, procs, tmp_path):
    lease = 1.0
    q = queues(redis_url, lease=lease)
    ledger = tmp_path / "ledger"
    first = procs.worker(redis_url, q.name, workers=2, lease=lease)
    _wait_registered(q, [first], procs)
    r = q.task(stuck_first_attempt)(str(ledger))
    assert wait_until(lambda: any(k == "stuck" for k, _, _ in _runs(ledger)), timeout=30), \
        procs.all_logs()
    started = time.monotonic()
    assert _runs(ledger) == [("stuck", first.pid, 1)]

    second = procs.worker(redis_url, q.name, workers=2, lease=lease)
    _wait_registered(q, [second], procs)
    quick = q.task(record_run)
    batch = [quick(str(ledger), f"quick-{i}", 0.01) for i in range(300)]
    assert wait_until(lambda: sum(pid == first.pid for k, pid, _ in _runs(ledger)
                                  if k != "stuck") >= 20, timeout=30), procs.all_logs()
    # While its worker lives (and renews), nobody else takes the stuck task, past any lease.
    time.sleep(max(0.0, started + 3 * lease - time.monotonic()))
    stuck_runs = [run for run in _runs(ledger) if run[0] == "stuck"]
    assert stuck_runs == [("stuck", first.pid, 1)], (
        f"the stuck task ran again while its worker was alive: {stuck_runs}")
    assert (r.status, r.attempts) == ("running", 1)

    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    cut_at = len(read_lines(ledger))

    assert r.get(timeout=30) == "done on attempt 2", procs.all_logs()
    rec = q.store.get(r.id)
    assert (rec.status, rec.attempts, rec.recoveries) == ("succeeded", 2, 1), rec
    stuck_runs = [run for run in _runs(ledger) if run[0] == "stuck"]
    assert stuck_runs == [("stuck", first.pid, 1), ("stuck", second.pid, 2)]

    _wait_counts(q, "succeeded", 301, procs, timeout=30)
    by_id = {rec.id: rec for rec in q.store.page(limit=None)}
    assert all(by_id[res.id].status == "succeeded" for res in batch)
    runs = _runs(ledger)
    executions = collections.Counter(key for key, _, _ in runs if key != "stuck")
    assert set(executions) == {f"quick-{i}" for i in range(300)}  # none lost
    # A quick task may run twice only if the killed worker had it: attempt 1 there,
    # attempt 2 on the survivor.
    for i, res in enumerate(batch):
        key = f"quick-{i}"
        mine = [(pid, attempt) for k, pid, attempt in runs if k == key]
        if executions[key] != 1:
            assert mine == [(first.pid, 1), (second.pid, 2)], (key, mine, by_id[res.id])
            assert (by_id[res.id].attempts, by_id[res.id].recoveries) == (2, 1)
    assert all(pid == second.pid for _, pid, _ in runs[cut_at:])
    assert second.poll() is None
    _stop_gracefully([second], procs)


# =============================================================================
# c. The server restarted (or killed) while workers run: nothing lost, none twice
# =============================================================================
@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_workers_carry_on_through_a_redis_restart_and_run_every_task_once(
        how, own_redis, queues, procs, tmp_path):
    lease = 5.0  # longer than the restart: no worker is cut off, so nothing may run twice
    url = own_redis.url
    q = queues(url, lease=lease)
    ledger = tmp_path / "ledger"
    workers = [procs.worker(url, q.name, workers=2, lease=lease) for _ in range(2)]
    _wait_registered(q, workers, procs)
    task = q.task(record_run)
    results = [task(str(ledger), f"t-{i}", 0.03) for i in range(500)]
    assert wait_until(lambda: len(read_lines(ledger)) >= 100, timeout=30), procs.all_logs()

    down = own_redis.restart(downtime=1.0, kill=(how == "sigkill"))
    at_restart = len(read_lines(ledger))
    assert at_restart < 450, f"the run ended before the restart ({at_restart} ran): too fast"
    assert 1.0 <= down < lease - 1, down

    _wait_counts(q, "succeeded", 500, procs, timeout=60)
    assert [w.poll() for w in workers] == [None, None], procs.all_logs()  # still running
    by_id = {rec.id: rec for rec in q.store.page(limit=None)}
    assert sorted(by_id) == sorted(res.id for res in results)  # none lost, none added
    assert {rec.status for rec in by_id.values()} == {"succeeded"}
    runs = _runs(ledger)
    assert {pid for _, pid, _ in runs[at_restart:]} == {w.pid for w in workers}, (
        "not both workers ran tasks after the restart")
    executions = collections.Counter(key for key, _, _ in runs)
    assert set(executions) == {f"t-{i}" for i in range(500)}
    twice = {res.id: f"t-{i}" for i, res in enumerate(results) if executions[f"t-{i}"] != 1}
    assert twice == {}, (
        f"{len(twice)} tasks ran more than once across a {down:.1f}s restart "
        f"(lease {lease}s): " + "; ".join(
            f"{key}: runs {[(p, a) for k, p, a in runs if k == key]}, attempts "
            f"{by_id[i].attempts}, recoveries {by_id[i].recoveries}, {by_id[i].message!r}"
            for i, key in list(twice.items())[:5]))
    _stop_gracefully(workers, procs)


# =============================================================================
# d. A producer whose server is down
# =============================================================================
def test_a_producer_with_redis_down_gets_a_connection_error_naming_the_url(
        own_redis, queues, procs, tmp_path):
    url = own_redis.url
    q = queues(url)
    task = q.task(record_run)
    assert task(str(tmp_path / "ledger"), "before").status == "pending"

    own_redis.stop()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        task(str(tmp_path / "ledger"), "while down")
    assert time.monotonic() - t0 < 30, "the submit hung instead of failing"
    assert url in str(info.value), f"the message does not name {url}: {info.value}"

    # A Queue opened while the server is down fails the same way, at once or at submit.
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        other = queues(url, name=unique_name("rq-down"))
        other.task(record_run)(str(tmp_path / "ledger"), "new queue while down")
    assert time.monotonic() - t0 < 30
    assert url in str(info.value), f"the message does not name {url}: {info.value}"

    # Back up (same port, its append-only file): the same producer submits again.
    own_redis.start()
    r = task(str(tmp_path / "ledger"), "after")
    assert r.status == "pending"
    assert q.counts().get("pending") == 2  # the one before the outage and this one


# =============================================================================
# e. A claim whose reply was lost (the connection dropped as Redis answered)
# =============================================================================
def test_a_claim_whose_reply_never_reached_its_worker_is_not_held_for_ever(
        own_redis, queues, procs, tmp_path):
    # When the server dies right after running a worker's CLAIM (test c's SIGKILL), the
    # claim is on disk but the worker never hears of it. Made here by claiming in the
    # worker's name while its one thread is busy, then cutting the server off: once the
    # worker reaches the server again it hands back what it holds but does not run.
    lease = 1.0
    q = queues(own_redis.url, lease=lease)
    ledger = str(tmp_path / "ledger")
    w = procs.worker(own_redis.url, q.name, workers=1, lease=lease)
    _wait_registered(q, [w], procs)
    (worker_id,) = [wid for wid, info in q.store.registered_workers().items()
                    if info.get("pid") == w.pid]
    busy = q.task(record_run)(ledger, "busy", 4.0)  # its only thread, for 4 s
    assert wait_until(lambda: read_lines(ledger), timeout=30), procs.all_logs()
    r = q.task(record_run)(ledger, "lost")
    claimed = q.store.claim(worker_id, lease)  # as the worker's own CLAIM would
    assert claimed is not None and claimed.id == r.id
    own_redis.restart(downtime=1.5)   # the worker's heartbeat fails meanwhile
    assert busy.get(timeout=30) == "busy"
    assert r.wait(timeout=30), (
        f"a task claimed in the name of a live worker that never heard of it is still "
        f"{r.status}: {q.store.get(r.id)}")
    assert r.get(timeout=1) == "lost"
    assert [k for k, _, _ in _runs(ledger)] == ["busy", "lost"]

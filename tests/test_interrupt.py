"""Cancel and timeout of thread tasks that never check: after a grace of about a
second the worker raises TaskCancelled/TaskTimeout in the task's thread.

Real threads, real stores (memory and disk, through the ``queue``/``make_queue``
fixtures), no mocks. Timed assertions are generous upper bounds: the issue asks
for a pure-Python loop to stop within about 2 s of the cancel (1-2 s after a
timeout); the tests allow more for a loaded machine.
"""

import asyncio
import collections
import threading
import time

import pytest

import nbqueue
from nbqueue.runtime import interrupt

from conftest import gate, new_gate_key, queue_threads, wait_until

WAIT = 15
STOP_BOUND = 4.0   # a never-checking loop stops this soon after cancel()/its timeout

# key -> list of things the tasks below saw
LOG = collections.defaultdict(list)


# ---- module-level task functions (the disk store pickles them by reference) -----
def spin(started=None):
    """A pure-Python loop that never checks."""
    if started is not None:
        gate(started).set()
    x = 0
    while True:
        x += 1


def spin_until(end):
    """Never checks; returns by itself at monotonic time ``end``."""
    x = 0
    while time.monotonic() < end:
        x += 1
    return x


def spin_for(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def sleep_then(seconds, value="late"):
    time.sleep(seconds)  # a C call: the interrupt lands when it returns
    return value


def checking_loop(key, started):
    """Checks cooperatively; notes whether the worker ever had to interrupt it."""
    gate(started).set()
    try:
        while True:
            nbqueue.check_cancelled()
            time.sleep(0.001)
    finally:
        LOG[key].append(("interrupted", nbqueue.current_task().interrupted))


def stubborn(key, started, keep_going):
    """Catches the interrupt ``keep_going`` times, then returns a value."""
    gate(started).set()
    caught = 0
    while True:
        try:
            spin()
        except nbqueue.TaskCancelled:
            caught += 1
            ctx = nbqueue.current_task()
            LOG[key].append(("caught", time.monotonic(), ctx.interrupted, ctx.interrupted_at))
            if caught >= keep_going:
                return "survived"


def loop_on_first_attempt():
    if nbqueue.current_task().attempt == 1:
        spin()
    return nbqueue.current_task().attempt


def chatty(started):
    """Prints and reports progress in a tight loop: the interrupt may land anywhere,
    also while nbqueue writes its output and progress."""
    gate(started).set()
    i = 0
    while True:
        i += 1
        print(f"line {i}")
        if i % 7 == 0:
            nbqueue.progress(i, None, f"at {i}")


async def async_wait(started):
    gate(started).set()
    await asyncio.sleep(60)


def add(a, b):
    return a + b


# ---- cancel ---------------------------------------------------------------------
def test_cancel_stops_a_loop_that_never_checks(queue, gates):
    started = gates.new()
    r = queue.task(spin)(started)
    assert gates[started].wait(WAIT)
    t0 = time.monotonic()
    assert r.cancel() is True
    # the record says so at once, before any interrupt
    rec = queue.store.get(r.id)
    assert rec.status == "running" and rec.cancel_requested
    assert r.progress.message.startswith("cancelling")
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    took = time.monotonic() - t0
    assert took < STOP_BOUND
    assert r.status == "cancelled"
    assert queue.store.get(r.id).message == f"cancelled: interrupted after a {interrupt.GRACE:.1f} s grace"
    assert not (r.progress.message or "").startswith("cancelling")  # the note goes with the run
    # the worker thread survived and runs the next task
    assert queue.task(add)(1, 2).get(timeout=WAIT) == 3


def test_a_task_that_checks_stops_before_any_interrupt(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(checking_loop)(key, started)
    assert gates[started].wait(WAIT)
    r.cancel()
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert LOG[key] == [("interrupted", False)]
    assert queue.store.get(r.id).message == "cancelled while running"


def test_a_task_that_catches_the_interrupt_gets_it_again_and_ends_cancelled(memory_queue, gates):
    queue = memory_queue  # the same on every store: one is enough for this 3 s test
    key, started = gates.new(), gates.new()
    r = queue.task(stubborn)(key, started, 2)
    assert gates[started].wait(WAIT)
    t0 = time.monotonic()
    t0_wall = time.time()
    r.cancel()
    with pytest.raises(nbqueue.TaskCancelled):  # its return value is dropped
        r.get(timeout=WAIT)
    assert r.status == "cancelled"
    assert "caught the interrupt and returned" in queue.store.get(r.id).message
    (_, first, interrupted, at), (_, second, _, _) = LOG[key]
    assert interrupted and t0_wall <= at < t0_wall + STOP_BOUND  # current_task() says when
    assert first - t0 < STOP_BOUND
    assert first < second < first + 2 * STOP_BOUND  # sent again a few seconds later


def test_no_interrupt_reaches_the_next_task_of_the_thread(make_queue, capfd):
    """The cancel is timed so the interrupt falls due just as the task ends by
    itself: it must land in the cancelled task or nowhere, never in the task the
    same thread runs next. Four 1-worker queues in parallel, 5 rounds each."""
    grace = interrupt.GRACE
    failures = []

    def rounds(index):
        q = make_queue(workers=1)
        for n in range(5):
            end = time.monotonic() + grace + 0.2
            r = q.task(spin_until)(end)
            if not wait_until(lambda r=r: r.status != "pending", WAIT):
                failures.append(f"queue {index} round {n}: never started")
                return
            # due 45 ms to 5 ms before the task's own end: sent (5-45 ms late here)
            # about when it ends, before or after
            jitter = (n * 4 + index - 10) * 0.002 - 0.025
            time.sleep(max(0.0, end - grace + jitter - time.monotonic()))
            r.cancel()
            nxt = q.task(spin_for)(0.05)  # claimed by the same thread right after
            try:
                assert nxt.get(timeout=WAIT) > 0
                r.wait(WAIT)
                assert r.status in ("succeeded", "cancelled"), r.status
            except BaseException as exc:  # noqa: B036 -- reported below
                failures.append(f"queue {index} round {n}: {exc!r}")

    threads = [threading.Thread(target=rounds, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert "nbqueue [" not in capfd.readouterr().err  # no worker or heartbeat error


def test_records_and_locks_stay_consistent_wherever_it_lands(make_queue, gates, capfd):
    """Tasks that print and report progress non-stop (nbqueue's own store writes
    run all the time) are cancelled: all end cancelled, the queue goes on."""
    q = make_queue(workers=4)
    results = []
    for _ in range(8):
        started = gates.new()
        results.append(q.task(chatty)(started))
    for i, r in enumerate(results):
        assert wait_until(lambda r=r: r.status == "running", WAIT)
        time.sleep(0.01 * i)
        r.cancel()
    for r in results:
        assert r.wait(WAIT * 2), r.status
        assert r.status == "cancelled"
        lines = r.output.splitlines()[1:-1]  # the first may be cut by the output limit
        assert lines and all(line.startswith("line ") for line in lines)
    assert q.task(add).map([(i, i) for i in range(20)]).get(timeout=WAIT) == [2 * i for i in range(20)]
    counts = q.store.counts()
    assert counts["running"] == 0 and counts["cancelled"] == 8 and counts["succeeded"] == 20
    assert len(queue_threads(q.state.name)) >= 5  # 4 workers + the heartbeat
    assert "nbqueue [" not in capfd.readouterr().err  # no worker or heartbeat error


def test_async_tasks_are_cancelled_through_asyncio(queue, gates):
    started = gates.new()
    r = queue.task(async_wait)(started)
    assert gates[started].wait(WAIT)
    r.cancel()
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert queue.store.get(r.id).message == "cancelled while running"


# ---- timeout --------------------------------------------------------------------
def test_timeout_stops_a_loop_that_never_checks(queue):
    t0 = time.monotonic()
    r = queue.task(spin, timeout=1)()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    took = time.monotonic() - t0
    assert 1.0 <= took < 1.0 + STOP_BOUND
    assert info.value.exc_type.endswith("TaskTimeout")
    assert isinstance(r.exception(), nbqueue.TaskTimeout)
    assert r.status == "failed"
    assert "x += 1" in r.traceback or "while True" in r.traceback  # where it was stopped
    assert queue.store.get(r.id).message == f"timed out: interrupted after a {interrupt.GRACE:.1f} s grace"


def test_timeout_in_a_c_call_ends_when_the_call_returns_never_succeeded(queue):
    t0 = time.monotonic()
    r = queue.task(sleep_then, timeout=1)(3)
    seen = []

    def note():
        seen.append(r.progress.message or "")
        return "C call" in seen[-1] or r.done()

    assert wait_until(note, WAIT)
    assert "waiting for the C call" in seen[-1]  # the widget says why it has not stopped
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    took = time.monotonic() - t0
    assert 3.0 <= took < 3.0 + STOP_BOUND
    assert info.value.exc_type.endswith("TaskTimeout")
    assert r.status == "failed"
    assert queue.store.get(r.id).message.startswith("timed out: the C call it was in returned after 3.")


def test_timeout_interrupt_is_retried_like_any_timeout(queue):
    r = queue.task(loop_on_first_attempt, timeout=0.5, retries=2,
                   retry_on=(nbqueue.TaskTimeout,))()
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2
    assert queue.store.get(r.id).retries_used == 1


def test_timeout_interrupt_is_filtered_by_retry_on(memory_queue):
    queue = memory_queue
    r = queue.task(loop_on_first_attempt, timeout=0.5, retries=2, retry_on=(ValueError,))()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert r.attempts == 1


@pytest.mark.slow
def test_a_cancel_asked_by_another_process_stops_a_task_that_never_checks(tmp_path):
    """The heartbeat learns of it within a second (not only at the next lease renewal),
    then interrupts the task after the grace."""
    import os
    import subprocess
    import sys
    store = str(tmp_path / "store")
    q = nbqueue.Queue("remote-cancel", storage=store, workers=1)
    try:
        started = new_gate_key("started")
        r = q.task(spin)(started)
        assert gate(started).wait(WAIT)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run([sys.executable, "-c", "import sys, nbqueue\n"
                        "q = nbqueue.Queue('remote-cancel', storage=sys.argv[1], workers=0, start=False)\n"
                        "print(q.cancel(sys.argv[2]))", store, r.id],
                       check=True, env=dict(os.environ, PYTHONPATH=root), timeout=60)
        assert r.wait(WAIT)
        assert r.status == "cancelled" and "interrupted" in q.store.get(r.id).message
    finally:
        q.shutdown(wait=False)

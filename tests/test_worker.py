"""The worker: retries, timeouts, cancellation, errors that are not Exceptions,
progress, output capture, the running task's context, idle cost, and the
validation done at submit and at ``@q.task`` time.

Every ``queue`` test runs on the memory store and on a diskcache directory.
Task functions live at module level (the disk store pickles them by reference);
per-test state is keyed by a unique string passed as an argument.
"""

import asyncio
import collections
import datetime
import sys
import threading
import time

import pytest

import nbqueue
from nbqueue import ResultGroup

from conftest import gate, queue_threads, unique_name, wait_gate, wait_until

WAIT = 10

# key -> list of (event, time.time()) written by the tasks below
LOG = collections.defaultdict(list)


class MyBaseException(BaseException):
    pass


def starts(key):
    return [t for what, t in LOG[key] if what == "start"]


def fails(key):
    return [t for what, t in LOG[key] if what == "fail"]


# ---- module-level task functions ---------------------------------------------------
def add(a, b=0):
    return a + b


def flaky(key, failures, exc_type=ConnectionError):
    """Fail the first ``failures`` runs with ``exc_type``, then return the run number."""
    LOG[key].append(("start", time.time()))
    run = len(starts(key))
    if run <= failures:
        LOG[key].append(("fail", time.time()))
        raise exc_type(f"run {run} failed")
    return run


def retry_then(key, delay, then_fail=0):
    """Raise RetryTask(delay) on the first run; then fail ``then_fail`` times; then succeed."""
    LOG[key].append(("start", time.time()))
    run = len(starts(key))
    if run == 1:
        raise nbqueue.RetryTask(delay=delay)
    if run - 1 <= then_fail:
        raise ValueError(f"run {run}")
    return run


def loop_until_stopped(started=None, how="check", seconds=WAIT):
    """Loop on check_cancelled()/progress() until the engine stops us."""
    if started is not None:
        gate(started).set()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if how == "check":
            nbqueue.check_cancelled()
        else:
            nbqueue.progress(i, None, "looping")
        time.sleep(0.001)
    return "never stopped"


def time_out_on_first_attempt():
    if nbqueue.current_task().attempt == 1:
        loop_until_stopped()
    return nbqueue.current_task().attempt


def sleep_past_timeout(seconds):
    time.sleep(seconds)  # never checks: finishes late
    return "late"


def cancel_execution(message):
    raise nbqueue.CancelExecution(message)


def raise_base(kind):
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt()
    if kind == "GeneratorExit":
        raise GeneratorExit()
    raise MyBaseException("custom")


def ran(key):
    LOG[key].append(("start", time.time()))
    return key


def report_progress(key, started):
    nbqueue.progress(3, 10, "loading")
    gate(started).set()
    gate(key).wait(WAIT)
    nbqueue.progress(10)
    return "done"


def many_progress_calls(n):
    for i in range(n):
        nbqueue.progress(i, n, "working")
    return n


def print_things(started=None, key=None):
    print("hello from the task")
    sys.stderr.write("an error line\n")
    sys.stdout.flush()
    if started is not None:
        gate(started).set()
        gate(key).wait(WAIT)
    print("bye from the task")
    return "printed"


def print_tag(tag, n, started, key):
    gate(started).set()
    for i in range(n):
        print(f"{tag}:{i}")
        if i == n // 2:
            gate(key).wait(WAIT)
    return tag


def print_lines(n):
    for i in range(n):
        print(f"line {i}")
    return n


def context_info():
    ctx = nbqueue.current_task()
    return {"id": ctx.id, "attempt": ctx.attempt, "name": ctx.name, "cancelled": ctx.cancelled}


def attempt_then_succeed():
    ctx = nbqueue.current_task()
    if ctx.attempt < 2:
        raise ConnectionError("first attempt")
    return ctx.attempt


async def async_flaky(key):
    await asyncio.sleep(0)
    LOG[key].append(("start", time.time()))
    if len(starts(key)) == 1:
        raise ConnectionError("async first run")
    return len(starts(key))


def echo_kwargs(*args, **kwargs):
    return args, kwargs


def identity(x):
    return x


# ---- retries -------------------------------------------------------------------
def test_retries_with_delay_and_backoff(queue, gates):
    key = gates.new()
    t = queue.task(flaky, retries=3, retry_delay=0.05, retry_backoff=3)
    r = t(key, 2)
    assert r.get(timeout=WAIT) == 3
    assert r.status == "succeeded"
    assert r.attempts == 3
    assert queue.store.get(r.id).retries_used == 2
    s, f = starts(key), fails(key)
    assert len(s) == 3 and len(f) == 2
    # delay before the first retry, times backoff before the second (lower bounds only)
    assert s[1] - f[0] >= 0.05
    assert s[2] - f[1] >= 0.05 * 3


def test_status_passes_through_retrying(queue, gates):
    key = gates.new()
    r = queue.task(flaky, retries=1, retry_delay=0.4)(key, 1)
    assert wait_until(lambda: r.status == "retrying")
    assert r in queue.scheduled()
    assert r.eta is not None
    assert r.get(block=False) is None
    assert not r.is_ready()
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2


def test_retries_exhausted_fails_with_last_error(queue, gates):
    key = gates.new()
    r = queue.task(flaky, retries=2)(key, 100)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == "ConnectionError"
    assert info.value.message == "run 3 failed"
    assert r.status == "failed"
    assert r.attempts == 3
    assert queue.store.get(r.id).retries_used == 2


def test_retry_on_non_matching_exception_fails_at_once(queue, gates):
    key = gates.new()
    r = queue.task(flaky, retries=3, retry_on=(ConnectionError,))(key, 1, ValueError)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == "ValueError"
    assert r.attempts == 1
    assert queue.store.get(r.id).retries_used == 0
    assert len(starts(key)) == 1


@pytest.mark.parametrize("retry_on", [ConnectionError, (ValueError, ConnectionError), [OSError]],
                         ids=["class", "tuple", "list-of-base-class"])
def test_retry_on_matching_exception_retries(queue, gates, retry_on):
    key = gates.new()
    r = queue.task(flaky, retries=1, retry_on=retry_on)(key, 1, ConnectionError)
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2


def test_retry_task_does_not_use_up_a_retry(queue, gates):
    key = gates.new()
    r = queue.task(retry_then, retries=0)(key, 0.05)
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2
    assert queue.store.get(r.id).retries_used == 0
    s = starts(key)
    assert s[1] - s[0] >= 0.05


def test_retry_task_then_real_failures_use_retries(queue, gates):
    key = gates.new()
    r = queue.task(retry_then, retries=1)(key, 0, 1)  # RetryTask, ValueError, success
    assert r.get(timeout=WAIT) == 3
    assert r.attempts == 3
    assert queue.store.get(r.id).retries_used == 1


def test_retry_task_with_delay_is_retrying(queue, gates):
    key = gates.new()
    r = queue.task(retry_then)(key, 0.4)
    assert wait_until(lambda: r.status == "retrying")
    assert r.get(timeout=WAIT) == 2


def test_retry_task_rejects_negative_delay():
    with pytest.raises(ValueError):
        nbqueue.RetryTask(delay=-1)


def test_cancel_retrying_task(queue, gates):
    key = gates.new()
    r = queue.task(flaky, retries=1, retry_delay=60)(key, 1)
    assert wait_until(lambda: r.status == "retrying")
    assert r.cancel() is True
    assert r.status == "cancelled"
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert queue.scheduled() == []
    assert len(starts(key)) == 1


def test_async_task_retries(queue, gates):
    key = gates.new()
    r = queue.task(async_flaky, retries=1)(key)
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2


def test_pipeline_step_that_retries_then_continues(queue, gates):
    key = gates.new()
    first = queue.task(flaky, retries=2)
    second = queue.task(add)
    rg = queue.enqueue(first.s(key, 1).then(second, 100))
    assert rg.get(timeout=WAIT) == [2, 102]


@pytest.mark.parametrize("kind", [
    "memory",
    "disk",
])
def test_retry_calls_the_live_function_and_arguments(request, kind):
    """Design: in-process workers call the live function object with the original
    arguments (closures and notebook state behave as in a plain call), also on retries."""
    q = request.getfixturevalue(f"{kind}_queue")
    calls = []
    box = {"n": 0}

    @q.task(retries=3)
    def count_calls(state):
        calls.append(1)
        state["n"] += 1
        if len(calls) < 3:
            raise ConnectionError(f"call {len(calls)}")
        return len(calls), state["n"]

    r = count_calls(box)
    assert r.get(timeout=WAIT) == (3, 3)
    assert len(calls) == 3 and box["n"] == 3


# ---- timeouts ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["check", "progress"])
def test_timeout_stops_a_looping_task(queue, how):
    r = queue.task(loop_until_stopped, timeout=0.1)(None, how)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert r.status == "failed"
    assert isinstance(r.exception(), nbqueue.TaskTimeout)
    assert "loop_until_stopped" in r.traceback


def test_task_finishing_past_its_timeout_fails(queue):
    r = queue.task(sleep_past_timeout, timeout=0.05)(0.2)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")


def test_timeout_counts_as_an_error_for_retries(queue):
    r = queue.task(time_out_on_first_attempt, timeout=0.1, retries=1)()
    assert r.get(timeout=WAIT) == 2
    assert r.attempts == 2
    assert queue.store.get(r.id).retries_used == 1


def test_timeout_is_filtered_by_retry_on(queue):
    r = queue.task(time_out_on_first_attempt, timeout=0.1, retries=3, retry_on=ValueError)()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert r.attempts == 1
    r = queue.task(time_out_on_first_attempt, timeout=0.1, retries=1,
                   retry_on=nbqueue.TaskTimeout)()
    assert r.get(timeout=WAIT) == 2


def test_timeout_clock_starts_when_the_task_runs(make_queue, gates):
    q = make_queue(workers=1)
    key, started = gates.new(), gates.new()
    blocker = q.task(wait_gate)(key, "blocker", started)
    assert gates[started].wait(WAIT)
    quick = q.task(add, timeout=0.1)(1, 1)
    time.sleep(0.25)  # waits in the queue longer than its timeout
    assert quick.status == "pending"
    gates[key].set()
    assert blocker.get(timeout=WAIT) == "blocker"
    assert quick.get(timeout=WAIT) == 2


# ---- cancellation --------------------------------------------------------------
def test_cancel_pending_task_never_runs(make_queue, gates):
    q = make_queue(workers=1, start=False)
    key, later = gates.new(), gates.new()
    t = q.task(ran)
    r = t(key)
    assert r.cancel() is True
    assert r.status == "cancelled" and r.cancelled() and r.is_ready()
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert r.cancel() is False
    q.start()
    assert t(later).get(timeout=WAIT) == later  # FIFO: the cancelled one would have run first
    assert LOG[key] == []
    assert r.status == "cancelled" and r.attempts == 0


def test_cancel_pending_on_queue_without_workers(make_queue, gates):
    q = make_queue(workers=0)
    key = gates.new()
    r = q.task(ran)(key)
    assert r.status == "pending"
    assert q.cancel(r.id) is True
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert q.pending() == []


@pytest.mark.parametrize("how", ["check", "progress"])
def test_cancel_running_task(queue, gates, how):
    started = gates.new()
    r = queue.task(loop_until_stopped)(started, how)
    assert gates[started].wait(WAIT)
    assert r.status == "running" and r.running()
    assert queue.result(r.id).cancel() is True  # any handle can cancel
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert r.status == "cancelled"
    assert r.cancelled()
    assert r.cancel() is False
    # the worker is free again
    assert queue.task(add)(1, 2).get(timeout=WAIT) == 3


def test_cancel_execution_ends_cancelled(queue):
    r = queue.task(cancel_execution)("nothing to do today")
    with pytest.raises(nbqueue.TaskCancelled) as info:
        r.get(timeout=WAIT)
    assert r.status == "cancelled"
    assert "nothing to do today" in str(info.value)
    assert r.traceback is None


def test_cancel_execution_is_not_retried(queue):
    r = queue.task(cancel_execution, retries=3)("stop")
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert r.attempts == 1


# ---- errors that are not Exceptions ------------------------------------------------
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "MyBaseException"])
def test_base_exception_fails_the_task_not_the_worker(make_queue, kind):
    q = make_queue(workers=1)
    t = q.task(raise_base, retries=2)
    r = t(kind)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith(kind)
    assert r.status == "failed"
    assert r.attempts == 1  # retry_on defaults to Exception: BaseExceptions are not retried
    assert "raise_base" in r.traceback
    # the single worker survived and runs later tasks
    assert q.task(add).map(range(5)).get(timeout=WAIT) == list(range(5))
    assert len([th for th in queue_threads(q.name) if "worker" in th.name]) == 1


# ---- progress ------------------------------------------------------------------
def test_progress_visible_while_running_and_final_after(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(report_progress)(key, started)
    assert gates[started].wait(WAIT)
    assert wait_until(lambda: r.progress.done == 3)
    p = r.progress
    assert (p.done, p.total, p.message) == (3, 10, "loading")
    assert p.fraction == pytest.approx(0.3)
    assert "3/10" in str(p) and "loading" in str(p)
    assert "progress=3/10" in repr(r)
    gates[key].set()
    assert r.get(timeout=WAIT) == "done"
    p = r.progress
    assert (p.done, p.total, p.message) == (10, 10, "loading")  # total and message kept
    assert p.fraction == 1.0


def test_progress_without_total_has_no_fraction(queue):
    @queue.task
    def counting():
        nbqueue.progress(5, message="five")
        return True

    r = counting()
    r.get(timeout=WAIT)
    assert r.progress.done == 5 and r.progress.total is None
    assert r.progress.fraction is None
    assert str(r.progress) == "5 five"


def test_many_progress_calls_do_not_flood_the_store(queue):
    n = 200_000
    store = queue.store
    updates = []
    original = store.update

    def counting_update(task_id, **fields):
        updates.append(task_id)
        return original(task_id, **fields)

    store.update = counting_update  # instance attribute: counts, then calls the real method
    try:
        r = queue.task(many_progress_calls)(n)
        assert r.get(timeout=60) == n
    finally:
        del store.update
    assert r.progress.done == n - 1 and r.progress.total == n
    assert len(updates) < n // 100


# ---- output capture --------------------------------------------------------------
def test_output_is_captured(queue):
    r = queue.task(print_things)()
    assert r.get(timeout=WAIT) == "printed"
    out = r.output
    assert "hello from the task\n" in out
    assert "an error line\n" in out
    assert out.index("hello") < out.index("an error line") < out.index("bye from the task")


def test_output_visible_while_running(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(print_things)(started, key)
    assert gates[started].wait(WAIT)
    assert wait_until(lambda: "hello from the task" in r.output)
    assert "bye" not in r.output
    gates[key].set()
    r.get(timeout=WAIT)
    assert "bye from the task" in r.output


def test_task_output_does_not_leak_to_the_caller(queue, capsys):
    r = queue.task(print_things)()
    r.get(timeout=WAIT)
    captured = capsys.readouterr()
    assert "hello from the task" not in captured.out
    assert "an error line" not in captured.err


def test_plain_thread_output_is_not_captured(queue, gates, capsys):
    key, started = gates.new(), gates.new()
    r = queue.task(print_things)(started, key)
    assert gates[started].wait(WAIT)

    def chatter():
        for i in range(50):
            print(f"OTHER-THREAD {i}")
            sys.stderr.write(f"OTHER-ERR {i}\n")

    th = threading.Thread(target=chatter)
    th.start()
    th.join()
    print("MAIN-THREAD line")
    gates[key].set()
    r.get(timeout=WAIT)
    assert "OTHER" not in r.output and "MAIN-THREAD" not in r.output
    assert "hello from the task" in r.output
    captured = capsys.readouterr()
    assert "OTHER-THREAD 49" in captured.out and "MAIN-THREAD line" in captured.out
    assert "OTHER-ERR 49" in captured.err


def test_concurrent_tasks_keep_their_own_output(queue, gates):
    key = gates.new()
    tags = ["alpha", "beta", "gamma"]
    started_keys = [gates.new() for _ in tags]
    t = queue.task(print_tag)
    rs = [t(tag, 200, s, key) for tag, s in zip(tags, started_keys)]
    for s in started_keys:
        assert gates[s].wait(WAIT)
    gates[key].set()
    assert ResultGroup(rs).get(timeout=WAIT) == tags
    for tag, r in zip(tags, rs):
        lines = r.output.splitlines()
        assert len(lines) == 200
        assert all(line.startswith(tag + ":") for line in lines)


def test_output_is_bounded_to_the_tail(make_queue):
    q = make_queue(output_limit=1000)
    r = q.task(print_lines)(5000)
    assert r.get(timeout=WAIT) == 5000
    out = r.output
    assert 0 < len(out) <= 1000
    assert out.endswith("line 4999\n")
    assert "line 0\n" not in out


def test_output_limit_zero_keeps_nothing(make_queue):
    try:
        q = make_queue(output_limit=0)
    except ValueError:
        return  # refusing 0 is also fine
    r = q.task(print_lines)(10)
    r.get(timeout=WAIT)
    assert r.output == ""


def test_negative_output_limit_raises():
    with pytest.raises(ValueError):
        nbqueue.Queue("neg-output", storage="memory", workers=0, output_limit=-1).shutdown()


# ---- the running task's context ----------------------------------------------------
def test_current_task_outside_and_inside(queue):
    assert nbqueue.current_task() is None
    t = queue.task(context_info)
    r = t()
    info = r.get(timeout=WAIT)
    assert info == {"id": r.id, "attempt": 1, "name": t.name, "cancelled": False}
    assert nbqueue.current_task() is None


def test_current_task_attempt_counts_retries(queue):
    r = queue.task(attempt_then_succeed, retries=1)()
    assert r.get(timeout=WAIT) == 2


# ---- idle cost -------------------------------------------------------------------
def test_idle_queue_uses_no_cpu(queue):
    queue.task(add)(1).get(timeout=WAIT)                  # workers have been busy once
    far = queue.task(add).schedule(args=(1,), delay=60)   # and something waits for an eta
    time.sleep(0.2)
    cpu = time.process_time()
    time.sleep(2.0)
    used = time.process_time() - cpu
    assert used < 0.3, f"an idle queue used {used:.2f}s of CPU in 2s"
    assert far.status == "scheduled"


# ---- validation at submit and at @q.task --------------------------------------------
def test_unpicklable_argument_on_disk_raises_and_enqueues_nothing(disk_queue):
    t = disk_queue.task(identity)
    ok = t(1)
    ok.get(timeout=WAIT)
    before = [r.id for r in disk_queue.tasks()]
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 0 \(lock\)"):
        t(lock)
    with pytest.raises(TypeError, match="'x'"):
        disk_queue.task(echo_kwargs)(1, x=lock)
    with pytest.raises(TypeError, match="argument 0"):
        t.map([1, 2, lock])  # all or nothing
    with pytest.raises(TypeError):
        disk_queue.enqueue(t.s(1).then(t).then(disk_queue.task(add), lock))
    with pytest.raises(TypeError):
        t.schedule(args=(lock,), delay=5)
    assert [r.id for r in disk_queue.tasks()] == before
    assert disk_queue.pending() == [] and disk_queue.scheduled() == []


def test_memory_store_accepts_unpicklable_arguments(memory_queue):
    lock = threading.Lock()
    r = memory_queue.task(identity)(lock)
    assert r.get(timeout=WAIT) is lock  # by reference
    gen = (i for i in range(3))
    assert memory_queue.task(list)(gen).get(timeout=WAIT) == [0, 1, 2]


def test_unpicklable_return_value_on_disk_fails_the_task(disk_queue):
    @disk_queue.task
    def make_lock():
        return threading.Lock()

    r = make_lock()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == "TypeError"
    assert disk_queue.task(add)(1).get(timeout=WAIT) == 1


@pytest.mark.parametrize("bad", [42, "a-name", None], ids=["int", "str", "None"])
def test_non_callable_task_raises_type_error(queue, bad):
    if bad is not None:
        with pytest.raises(TypeError):
            queue.task(bad)
    with pytest.raises(TypeError):
        queue.task()(bad)
    with pytest.raises(TypeError):
        queue.task(retries=1)(bad)
    assert queue._tasks == {}


@pytest.mark.parametrize("options, error", [
    (dict(retries=-1), ValueError),
    (dict(retries=1.5), TypeError),
    (dict(timeout=0), ValueError),
    (dict(timeout=-1), ValueError),
    (dict(timeout=datetime.timedelta(0)), ValueError),
    (dict(timeout="10"), TypeError),
    (dict(retry_delay=-1), ValueError),
    (dict(retry_backoff=0.5), ValueError),
    (dict(retry_on=42), TypeError),
    (dict(retry_on=("ConnectionError",)), TypeError),
    (dict(retry_on=[int]), TypeError),
    (dict(retry_on=(ValueError, "x")), TypeError),
    (dict(priority="high"), TypeError),
    (dict(expires=0), ValueError),
    (dict(expires=-5), ValueError),
    (dict(name=""), ValueError),
])
def test_bad_task_options_raise(queue, options, error):
    with pytest.raises(error):
        queue.task(add, **options)
    with pytest.raises(error):
        queue.task(**options)(add)
    assert queue.tasks() == []


def test_good_task_options_are_accepted(queue):
    t = queue.task(add, retries=0, timeout=datetime.timedelta(seconds=5), retry_delay=0,
                   retry_backoff=1, retry_on=ValueError, priority=-3,
                   expires=datetime.timedelta(minutes=5))
    assert t(2, 2).get(timeout=WAIT) == 4


# ---- expiry ---------------------------------------------------------------------
def test_task_not_started_before_expiry_is_cancelled(make_queue, gates):
    q = make_queue(workers=1)
    key, started, never = gates.new(), gates.new(), gates.new()
    blocker = q.task(wait_gate)(key, "blocker", started)
    assert gates[started].wait(WAIT)
    late = q.task(ran, expires=0.05)(never)
    late_td = q.task(ran).schedule(args=(never,), expires=datetime.timedelta(milliseconds=50))
    in_time = q.task(ran, expires=60)("in-time")
    time.sleep(0.15)
    gates[key].set()
    assert blocker.get(timeout=WAIT) == "blocker"
    assert in_time.get(timeout=WAIT) == "in-time"
    for r in (late, late_td):
        with pytest.raises(nbqueue.TaskCancelled):
            r.get(timeout=WAIT)
        assert r.status == "cancelled"
        assert r.attempts == 0
    assert LOG[never] == []


# ---- stopping while tasks wait -----------------------------------------------------
def test_stopping_pool_leaves_queued_tasks_pending_not_claimed(make_queue, gates):
    """A worker that finishes its task after shutdown() claims nothing more: the tasks
    still queued stay pending (a claim it never ran would sit 'running' for good)."""
    q = make_queue(workers=1)
    key, started = gates.new(), gates.new()
    first = q.task(wait_gate)(key, "first", started)
    later = [q.task(identity)(i) for i in range(3)]
    assert gate(started).wait(WAIT)
    q.shutdown(wait=False)
    gate(key).set()
    assert first.get(timeout=WAIT) == "first"
    assert wait_until(lambda: not queue_threads(q.name))
    assert [r.status for r in later] == ["pending"] * 3


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_shrinking_then_growing_at_once_leaves_a_worker_running(tmp_path, worker_type):
    """workers = 0 then workers = 1 right away: the old thread is still finishing
    (a process worker closes its child) when the pool grows again; it must not be
    counted on, or no thread would be left to run anything."""
    q = nbqueue.Queue(unique_name("resize"), storage=str(tmp_path / "s"), workers=1,
                      worker_type=worker_type)
    try:
        assert q.task(add)(1, 2).get(timeout=30) == 3
        q.workers = 0
        q.workers = 1
        assert q.task(add)(2, 3).get(timeout=30) == 5
    finally:
        q.shutdown()

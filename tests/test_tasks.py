"""The task API: submit, results, map, pipelines, scheduling, priorities, the queue's
lookups and lifecycle, async tasks, callbacks and Result handles.

Every test runs on the memory store and on a diskcache directory (the ``queue``
fixture). Task functions that the disk store must pickle live at module level
(pickled by reference); tests coordinate with them through named gates.
"""

import asyncio
import datetime
import threading
import time

import pytest

import nbqueue
from nbqueue import Queue, Result, ResultGroup

from conftest import gate, queue_threads, unique_name, wait_gate, wait_until

WAIT = 10  # generous timeout for anything that should take milliseconds


# ---- module-level task functions (picklable by reference) ---------------------
def add(a, b=0):
    return a + b


def mul(a, b):
    return a * b


def sub(a, b):
    return a - b


def echo(*args, **kwargs):
    return args, kwargs


def echo_after(value, delay):
    time.sleep(delay)
    return value


def explode(message="boom"):
    raise ValueError(message)


class MyError(Exception):
    pass


def raise_my_error():
    raise MyError("mine")


def whoami():
    ctx = nbqueue.current_task()
    return None if ctx is None else (ctx.id, ctx.attempt)


async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


async def async_sleep_forever(started=None):
    if started is not None:
        gate(started).set()
    await asyncio.sleep(30)
    return "woke up"


async def async_whoami():
    await asyncio.sleep(0)
    nbqueue.progress(1, 2, "half")
    ctx = nbqueue.current_task()
    return ctx.id


# ---- submit / get --------------------------------------------------------------
def test_submit_returns_result_and_get_returns_value(queue):
    t = queue.task(add)
    r = t(2, 3)
    assert isinstance(r, Result)
    assert isinstance(r.id, str) and r.id
    assert r.get(timeout=WAIT) == 5
    assert r() == 5  # Huey's call form
    assert r.status == "succeeded"
    assert r.name == "test_tasks.add" == t.name
    assert r.attempts == 1
    assert r.is_ready() and r.done() and not r.running() and not r.cancelled()
    assert r.wait(0) is True
    assert r.created_at <= r.started_at <= r.finished_at
    assert isinstance(r.finished_at, datetime.datetime)


def test_reads_are_not_destructive(queue):
    r = queue.task(add)(1, 1)
    assert [r.get(timeout=WAIT) for _ in range(3)] == [2, 2, 2]
    assert queue.result(r.id).get() == 2


def test_kwargs_reach_the_task(queue):
    t = queue.task(echo)
    assert t(1, 2, x=3, y="z").get(timeout=WAIT) == ((1, 2), {"x": 3, "y": "z"})
    assert queue.task(add)(1, b=41).get(timeout=WAIT) == 42


def test_task_decorator_with_options_keeps_function_metadata(queue):
    @queue.task(retries=2, timeout=5, priority=3, name="custom-name")
    def documented(x):
        """Docstring."""
        return x

    assert documented.name == "custom-name"
    assert documented.__doc__ == "Docstring."
    assert documented.__wrapped__.__name__ == "documented"
    r = documented(7)
    assert r.name == "custom-name"
    assert r.get(timeout=WAIT) == 7


# ---- map ---------------------------------------------------------------------
def test_map_returns_group_with_values_in_order(queue):
    t = queue.task(echo_after)
    # later items finish first: the group still returns values in submit order
    rg = t.map([(i, (5 - i) * 0.01) for i in range(6)])
    assert isinstance(rg, ResultGroup)
    assert len(rg) == 6
    assert rg.get(timeout=WAIT) == list(range(6))
    assert rg.done() and rg.is_ready()
    assert rg.statuses()["succeeded"] == 6
    assert rg.ids == [r.id for r in rg]
    assert "6 succeeded" in repr(rg)


def test_map_unpacks_tuples_and_passes_single_values(queue):
    t = queue.task(add)
    assert t.map([(1, 2), (3, 4), (5,)]).get(timeout=WAIT) == [3, 7, 5]
    assert t.map([1, 2, 3]).get(timeout=WAIT) == [1, 2, 3]
    assert t.map([]).get(timeout=WAIT) == []
    assert t.map(x for x in [10, 20]).get(timeout=WAIT) == [10, 20]


def test_group_get_non_blocking_and_timeout(queue, gates):
    key = gates.new()
    t = queue.task(wait_gate)
    rg = t.map([(key, 1), (key, 2)])
    assert rg.get(block=False) is None
    assert not rg.done()
    with pytest.raises(TimeoutError):
        rg.get(timeout=0.05)
    assert rg.wait(0.01) is False
    gates[key].set()
    assert rg.get(timeout=WAIT) == [1, 2]


# ---- pipelines ---------------------------------------------------------------
def test_pipeline_passes_previous_value_as_last_argument(queue):
    fetch = queue.task(add)
    parse = queue.task(mul)
    store = queue.task(sub)
    # add(2, 1) = 3; mul(10, 3) = 30; sub(100, 30) = 70
    pipeline = fetch.s(2, 1).then(parse, 10).then(store, 100)
    assert "->" in repr(pipeline)
    rg = queue.enqueue(pipeline)
    assert isinstance(rg, ResultGroup)
    assert rg.get(timeout=WAIT) == [3, 30, 70]
    assert [r.name for r in rg] == [fetch.name, parse.name, store.name]


def test_pipeline_step_without_extra_args(queue):
    fetch = queue.task(add)
    double = queue.task(lambda x: x * 2, name="double")
    rg = queue.enqueue(fetch.s(1, 2).then(double).then(double))
    assert rg.get(timeout=WAIT) == [3, 6, 12]


def test_pipeline_later_steps_wait_for_earlier_ones(queue, gates):
    key, started = gates.new(), gates.new()
    first = queue.task(wait_gate)
    second = queue.task(add)
    rg = queue.enqueue(first.s(key, 5, started).then(second, 1))
    assert gates[started].wait(WAIT)
    assert rg[1].status == "scheduled"
    assert rg.get(block=False) is None
    gates[key].set()
    assert rg.get(timeout=WAIT) == [5, 6]


def test_pipeline_failing_middle_step_cancels_later_steps(queue):
    fetch = queue.task(add)
    parse = queue.task(explode)
    store = queue.task(add)
    rg = queue.enqueue(fetch.s(1, 2).then(parse).then(store, 100))
    assert rg.wait(WAIT)
    assert [r.status for r in rg] == ["succeeded", "failed", "cancelled"]
    with pytest.raises(nbqueue.TaskException) as info:
        rg.get(timeout=WAIT)
    assert info.value.exc_type == "ValueError"
    assert info.value.task_id == rg[1].id
    assert rg[0].get() == 3
    with pytest.raises(nbqueue.TaskCancelled):
        rg[2].get()
    assert rg[2].attempts == 0 and rg[2].started_at is None


def test_cancelling_a_pipeline_step_cancels_the_rest(queue, gates):
    key, started = gates.new(), gates.new()
    first = queue.task(wait_gate)
    rest = queue.task(add)
    rg = queue.enqueue(first.s(key, 1, started).then(rest, 1).then(rest, 1))
    assert gates[started].wait(WAIT)
    assert rg[1].cancel() is True
    assert rg[1].status == "cancelled"
    assert rg[2].status == "cancelled"
    gates[key].set()
    assert rg[0].get(timeout=WAIT) == 1
    with pytest.raises(nbqueue.TaskCancelled):
        rg.get(timeout=WAIT)


def test_enqueue_signature_and_bad_enqueue(queue):
    t = queue.task(add)
    assert queue.enqueue(t.s(4, 5)).get(timeout=WAIT) == 9
    with pytest.raises(TypeError):
        queue.enqueue(add)
    with pytest.raises(TypeError):
        t.s(1).then(add)  # a pipeline step must be a task


# ---- scheduling ----------------------------------------------------------------
def test_schedule_with_delay(queue):
    t = queue.task(add)
    before = time.time()
    r = t.schedule(args=(1, 2), delay=0.4)
    assert r.status == "scheduled"
    assert r in queue.scheduled()
    assert r.eta.timestamp() >= before + 0.4
    assert r.get(block=False) is None
    assert r.get(timeout=WAIT) == 3
    assert r.status == "succeeded"
    assert r.started_at.timestamp() >= before + 0.4


def test_schedule_with_timedelta_and_kwargs(queue):
    t = queue.task(add)
    r = t.schedule(args=[1], kwargs={"b": 5}, delay=datetime.timedelta(milliseconds=300))
    assert r.status == "scheduled"
    assert r.get(timeout=WAIT) == 6


@pytest.mark.parametrize("aware", [False, True], ids=["naive", "aware"])
def test_schedule_with_eta_datetime(queue, aware):
    t = queue.task(add)
    eta = datetime.datetime.now() + datetime.timedelta(seconds=0.4)
    if aware:
        eta = eta.astimezone(datetime.timezone.utc)
    r = t.schedule(args=(2, 2), eta=eta)
    assert r.status == "scheduled"
    assert abs(r.eta.timestamp() - eta.timestamp()) < 1e-3
    assert r.get(timeout=WAIT) == 4
    assert r.started_at.timestamp() >= eta.timestamp()


def test_schedule_in_the_past_runs_now(queue):
    t = queue.task(add)
    r = t.schedule(args=(1, 1), eta=datetime.datetime.now() - datetime.timedelta(hours=1))
    assert r.get(timeout=WAIT) == 2


def test_schedule_bad_arguments(queue):
    t = queue.task(add)
    with pytest.raises(TypeError):
        t.schedule(args=1, delay=1)  # args must be a tuple
    with pytest.raises(ValueError):
        t.schedule(args=(1,), delay=1, eta=datetime.datetime.now())
    with pytest.raises(ValueError):
        t.schedule(args=(1,), delay=-1)
    assert queue.tasks() == []


def test_cancel_scheduled_task(queue):
    t = queue.task(add)
    r = t.schedule(args=(1, 2), delay=60)
    assert r.cancel() is True
    assert r.status == "cancelled"
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert queue.scheduled() == []
    assert r.cancel() is False  # already finished


# ---- priorities ----------------------------------------------------------------
def test_priority_higher_first_fifo_within_priority(make_queue):
    q = make_queue(workers=1, start=False)
    order = []

    def record(tag):
        order.append(tag)
        return tag

    low = q.task(record, name="low")
    high = q.task(record, name="high", priority=5)
    results = [low("low-1"), low("low-2"), high("high-1"), low("low-3"), high("high-2"),
               low.schedule(args=("mid-1",), priority=2)]
    assert [r.status for r in results] == ["pending"] * 6
    q.start()
    assert ResultGroup(results).get(timeout=WAIT)
    assert order == ["high-1", "high-2", "mid-1", "low-1", "low-2", "low-3"]


def test_negative_priority_runs_last(make_queue):
    q = make_queue(workers=1, start=False)
    order = []

    def record(tag):
        order.append(tag)

    background = q.task(record, name="background", priority=-1)
    normal = q.task(record, name="normal")
    rs = [background("b1"), normal("n1"), background("b2"), normal("n2")]
    q.start()
    ResultGroup(rs).get(timeout=WAIT)
    assert order == ["n1", "n2", "b1", "b2"]


# ---- call_local and the registry -------------------------------------------------
def test_call_local_runs_synchronously_without_a_record(queue):
    seen = []

    @queue.task
    def local(x):
        seen.append((threading.current_thread(), nbqueue.current_task()))
        return x * 2

    assert local.call_local(21) == 42
    assert seen == [(threading.current_thread(), None)]
    assert queue.tasks() == []


def test_call_local_raises_like_a_plain_call(queue):
    t = queue.task(explode)
    with pytest.raises(ValueError, match="boom"):
        t.call_local()


def test_redefining_a_task_replaces_it(queue):
    @queue.task
    def job():
        return 1

    first = job

    @queue.task  # the same cell run again
    def job():  # noqa: F811
        return 2

    assert first.name == job.name
    assert queue._tasks[job.name] is job
    assert job().get(timeout=WAIT) == 2

    @queue.task(name="named")
    def one():
        return "one"

    @queue.task(name="named")
    def two():
        return "two"

    assert queue._tasks["named"] is two
    assert two().get(timeout=WAIT) == "two"


def test_two_memory_queues_do_not_see_each_others_tasks():
    a = Queue(unique_name("a"), storage="memory", workers=2)
    b = Queue(unique_name("b"), storage="memory", workers=2)
    idle = Queue(unique_name("idle"), storage="memory", workers=0)
    try:
        ra = a.task(add)(1, 2)
        rb = b.task(add)(3, 4)
        assert ra.get(timeout=WAIT) == 3 and rb.get(timeout=WAIT) == 7
        assert [r.id for r in a.tasks()] == [ra.id]
        assert [r.id for r in b.tasks()] == [rb.id]
        with pytest.raises(nbqueue.TaskNotFound):
            b.result(ra.id)
        with pytest.raises(nbqueue.TaskNotFound):
            Result(rb.id, a)
        # a task waiting in a queue without workers is never run by the others' workers
        waiting = idle.task(add)(5, 5)
        assert a.task(add).map(range(20)).get(timeout=WAIT) == list(range(20))
        assert b.task(add).map(range(20)).get(timeout=WAIT) == list(range(20))
        assert waiting.status == "pending"
        assert a.pending() == [] and b.pending() == []
        assert [r.id for r in idle.pending()] == [waiting.id]
    finally:
        for q in (a, b, idle):
            q.shutdown(wait=True, cancel_pending=True)


# ---- lookups ----------------------------------------------------------------
def test_tasks_filters_by_status_name_and_limit(queue):
    ok = queue.task(add)
    bad = queue.task(explode)
    rs = [ok(i, 1) for i in range(3)]
    for r in rs:
        r.get(timeout=WAIT)
    failing = bad()
    failing.wait(WAIT)
    more = ok(10, 1)
    more.get(timeout=WAIT)

    all_ids = [r.id for r in queue.tasks()]
    assert all_ids == [r.id for r in rs] + [failing.id, more.id]  # oldest first
    assert all(isinstance(r, Result) for r in queue.tasks())
    assert [r.id for r in queue.tasks(status="failed")] == [failing.id]
    assert len(queue.tasks(status="succeeded")) == 4
    assert len(queue.tasks(status=["succeeded", "failed"])) == 5
    assert [r.id for r in queue.tasks(name=bad.name)] == [failing.id]
    assert len(queue.tasks(name=ok.name)) == 4
    assert queue.tasks(name="no-such-task") == []
    assert [r.id for r in queue.tasks(limit=2)] == [failing.id, more.id]  # the newest two
    assert [r.id for r in queue.tasks(name=ok.name, limit=1)] == [more.id]
    assert queue.tasks(limit=0) == []
    assert queue.tasks(status="cancelled") == []
    with pytest.raises(ValueError):
        queue.tasks(status="bogus")
    with pytest.raises(ValueError):
        queue.tasks(limit=-1)


def test_pending_and_scheduled(make_queue):
    q = make_queue(workers=1, start=False)
    t = q.task(add)
    p1, p2 = t(1), t(2)
    s1 = t.schedule(args=(3,), delay=60)
    assert [r.id for r in q.pending()] == [p1.id, p2.id]
    assert [r.id for r in q.scheduled()] == [s1.id]
    assert q.tasks(status="scheduled") == [s1]
    q.start()
    assert p1.get(timeout=WAIT) == 1 and p2.get(timeout=WAIT) == 2
    assert q.pending() == []
    assert [r.id for r in q.scheduled()] == [s1.id]


def test_purge(queue, make_queue):
    ok = queue.task(add)
    bad = queue.task(explode)
    rs = [ok(i) for i in range(3)]
    failing = bad()
    for r in rs + [failing]:
        r.wait(WAIT)
    assert queue.purge(older_than=3600) == 0
    assert queue.purge(older_than=datetime.timedelta(hours=1)) == 0
    assert queue.purge(status="failed") == 1
    with pytest.raises(nbqueue.TaskNotFound):
        failing.status
    assert "purged" in repr(failing)
    with pytest.raises(nbqueue.TaskNotFound):
        queue.result(failing.id)
    assert len(queue.tasks()) == 3
    assert queue.purge(status=["cancelled"]) == 0
    assert queue.purge() == 3
    assert queue.tasks() == []
    assert queue.purge() == 0


def test_purge_older_than_keeps_recent_and_never_touches_waiting(make_queue):
    q = make_queue(workers=1, start=False)
    t = q.task(add)
    waiting = [t(1), t.schedule(args=(2,), delay=60)]
    assert q.purge() == 0
    assert q.purge(older_than=0) == 0
    assert [r.status for r in waiting] == ["pending", "scheduled"]
    q.start()
    assert waiting[0].get(timeout=WAIT) == 1
    assert q.purge(older_than=0) == 1
    assert [r.id for r in q.tasks()] == [waiting[1].id]


@pytest.mark.parametrize("status", ["pending", "running", "scheduled", "retrying", ["succeeded", "pending"]])
def test_purge_of_unfinished_states_raises(queue, status):
    queue.task(add)(1).get(timeout=WAIT)
    with pytest.raises(ValueError):
        queue.purge(status=status)
    assert len(queue.tasks()) == 1


# ---- lifecycle ---------------------------------------------------------------
def test_submit_after_shutdown_raises_queue_closed(queue):
    t = queue.task(add)
    r = t(1, 2)
    assert r.get(timeout=WAIT) == 3
    queue.shutdown(wait=True)
    for submit in (lambda: t(1), lambda: t.map([1, 2]), lambda: t.schedule(args=(1,), delay=1),
                   lambda: queue.enqueue(t.s(1)), lambda: queue.enqueue(t.s(1).then(t))):
        with pytest.raises(nbqueue.QueueClosed) as info:
            submit()
        assert isinstance(info.value, nbqueue.NbqueueError)
        assert isinstance(info.value, RuntimeError)
    with pytest.raises(nbqueue.QueueClosed):
        queue.start()
    # results stay readable
    assert r.get() == 3
    assert queue.result(r.id).get() == 3
    assert len(queue.tasks()) == 1
    queue.shutdown()  # twice is fine
    assert queue_threads(queue.name) == []


def test_shutdown_cancel_pending(make_queue):
    q = make_queue(workers=0)
    t = q.task(add)
    rs = [t(1), t.schedule(args=(2,), delay=60)]
    q.shutdown(wait=True, cancel_pending=True)
    assert [r.status for r in rs] == ["cancelled", "cancelled"]
    with pytest.raises(nbqueue.TaskCancelled):
        rs[0].get(timeout=WAIT)


def test_shutdown_waits_for_running_task(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(wait_gate)(key, "finished", started)
    assert gates[started].wait(WAIT)
    threading.Timer(0.05, gates[key].set).start()
    queue.shutdown(wait=True)
    assert r.status == "succeeded"
    assert r.get() == "finished"


def test_context_manager(store_kind, tmp_path):
    name = unique_name("ctx")
    storage = "memory" if store_kind == "memory" else str(tmp_path / "ctx")
    with Queue(name, storage=storage, workers=2) as q:
        t = q.task(add)
        r = t(20, 22)
        assert r.get(timeout=WAIT) == 42
        assert queue_threads(name)
    with pytest.raises(nbqueue.QueueClosed):
        t(1)
    assert r.get() == 42
    assert queue_threads(name) == []


def test_recreated_queue_takes_over(make_queue, gates):
    q1 = make_queue(workers=4)
    name = q1.name
    t = q1.task(add)
    slow = q1.task(wait_gate)
    done = t(1, 2)
    assert done.get(timeout=WAIT) == 3
    key, started = gates.new(), gates.new()
    in_flight = slow(key, "old pool", started)
    assert gates[started].wait(WAIT)

    q2 = make_queue(name=name)  # the cell that creates the queue, run again
    assert q2 is not q1 and q2.store is q1.store
    # old handles keep working
    assert done.get() == 3
    assert Result(done.id, q2).get() == 3
    assert q2.result(in_flight.id).status == "running"
    # the old task function submits to the live queue
    r = t(5, 5)
    assert r.queue is q2
    assert r.get(timeout=WAIT) == 10
    # the task running when the cell was re-run finishes and is seen by both handles
    gates[key].set()
    assert in_flight.get(timeout=WAIT) == "old pool"
    assert q2.result(in_flight.id).get() == "old pool"
    assert {x.id for x in q2.tasks()} == {done.id, in_flight.id, r.id}
    assert q2.task(add)(1, 1).get(timeout=WAIT) == 2
    # the old pool's threads exit: one pool of 4 workers + heartbeat + scheduler is left
    assert wait_until(lambda: len(queue_threads(name)) == 4 + 2), \
        [t.name for t in queue_threads(name)]
    q2.shutdown(wait=True)
    assert wait_until(lambda: queue_threads(name) == []), [t.name for t in queue_threads(name)]
    with pytest.raises(nbqueue.QueueClosed):
        t(1, 1)


def test_recreated_queue_keeps_pending_tasks(make_queue):
    q1 = make_queue(workers=0)
    t = q1.task(add)
    rs = [t(i, 1) for i in range(3)]
    q2 = make_queue(name=q1.name, workers=2)
    assert ResultGroup(rs).get(timeout=WAIT) == [1, 2, 3]
    assert len(q2.tasks()) == 3


def test_disk_results_survive_a_new_queue_object(tmp_path):
    """A kernel restart: the same store opened again sees the results."""
    name = unique_name("restart")
    storage = str(tmp_path / "durable")
    q1 = Queue(name, storage=storage, workers=2)
    r = q1.task(add)(40, 2)
    assert r.get(timeout=WAIT) == 42
    q1.shutdown(wait=True)
    q2 = Queue(name, storage=storage, workers=2)
    try:
        assert q2 is not q1 and q2.store is not q1.store
        assert q2.result(r.id).get(timeout=WAIT) == 42
        assert Result(r.id, q2).status == "succeeded"
    finally:
        q2.shutdown(wait=True)


# ---- async tasks ---------------------------------------------------------------
def test_async_task_runs_to_completion(queue):
    t = queue.task(async_add)
    assert t(1, 2).get(timeout=WAIT) == 3
    assert t.map([(i, i) for i in range(5)]).get(timeout=WAIT) == [0, 2, 4, 6, 8]


def test_async_task_sees_its_context(queue):
    r = queue.task(async_whoami)()
    assert r.get(timeout=WAIT) == r.id
    assert r.progress.done == 1 and r.progress.total == 2


def test_async_task_timeout_is_task_timeout(queue):
    t = queue.task(async_sleep_forever, timeout=0.2)
    r = t()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert r.status == "failed"
    assert info.value.exc_type.endswith("TaskTimeout")
    assert isinstance(r.exception(), nbqueue.TaskTimeout)


def test_cancel_running_async_task(queue, gates):
    started = gates.new()
    r = queue.task(async_sleep_forever)(started)
    assert gates[started].wait(WAIT)
    assert r.status == "running"
    assert r.cancel() is True
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert r.status == "cancelled"
    # the worker's event loop is still usable
    assert queue.task(async_add)(2, 2).get(timeout=WAIT) == 4


# ---- callbacks ---------------------------------------------------------------
def test_add_done_callback_called_once(queue, gates):
    key = gates.new()
    r = queue.task(wait_gate)(key, "v")
    calls = []
    called = threading.Event()

    def cb(result):
        calls.append(result)
        called.set()

    r.add_done_callback(cb)
    assert calls == []
    gates[key].set()
    assert r.get(timeout=WAIT) == "v"
    assert called.wait(WAIT)
    assert len(calls) == 1 and calls[0] == r and calls[0].get() == "v"
    # already done: called at once, in this thread
    later = []
    r.add_done_callback(lambda res: later.append((res, threading.current_thread())))
    assert later == [(r, threading.current_thread())]
    time.sleep(0.05)
    assert len(calls) == 1 and len(later) == 1


def test_add_done_callback_on_failure_and_cancel(make_queue):
    q = make_queue(workers=0)
    t = q.task(add)
    pending = t(1)
    calls = []
    pending.add_done_callback(calls.append)
    assert pending.cancel() is True
    assert calls == [pending]

    q.workers = 1
    bad = q.task(explode)()
    got = threading.Event()
    failures = []

    def on_fail(res):
        failures.append(res.status)
        got.set()

    bad.add_done_callback(on_fail)
    assert got.wait(WAIT)
    assert failures == ["failed"]


def test_raising_callback_does_not_break_the_queue(queue):
    r = queue.task(add)(1)
    r.get(timeout=WAIT)

    def broken(res):
        raise RuntimeError("callback bug")

    r.add_done_callback(broken)  # logged, not raised
    assert queue.task(add)(2).get(timeout=WAIT) == 2


# ---- Result handles ------------------------------------------------------------
def test_repr_shows_status(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(wait_gate)(key, None, started)
    assert gates[started].wait(WAIT)
    assert "status=running" in repr(r)
    assert r.id in repr(r)
    gates[key].set()
    r.get(timeout=WAIT)
    assert "status=succeeded" in repr(r)
    bad = queue.task(explode)()
    bad.wait(WAIT)
    assert "status=failed" in repr(bad) and "ValueError" in repr(bad)


def test_rebuild_handles_from_an_id(queue):
    r = queue.task(add)(3, 4)
    r.get(timeout=WAIT)
    again = Result(r.id, queue)
    also = queue.result(r.id)
    assert again == r == also
    assert hash(again) == hash(r)
    assert again.get() == also.get() == 7
    assert again.name == r.name and again.status == "succeeded"


def test_result_without_queue_uses_latest_queue(queue):
    r = queue.task(add)(1, 2)
    r.get(timeout=WAIT)
    assert Result(r.id).get() == 3


def test_unknown_id_raises_task_not_found(queue):
    for lookup in (lambda: queue.result("no-such-id"), lambda: Result("no-such-id", queue),
                   lambda: queue.cancel("no-such-id")):
        with pytest.raises(nbqueue.TaskNotFound) as info:
            lookup()
        assert isinstance(info.value, KeyError)
        assert isinstance(info.value, nbqueue.NbqueueError)
        assert "no-such-id" in str(info.value)
    with pytest.raises(KeyError):
        queue.result("no-such-id")


def test_get_non_blocking_returns_none_until_ready(queue, gates):
    key = gates.new()
    r = queue.task(wait_gate)(key, 99)
    assert r.get(block=False) is None
    assert r.is_ready() is False and r.done() is False
    assert r.wait(0.01) is False
    gates[key].set()
    assert r.wait(WAIT) is True
    assert r.get(block=False) == 99


def test_get_timeout_raises_timeout_error(queue, gates):
    key = gates.new()
    r = queue.task(wait_gate)(key, "late")
    with pytest.raises(TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        r.exception(timeout=0.05)
    gates[key].set()
    assert r.get(timeout=WAIT) == "late"  # get() again keeps waiting


def test_exception_and_traceback_of_a_failed_task(queue):
    r = queue.task(explode)("kaboom")
    exc = r.exception(timeout=WAIT)
    assert type(exc) is ValueError
    assert exc.args == ("kaboom",)
    with pytest.raises(nbqueue.TaskException) as info:
        r.get()
    err = info.value
    assert err.exc_type == "ValueError"
    assert err.message == "kaboom"
    assert type(err.exc) is ValueError
    assert err.task_id == r.id
    assert "explode" in err.traceback
    assert "explode" in r.traceback
    assert "ValueError: kaboom" in r.traceback
    assert "ValueError: kaboom" in str(err)


def test_custom_exception_type_is_kept(queue):
    r = queue.task(raise_my_error)()
    exc = r.exception(timeout=WAIT)
    assert type(exc) is MyError
    with pytest.raises(nbqueue.TaskException) as info:
        r.get()
    assert info.value.exc_type.endswith("MyError")
    assert "raise_my_error" in r.traceback


def test_exception_and_traceback_of_a_successful_task(queue):
    r = queue.task(add)(1)
    assert r.exception(timeout=WAIT) is None
    assert r.traceback is None


def test_exception_of_cancelled_task_raises(make_queue):
    q = make_queue(workers=0)
    r = q.task(add)(1)
    r.cancel()
    with pytest.raises(nbqueue.TaskCancelled):
        r.exception(timeout=WAIT)


def test_current_task_inside_and_outside(queue):
    assert nbqueue.current_task() is None
    nbqueue.progress(1, 2)  # a no-op outside a task
    nbqueue.check_cancelled()
    r = queue.task(whoami)()
    assert r.get(timeout=WAIT) == (r.id, 1)


def test_a_done_callback_raising_systemexit_leaves_no_claimed_task_unrun(make_queue, gates):
    """The worker ends a run and claims the next task in one step, then calls the done
    callbacks: one that raises SystemExit must not leave that next task claimed and
    never run."""
    q = make_queue(workers=1)
    key = gates.new()
    first = q.task(wait_gate)(key, "first")
    second = q.task(wait_gate)(key, "second")   # pending while the first runs

    def bad_callback(result):
        raise SystemExit("a callback that exits")

    first.add_done_callback(bad_callback)
    gates[key].set()
    assert second.get(timeout=WAIT) == "second"
    assert second.attempts in (1, 2)
    assert q.task(wait_gate)(key, "third").get(timeout=WAIT) == "third"   # the worker lives

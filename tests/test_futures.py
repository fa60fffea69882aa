"""Results as futures and awaitables: ``await r``, ``asyncio.gather``, ``r.future()``
with ``asyncio.wrap_future`` and ``concurrent.futures.wait``/``as_completed``,
``nbqueue.wait``/``nbqueue.as_completed``, cancelling through a future, the task's
own traceback chained under ``TaskException``, and the exception classes that are
also concurrent.futures'.

Every queue test runs on the memory store and on a disk store (the ``queue`` and
``make_queue`` fixtures), with real worker threads; tasks coordinate through gates.
"""

import asyncio
import concurrent.futures as cf
import os
import subprocess
import sys
import textwrap
import time
import traceback

import pytest

import nbqueue
from nbqueue.exceptions import (
    InvalidStateError,
    NbqueueError,
    TaskCancelled,
    TaskTraceback,
)

from conftest import gate, wait_gate, wait_until

WAIT = 10  # generous upper bound for anything that should take milliseconds
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- module-level task functions (picklable by reference) ---------------------
def add(a, b=0):
    return a + b


def explode_here(message="boom"):
    raise ValueError(message)  # the user's line the traceback must show


def explode_later(key, message="late"):
    wait_gate(key)
    raise KeyError(message)


def run_until_cancelled(started):
    gate(started).set()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        nbqueue.check_cancelled()  # raises TaskCancelled once cancel() was asked
        time.sleep(0.005)
    return "never cancelled"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT))


# ---- await ------------------------------------------------------------------------
def test_await_result_does_not_block_the_event_loop(queue, gates):
    key, started = gates.new(), gates.new()
    r = queue.task(wait_gate)(key, "value", started)

    async def opener():
        # Runs only if awaiting r leaves the loop free; it opens the gate r waits for.
        assert await asyncio.to_thread(gates[started].wait, WAIT)
        gates[key].set()
        return "opened"

    async def main():
        return await asyncio.gather(r, opener())

    assert run(main()) == ["value", "opened"]


def test_await_result_and_gather(queue):
    t = queue.task(add)

    async def main():
        one = await t(1, 2)
        both = await asyncio.gather(t(2, 3), t(3, 4))
        return one, both

    assert run(main()) == (3, [5, 7])


def test_await_group_returns_values_in_order(queue):
    t = queue.task(add)

    async def main():
        mapped = await t.map([1, 2, 3])
        piped = await queue.enqueue(t.s(1, 2).then(t, 10).then(t, 100))
        gathered = await asyncio.gather(t.map([4, 5]), t(6))
        return mapped, piped, gathered

    assert run(main()) == ([1, 2, 3], [3, 13, 113], [[4, 5], 6])


def test_await_raises_what_get_raises(queue):
    bad = queue.task(explode_here)("kaboom")
    waiting = queue.task(add).schedule(args=(1,), delay=60)
    waiting.cancel()

    async def main():
        with pytest.raises(nbqueue.TaskException) as info:
            await bad
        assert info.value.exc_type == "ValueError"
        with pytest.raises(nbqueue.TaskCancelled):
            await waiting
        with pytest.raises(cf.CancelledError):  # a TaskCancelled is one
            await waiting
        return "ok"

    assert run(main()) == "ok"


def test_await_group_raises_for_the_first_member_that_did_not_succeed(queue):
    t, bad = queue.task(add), queue.task(explode_here)
    rg = queue.enqueue(t.s(1, 2).then(bad).then(t, 100))  # step 2 fails, step 3 is cancelled

    async def main():
        with pytest.raises(nbqueue.TaskException) as info:
            await rg
        return info.value.task_id

    assert run(main()) == rg[1].id
    assert rg[0].get(timeout=WAIT) == 3


def test_a_cancelled_await_stops_waiting_and_leaves_the_task(queue):
    t = queue.task(add)
    r = t.schedule(args=(1,), delay=60)
    group = nbqueue.ResultGroup([t.schedule(args=(i,), delay=60) for i in range(2)])

    async def wait_for(x):
        return await x

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r, 0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(group, 0.05)
        asyncio.get_running_loop().create_task(wait_for(r))  # asyncio.run cancels it at exit
        await asyncio.sleep(0)

    asyncio.run(main())
    # like an interrupted get(): the tasks are still there
    assert r.status == "scheduled" and group.statuses() == {"scheduled": 2}


def test_a_wrapped_future_chains_cancellation_to_the_task(queue):
    r = queue.task(add).schedule(args=(1,), delay=60)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(r.future()), 0.05)

    asyncio.run(main())
    assert r.status == "cancelled"


# ---- r.future() ---------------------------------------------------------------------
def test_future_is_a_real_concurrent_future_and_one_per_task(queue):
    r = queue.task(add)(20, 22)
    fut = r.future()
    assert isinstance(fut, cf.Future)
    assert r.future() is fut
    assert queue.result(r.id).future() is fut  # another handle on the same task
    assert fut.result(timeout=WAIT) == 42
    assert fut.exception(timeout=WAIT) is None
    assert fut.done() and not fut.cancelled() and not fut.running()
    assert fut.handle == r


def test_future_of_a_finished_task_is_done_at_once(queue):
    r = queue.task(add)(1, 1)
    assert r.get(timeout=WAIT) == 2
    fut = queue.result(r.id).future()
    assert fut.done() and fut.result() == 2


def test_wrap_future_in_asyncio(queue):
    r = queue.task(add)(5, 6)

    async def main():
        return await asyncio.wrap_future(r.future())

    assert run(main()) == 11


def test_future_of_a_failed_task_holds_the_task_exception(queue):
    fut = queue.task(explode_here)("bad").future()
    exc = fut.exception(timeout=WAIT)
    assert isinstance(exc, nbqueue.TaskException) and exc.exc_type == "ValueError"
    with pytest.raises(nbqueue.TaskException):
        fut.result()


def test_future_result_timeout_names_the_task(queue, gates):
    key = gates.new()
    r = queue.task(wait_gate)(key, 1)
    with pytest.raises(TimeoutError, match=r.id):
        r.future().result(timeout=0.01)
    gates[key].set()
    assert r.future().result(timeout=WAIT) == 1


def test_concurrent_futures_wait_and_as_completed_on_futures(queue, gates):
    key = gates.new()
    fast = queue.task(add)(1, 2)
    slow = queue.task(wait_gate)(key, "slow")
    futs = [fast.future(), slow.future()]
    done, not_done = cf.wait(futs, timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    assert done == {fast.future()} and not_done == {slow.future()}
    gates[key].set()
    order = [f.result() for f in cf.as_completed(futs, timeout=WAIT)]
    assert sorted(order, key=str) == [3, "slow"]
    done, not_done = cf.wait(futs, timeout=WAIT)
    assert done == set(futs) and not not_done


def test_future_done_callback_runs_when_the_task_ends(queue, gates):
    key = gates.new()
    r = queue.task(wait_gate)(key, "v")
    seen = []
    r.future().add_done_callback(lambda f: seen.append(f.result()))
    assert seen == []
    gates[key].set()
    assert wait_until(lambda: seen == ["v"], WAIT)


# ---- cancelling ---------------------------------------------------------------------
def test_cancelling_the_future_cancels_a_waiting_task(queue):
    r = queue.task(add).schedule(args=(1,), delay=60)
    fut = r.future()
    assert fut.cancel() is True
    assert fut.cancelled() and fut.done()
    assert r.status == "cancelled"
    with pytest.raises(TaskCancelled):
        fut.result()
    with pytest.raises(cf.CancelledError):
        fut.exception()
    with pytest.raises(TaskCancelled):
        r.get(timeout=WAIT)


def test_cancelling_the_future_wakes_concurrent_futures_waiters(queue):
    r = queue.task(add).schedule(args=(1,), delay=60)
    fut = r.future()
    with cf.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(cf.wait, [fut], WAIT)
        assert fut.cancel()
        done, not_done = waiting.result(timeout=WAIT)
    assert done == {fut} and not not_done


def test_cancelling_the_future_interrupts_a_running_task(queue, gates):
    started = gates.new()
    r = queue.task(run_until_cancelled)(started)
    assert gates[started].wait(WAIT)
    fut = r.future()
    assert fut.cancel() is True and fut.cancelled()
    assert r.wait(WAIT)
    assert r.status == "cancelled"


def test_cancelling_the_future_of_a_finished_task_returns_false(queue):
    r = queue.task(add)(2, 2)
    assert r.get(timeout=WAIT) == 4
    fut = r.future()
    assert fut.cancel() is False
    assert fut.result() == 4 and not fut.cancelled()


def test_a_task_cancelled_elsewhere_cancels_its_future(queue):
    r = queue.task(add).schedule(args=(1,), delay=60)
    fut = r.future()
    assert r.cancel()
    done, _ = cf.wait([fut], timeout=WAIT)
    assert done == {fut} and fut.cancelled()
    with pytest.raises(TaskCancelled, match=r.id):
        fut.result()


def test_futures_of_later_pipeline_steps_complete_with_the_step_that_stopped_them(queue, gates):
    key, started = gates.new(), gates.new()
    t, bad = queue.task(add), queue.task(explode_here)
    rg = queue.enqueue(queue.task(wait_gate).s(key, 1, started).then(t).then(t, 1))
    later = rg[2].future()
    assert gates[started].wait(WAIT)
    assert rg[1].future().cancel() is True
    assert later.done() and later.cancelled()  # at once: no wait for housekeeping
    gates[key].set()

    failing = queue.enqueue(t.s(1, 2).then(bad).then(t, 100).then(t, 1000))
    futs = [r.future() for r in failing]
    _, not_done = cf.wait(futs, timeout=WAIT)
    assert not not_done
    assert futs[0].result() == 3 and isinstance(futs[1].exception(), nbqueue.TaskException)
    assert futs[2].cancelled() and futs[3].cancelled()


# ---- nbqueue.wait and nbqueue.as_completed --------------------------------------------
def test_wait_first_completed(queue, gates):
    key = gates.new()
    fast, slow = queue.task(add)(1), queue.task(wait_gate)(key, 2)
    done, not_done = nbqueue.wait([fast, slow], timeout=WAIT, return_when=nbqueue.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    assert all(isinstance(r, nbqueue.Result) for r in done | not_done)
    gates[key].set()


def test_wait_first_exception(queue, gates):
    key = gates.new()
    slow, bad = queue.task(wait_gate)(key, 2), queue.task(explode_here)()
    done, not_done = nbqueue.wait([slow, bad], timeout=WAIT, return_when=nbqueue.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    gates[key].set()
    # with no failure it waits for all
    rs = [queue.task(add)(i) for i in range(5)]
    done, not_done = nbqueue.wait(rs, timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
    assert done == set(rs) and not not_done


def test_wait_all_completed_and_groups(queue, gates):
    key = gates.new()
    rs = queue.task(wait_gate).map([key] * 3)
    late = queue.task(explode_later)(key)
    gates[key].set()
    done, not_done = nbqueue.wait([*rs, late], timeout=WAIT)
    assert done == {*rs, late} and not not_done
    done, not_done = nbqueue.wait(rs)  # a ResultGroup is a collection of Results
    assert done == set(rs)


def test_wait_timeout_returns_what_is_done(queue, gates):
    key = gates.new()
    fast, slow = queue.task(add)(1), queue.task(wait_gate)(key, 2)
    assert fast.wait(WAIT)
    done, not_done = nbqueue.wait([fast, slow], timeout=0.05)
    assert done == {fast} and not_done == {slow}
    gates[key].set()


def test_as_completed_yields_results_as_they_finish(queue, gates):
    key = gates.new()
    fast = queue.task(add)(1)
    assert fast.wait(WAIT)
    slow = queue.task(wait_gate)(key, 2)
    it = nbqueue.as_completed([slow, fast], timeout=WAIT)
    assert next(it) == fast  # already finished: first
    gates[key].set()
    assert next(it) == slow
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_timeout_raises(queue, gates):
    key = gates.new()
    fast, slow = queue.task(add)(1), queue.task(wait_gate)(key, 2)
    assert fast.wait(WAIT)
    it = nbqueue.as_completed([fast, slow], timeout=0.5)
    assert next(it) == fast
    with pytest.raises(TimeoutError, match="1 of 2 tasks not finished"):
        next(it)
    gates[key].set()


def test_wait_and_as_completed_refuse_what_is_not_a_result(queue):
    r = queue.task(add)(1)
    with pytest.raises(TypeError, match=r"wait\(\[r\]\)"):
        nbqueue.wait(r)
    with pytest.raises(TypeError, match="item 1 is a int"):
        nbqueue.wait([r, 3])
    with pytest.raises(TypeError, match="item 0 is a ResultGroup"):
        list(nbqueue.as_completed([queue.task(add).map([1])]))
    with pytest.raises(ValueError, match="FIRST_COMPLETED"):
        nbqueue.wait([r], return_when="SOMETIMES")
    with pytest.raises(TypeError, match="timeout"):
        nbqueue.wait([r], timeout="5")


# ---- the task's traceback under TaskException ------------------------------------------
def test_task_exception_carries_the_tasks_traceback(queue):
    r = queue.task(explode_here)("kaboom")
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    err = info.value
    text = "".join(traceback.format_exception(err))
    assert "in explode_here" in text
    assert "raise ValueError(message)  # the user's line" in text
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "kaboom"
    assert err.exc is err.__cause__
    if queue.store.serializes:  # it crossed a pickle: the worker's text is its cause
        assert isinstance(err.__cause__.__cause__, TaskTraceback)
        assert "explode_here" in str(err.__cause__.__cause__)


def test_future_and_await_carry_the_tasks_traceback(queue):
    r = queue.task(explode_here)("kaboom")
    with pytest.raises(nbqueue.TaskException) as info:
        r.future().result(timeout=WAIT)
    assert "in explode_here" in "".join(traceback.format_exception(info.value))

    async def main():
        try:
            await r
        except nbqueue.TaskException as exc:
            return "".join(traceback.format_exception(exc))

    assert "raise ValueError(message)" in run(main())


def run_script(path, code, *args):
    """Run ``code`` as the script ``path`` in a fresh Python; its functions live in
    its own __main__ (a file, so tracebacks show their source lines)."""
    path.write_text(textwrap.dedent(code))
    pythonpath = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),  # tasks of this file
                                  os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], check=False, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=pythonpath), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_traceback_and_future_of_a_task_another_process_ran(tmp_path):
    store = str(tmp_path / "store")
    q = nbqueue.Queue("elsewhere", storage=store, workers=0)  # this process runs nothing
    try:
        r = q.task(add)(40, 2)
        fut = r.future()
        out = run_script(tmp_path / "elsewhere.py", """
            import sys, nbqueue
            q = nbqueue.Queue("elsewhere", storage=sys.argv[1], workers=1)
            @q.task
            def broken_elsewhere():         # defined in that process's __main__
                raise ValueError("bad input 42")
            bad = broken_elsewhere()
            assert bad.wait(30) and q.result(sys.argv[2]).wait(30)
            q.shutdown()
            print(bad.id)
        """, store, r.id)
        assert fut.result(timeout=WAIT) == 42  # completed by this queue's housekeeping
        with pytest.raises(nbqueue.TaskException) as info:
            q.result(out.split()[-1]).get(timeout=WAIT)
        text = "".join(traceback.format_exception(info.value))
        assert "in broken_elsewhere" in text and 'raise ValueError("bad input 42")' in text
    finally:
        q.shutdown()


# ---- exception classes ---------------------------------------------------------------
def test_exceptions_are_also_concurrent_futures_ones():
    assert issubclass(TaskCancelled, NbqueueError) and issubclass(TaskCancelled, cf.CancelledError)
    assert issubclass(InvalidStateError, NbqueueError)
    assert issubclass(InvalidStateError, cf.InvalidStateError)
    assert nbqueue.TaskCancelled is TaskCancelled and nbqueue.InvalidStateError is InvalidStateError
    for cls in (TaskCancelled, InvalidStateError):
        assert cls.__mro__.index(NbqueueError) < cls.__mro__.index(Exception)
        exc = cls("message")
        assert str(exc) == "message"
        with pytest.raises(cls):
            raise exc
    assert not issubclass(TaskCancelled, asyncio.CancelledError)  # never stops an asyncio task


def test_get_of_a_cancelled_task_is_caught_as_a_concurrent_futures_cancel(queue):
    r = queue.task(add).schedule(args=(1,), delay=60)
    r.cancel()
    with pytest.raises(cf.CancelledError):
        r.get(timeout=WAIT)

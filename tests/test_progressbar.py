"""nbqueue.tqdm: inside a task it drives the task's progress and draws nothing; outside it
is tqdm.auto's bar."""

import io
import sys
import time

import pytest

import nbqueue

from conftest import unique_name

pytest.importorskip("tqdm")

WAIT = 10


@pytest.fixture
def q():
    queue = nbqueue.Queue(unique_name("tqdm"), storage="memory", workers=2)
    yield queue
    queue.shutdown(wait=True, cancel_pending=True)


def loop(n, desc=None):
    seen = 0
    for _ in nbqueue.tqdm(range(n), desc=desc, mininterval=0):
        seen += 1
    return seen


def endless():
    for _ in nbqueue.tqdm(iter(int, 1), mininterval=0):  # never ends by itself
        time.sleep(0.001)


def test_loop_in_a_task_drives_its_progress_and_draws_nothing(q):
    r = q.task(loop)(50, desc="loading")
    assert r.get(timeout=WAIT) == 50
    assert tuple(r.progress) == (50, 50, "loading")
    assert r.output == ""  # no bar, no newline from close(), in the task's log


def test_cancel_stops_a_tqdm_loop(q):
    r = q.task(endless)()
    deadline = time.monotonic() + WAIT
    while r.status != "running" and time.monotonic() < deadline:
        time.sleep(0.005)
    r.cancel()
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(timeout=WAIT)
    assert r.progress.done > 0 and r.progress.total is None
    # tqdm's process-wide lock was not left held by the stopped loop
    assert q.task(loop)(5).get(timeout=WAIT) == 5
    assert list(nbqueue.tqdm(range(2), file=io.StringIO())) == [0, 1]


def manual_updates():
    with nbqueue.tqdm(total=None, mininterval=0) as bar:
        while True:
            bar.update()
            time.sleep(0.001)


def test_timeout_stops_manual_updates(q):
    r = q.task(manual_updates, timeout=0.2)()
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert list(nbqueue.tqdm(range(2), file=io.StringIO())) == [0, 1]


def test_outside_a_task_it_is_tqdm_auto(monkeypatch):
    from tqdm.auto import tqdm as auto
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = nbqueue.tqdm(range(3), file=err)
    assert isinstance(bar, auto)
    assert list(bar) == [0, 1, 2]
    assert "3/3" in err.getvalue()

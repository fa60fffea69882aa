"""State-table tests: what a ``Result`` answers in each state a task can be in, and
the state machine that ``TaskRecord.move`` enforces."""

import itertools

import pytest

import nbqueue
from nbqueue.exceptions import InvalidStateError
from nbqueue.result import ResultGroup
from nbqueue.states import FINISHED, STATES, TRANSITIONS, WAITING
from nbqueue.records import TaskRecord

from conftest import gate, new_gate_key, wait_until

WAIT = 10


def value(x):
    return x


def fail():
    raise ValueError("broken")


def blocked(key, started):
    gate(started).set()
    gate(key).wait(WAIT)
    return "unblocked"


def fail_first_run(key):
    if nbqueue.current_task().attempt == 1:
        raise ConnectionError("first run")
    return "second run"


def make_result(state, make_queue):
    """A Result whose task is in ``state`` (and stays there during the test)."""
    q = make_queue(workers=0 if state in ("pending", "cancelled") else 2)
    if state == "pending":
        return q.task(value)(1)
    if state == "scheduled":
        return q.task(value).schedule(args=(1,), delay=60)
    if state == "running":
        key, started = new_gate_key(), new_gate_key()
        r = q.task(blocked)(key, started)
        assert gate(started).wait(WAIT)
        return r
    if state == "retrying":
        r = q.task(fail_first_run, retries=1, retry_delay=60)("x")
        assert wait_until(lambda: r.status == "retrying")
        return r
    if state == "succeeded":
        r = q.task(value)(42)
        r.wait(WAIT)
        return r
    if state == "failed":
        r = q.task(fail)()
        r.wait(WAIT)
        return r
    if state == "cancelled":
        r = q.task(value)(1)
        assert r.cancel() is True
        return r
    raise AssertionError(state)


# state: (is_ready, running, cancelled, what get(block=False) does)
EXPECTED = {
    "pending":   (False, False, False, None),
    "scheduled": (False, False, False, None),
    "running":   (False, True, False, None),
    "retrying":  (False, False, False, None),
    "succeeded": (True, False, False, 42),
    "failed":    (True, False, False, nbqueue.TaskException),
    "cancelled": (True, False, True, nbqueue.TaskCancelled),
}


def test_expected_table_covers_every_state():
    assert set(EXPECTED) == set(STATES)


@pytest.mark.parametrize("state", STATES)
def test_result_in_each_state(state, make_queue):
    r = make_result(state, make_queue)
    ready, running, cancelled, outcome = EXPECTED[state]
    assert r.status == state
    assert r.is_ready() is ready
    assert r.done() is ready
    assert r.running() is running
    assert r.cancelled() is cancelled
    assert r.wait(0) is ready
    assert f"status={state}" in repr(r)
    assert r.id in repr(r)
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            r.get(block=False)
        with pytest.raises(outcome):
            r.get(timeout=0)
    else:
        assert r.get(block=False) == outcome
    if not ready:
        with pytest.raises(TimeoutError):
            r.get(timeout=0.01)
        with pytest.raises(TimeoutError):
            r.exception(timeout=0.01)
        assert r.finished_at is None
    else:
        assert r.finished_at is not None
    # a rebuilt handle answers the same
    again = r.queue.result(r.id)
    assert again.status == state and again.is_ready() is ready
    # and a group of one agrees
    group = ResultGroup([r])
    assert group.done() is ready
    assert group.statuses() == {state: 1}
    assert f"1 {state}" in repr(group)
    if not ready:
        assert group.get(block=False) is None


@pytest.mark.parametrize("state", ["pending", "scheduled", "retrying"])
def test_waiting_states_can_be_cancelled(state, make_queue):
    r = make_result(state, make_queue)
    assert r.cancel() is True
    assert r.status == "cancelled"
    with pytest.raises(nbqueue.TaskCancelled):
        r.get(block=False)


@pytest.mark.parametrize("state", sorted(FINISHED))
def test_finished_states_cannot_be_cancelled(state, make_queue):
    r = make_result(state, make_queue)
    assert r.cancel() is False
    assert r.status == state


@pytest.mark.parametrize("state", ["pending", "scheduled", "retrying", "succeeded", "failed",
                                   "cancelled"])
def test_attempts_and_timestamps_per_state(state, make_queue):
    r = make_result(state, make_queue)
    expected_attempts = {"pending": 0, "scheduled": 0, "cancelled": 0, "retrying": 1,
                         "succeeded": 1, "failed": 1}[state]
    assert r.attempts == expected_attempts
    assert r.created_at is not None
    assert (r.started_at is None) is (expected_attempts == 0)
    assert (r.eta is not None) is (state in WAITING)


# ---- the state machine ----------------------------------------------------------
DESIGN_EDGES = {
    ("pending", "running"), ("pending", "cancelled"),
    ("scheduled", "pending"), ("scheduled", "cancelled"),
    ("running", "succeeded"), ("running", "failed"), ("running", "retrying"),
    ("running", "cancelled"), ("running", "pending"),
    ("retrying", "pending"), ("retrying", "cancelled"),
}


def test_transitions_table_matches_the_design():
    edges = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert edges == DESIGN_EDGES
    assert set(TRANSITIONS) == set(STATES)
    for state in FINISHED:
        assert TRANSITIONS[state] == frozenset()


# Each named move of TaskRecord: what it does from each state it allows.
MOVES = {
    "start": (lambda r: r.start("w", 11.0, 1.0), {"pending": "running"}),
    "finish-succeeded": (lambda r: r.finish("succeeded", 2.0, result=1), {"running": "succeeded"}),
    "finish-failed": (lambda r: r.finish("failed", 2.0), {"running": "failed"}),
    "finish-cancelled": (lambda r: r.finish("cancelled", 2.0), {"running": "cancelled"}),
    "finish-retrying": (lambda r: r.finish("retrying", 2.0, eta=9.0), {"running": "retrying"}),
    "finish-pending": (lambda r: r.finish("pending", 2.0), {"running": "pending"}),
    "requeue": (lambda r: r.requeue("recovered"), {"running": "pending"}),
    "promote": (lambda r: r.promote(), {"scheduled": "pending", "retrying": "pending"}),
    "fail_lost": (lambda r: r.fail_lost(2.0, "lost", {"type": "WorkerLost"}), {"running": "failed"}),
    "cancel": (lambda r: r.cancel(2.0), {"pending": "cancelled", "scheduled": "cancelled",
                                         "retrying": "cancelled", "running": "running"}),
}


@pytest.mark.parametrize("src, move", list(itertools.product(STATES, MOVES)))
def test_task_record_moves_follow_the_state_machine(src, move):
    do, allowed = MOVES[move]
    rec = TaskRecord(id="t1", name="job", status=src)
    if src in allowed:
        do(rec)
        assert rec.status == allowed[src]
        assert rec.status == src or rec.status in TRANSITIONS[src]
    elif move == "cancel":  # cancelling a finished task is not an error: it says no
        assert rec.cancel(2.0) is None and rec.status == src
    else:
        with pytest.raises(InvalidStateError) as info:
            do(rec)
        assert rec.status == src  # unchanged
        assert isinstance(info.value, nbqueue.NbqueueError)
        assert repr(src) in str(info.value)


def test_every_transition_has_a_named_move():
    made = {(src, dst) for _, allowed in MOVES.values() for src, dst in allowed.items() if src != dst}
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert made == table


def test_cancel_of_a_running_record_only_flags_it():
    rec = TaskRecord(id="t1", name="job", status="running")
    assert rec.cancel(2.0) == "running" and rec.cancel_requested and rec.finished_at is None


def test_a_run_cannot_end_with_other_fields_or_a_retry_without_eta():
    rec = TaskRecord(id="t1", name="job", status="running")
    with pytest.raises(ValueError, match="worker"):
        rec.finish("succeeded", 2.0, worker="someone")
    with pytest.raises(ValueError, match="eta"):
        rec.finish("retrying", 2.0)
    assert rec.status == "running"

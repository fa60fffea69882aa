"""The storage contract (``nbqueue/storage/base.py``), held against every backend.

The same tests run on ``MemoryStorage`` (keeps objects by reference), on
``SqliteStorage`` (stores bytes) and on ``RedisStorage`` (a real redis-server); payloads and values are bytes so one test fits
both. Time is injected (``now=``) wherever the contract depends on it; nothing
here asserts how long anything takes (benchmarks measure time).
"""

import collections
import itertools
import multiprocessing
import queue
import random
import sys
import threading
import time
import traceback
import uuid

import pytest

from nbqueue.exceptions import InvalidStateError, NbqueueError, TaskNotFound
from nbqueue.records import JobRecord, TaskRecord
from nbqueue.states import STATES, UNFINISHED

T0 = 1_000_000.0
BACKENDS = ("memory", "sqlite", "redis")
QUEUE = "contract"
ERROR = {"type": "ValueError", "message": "boom", "traceback": ""}


def open_store(kind, directory=None, url=None):
    if kind == "redis":
        from nbqueue.signing import Signer
        from nbqueue.storage.redis import RedisStorage
        return RedisStorage(url, QUEUE, Signer(b"contract-secret"))
    if kind == "memory":
        from nbqueue.storage.memory import MemoryStorage
        return MemoryStorage()
    from nbqueue.storage.sqlite import SqliteStorage
    return SqliteStorage(str(directory), QUEUE)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = open_store(request.param, tmp_path / "store", url)
    yield s
    s.close()


@pytest.fixture
def sqlite_dir(tmp_path):
    """A SQLite store directory (created by a first open) for tests that open it twice."""
    directory = tmp_path / "store"
    open_store("sqlite", directory).close()
    return directory


# ---- helpers ---------------------------------------------------------------------
def rec(status="pending", priority=0, eta=None, name="t", id=None, payload=b"call", **kw):
    kw.setdefault("created_at", T0)
    return TaskRecord(id=id or uuid.uuid4().hex, name=name, status=status, priority=priority,
                      eta=eta, payload=payload, **kw)


def claim_id(store, worker="w", lease=10, now=T0):
    got = store.claim(worker, lease, now=now)
    assert got is not None, "nothing to claim"
    return got.id


def finished(store, status="succeeded", at=T0, name="t", **kw):
    """Add one record and run it to ``status`` at time ``at``; returns its id.
    Its priority is high so it is the one claimed even with other tasks pending."""
    r = rec(name=name, priority=10_000, **kw)
    store.add([r])
    assert claim_id(store, "fin", now=at) == r.id
    fields = {"succeeded": {"result": b"value"}, "failed": {"error": dict(ERROR)},
              "cancelled": {"message": "stopped"}}[status]
    assert store.finish(r.id, "fin", status, now=at, **fields) is True
    return r.id


def tally(store):
    """``{state: n}`` counted from the records themselves."""
    found = collections.Counter(r.status for r in store.page(limit=None))
    return {s: found.get(s, 0) for s in STATES}


def assert_counts(store, **expected):
    """``counts()`` equals ``expected`` (other states 0) and agrees with the records."""
    want = {s: 0 for s in STATES}
    want.update(expected)
    assert store.counts() == want
    assert tally(store) == want


def ids(records):
    return [r.id for r in records]


# ---- add -------------------------------------------------------------------------
def test_a_new_store_is_empty_and_counts_every_state(store):
    assert store.counts() == {s: 0 for s in STATES}
    assert store.page() == [] and store.claim("w", 10, now=T0) is None
    assert store.next_eta() is None and store.jobs() == {}


def test_add_stores_records_and_assigns_increasing_seq(store):
    first = [rec() for _ in range(3)]
    second = [rec("scheduled", eta=T0 + 5), rec()]
    store.add(first)
    store.add(second)
    seqs = [store.get(r.id).seq for r in first + second]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    got = store.get(first[0].id)
    assert (got.id, got.name, got.status, got.created_at) == (first[0].id, "t", "pending", T0)
    assert store.get(second[0].id).eta == T0 + 5
    assert_counts(store, pending=4, scheduled=1)


def test_reads_are_not_destructive(store):
    r = rec()
    store.add([r])
    for _ in range(3):
        got = store.get(r.id, load=("payload",))
        assert (got.status, got.payload) == ("pending", b"call")
        assert store.status(r.id) == "pending"
        assert ids(store.page()) == [r.id]
        store.counts()
    assert claim_id(store) == r.id


@pytest.mark.parametrize("status", ["running", "succeeded", "retrying"])
def test_add_of_a_record_that_is_not_new_stores_nothing(store, status):
    good, bad = rec(), rec(status)
    with pytest.raises(InvalidStateError):
        store.add([good, bad])
    assert store.get(good.id) is None and store.get(bad.id) is None
    assert store.claim("w", 10, now=T0) is None
    assert_counts(store)


def test_add_of_a_record_that_already_ran_stores_nothing(store):
    good, bad = rec(), rec(attempts=1, worker="w")
    with pytest.raises(InvalidStateError):
        store.add([good, bad])
    assert store.get(good.id) is None and store.claim("w", 10, now=T0) is None


def test_add_with_an_id_already_stored_stores_nothing(store):
    old = rec(payload=b"old")
    store.add([old])
    good, dup = rec(), rec(id=old.id, payload=b"new")
    with pytest.raises(ValueError):
        store.add([good, dup])
    assert store.get(good.id) is None
    assert store.get(old.id, load=("payload",)).payload == b"old"
    assert_counts(store, pending=1)
    assert claim_id(store) == old.id
    assert store.claim("w", 10, now=T0) is None


def test_add_with_the_same_id_twice_in_one_batch_stores_nothing(store):
    """The second record's id is one the batch already stores: ValueError, all or none."""
    a = rec()
    with pytest.raises(ValueError):
        store.add([a, rec(id=a.id)])
    assert store.get(a.id) is None and store.claim("w", 10, now=T0) is None
    assert_counts(store)


# ---- claim -----------------------------------------------------------------------
def test_claim_takes_highest_priority_first_and_fifo_within_one(store):
    low1, low2, high, neg, low3 = rec(), rec(), rec(priority=5), rec(priority=-3), rec()
    store.add([low1, low2])
    store.add([high, neg, low3])
    order = [claim_id(store) for _ in range(5)]
    assert order == [high.id, low1.id, low2.id, low3.id, neg.id]
    assert store.claim("w", 10, now=T0) is None


def test_claim_starts_the_run_and_returns_the_payload(store):
    r = rec(payload=b"the call")
    store.add([r])
    got = store.claim("w1", 10, now=T0 + 1)
    assert (got.id, got.status, got.attempts, got.worker) == (r.id, "running", 1, "w1")
    assert (got.started_at, got.lease_until, got.payload) == (T0 + 1, T0 + 11, b"the call")
    stored = store.get(r.id)
    assert (stored.status, stored.worker, stored.attempts) == ("running", "w1", 1)
    assert_counts(store, running=1)


def test_claim_on_an_empty_store_returns_none(store):
    assert store.claim("w", 10, now=T0) is None
    store.add([rec("scheduled", eta=T0 + 100)])
    assert store.claim("w", 10, now=T0) is None      # waiting, not ready


def test_claim_cancels_a_task_past_its_expiry_instead_of_running_it(store):
    stale, fresh = rec(expires_at=T0 + 1), rec(expires_at=T0 + 100)
    store.add([stale, fresh])
    assert claim_id(store, now=T0 + 2) == fresh.id
    got = store.get(stale.id)
    assert got.status == "cancelled" and got.attempts == 0 and got.finished_at == T0 + 2
    assert store.claim("w", 10, now=T0 + 2) is None
    assert_counts(store, running=1, cancelled=1)


def test_claim_of_an_expired_pipeline_head_cancels_the_later_steps(store):
    a, b = rec(expires_at=T0 + 1), rec("scheduled")
    a.next_id = b.id
    store.add([a, b])
    assert store.claim("w", 10, now=T0 + 2) is None
    assert (store.status(a.id), store.status(b.id)) == ("cancelled", "cancelled")
    assert_counts(store, cancelled=2)


def test_claim_is_atomic_across_threads(store):
    records = [rec() for _ in range(200)]
    store.add(records)
    got, lock = [], threading.Lock()

    def worker(name):
        while (r := store.claim(name, 10)) is not None:
            with lock:
                got.append(r.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids(records))      # each exactly once
    assert_counts(store, running=200)


# ---- finish ----------------------------------------------------------------------
def test_finish_succeeded_stores_the_value(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.finish(r.id, "w", "succeeded", now=T0 + 3, result=b"42") is True
    got = store.get(r.id, load=("result",))
    assert (got.status, got.result, got.finished_at) == ("succeeded", b"42", T0 + 3)
    assert got.worker is None and got.lease_until is None
    assert_counts(store, succeeded=1)


def test_finish_failed_stores_the_error(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.finish(r.id, "w", "failed", now=T0 + 3, error=dict(ERROR)) is True
    got = store.get(r.id)
    assert got.status == "failed" and got.finished_at == T0 + 3
    assert (got.error["type"], got.error["message"]) == ("ValueError", "boom")
    assert_counts(store, failed=1)


def test_finish_cancelled(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.finish(r.id, "w", "cancelled", now=T0 + 3, message="stopped") is True
    got = store.get(r.id)
    assert (got.status, got.message, got.finished_at) == ("cancelled", "stopped", T0 + 3)
    assert_counts(store, cancelled=1)


def test_finish_retrying_waits_for_its_eta_then_runs_again(store):
    r = rec(retries=1)
    store.add([r])
    claim_id(store)
    assert store.finish(r.id, "w", "retrying", now=T0 + 1, eta=T0 + 5, retries_used=1)
    assert store.status(r.id) == "retrying" and store.next_eta() == T0 + 5
    assert_counts(store, retrying=1)
    assert store.claim("w", 10, now=T0 + 6) is None      # not promoted yet
    assert store.promote_due(now=T0 + 4) == 0
    assert store.promote_due(now=T0 + 5) == 1
    assert store.next_eta() is None
    assert_counts(store, pending=1)
    again = store.claim("w", 10, now=T0 + 5)
    assert (again.id, again.attempts, again.retries_used) == (r.id, 2, 1)


def test_finish_retrying_without_eta_is_refused(store):
    r = rec(retries=1)
    store.add([r])
    claim_id(store)
    with pytest.raises(ValueError):
        store.finish(r.id, "w", "retrying", now=T0 + 1)
    got = store.get(r.id)
    assert (got.status, got.worker) == ("running", "w")


def test_finish_pending_runs_it_again(store):
    """running -> pending: RetryTask without a delay."""
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.finish(r.id, "w", "pending", now=T0 + 1) is True
    got = store.get(r.id)
    assert (got.status, got.worker, got.eta) == ("pending", None, None)
    assert_counts(store, pending=1)
    again = store.claim("w2", 10, now=T0 + 2)
    assert (again.id, again.attempts, again.worker) == (r.id, 2, "w2")


@pytest.mark.parametrize("status", ["scheduled", "running", "no-such-state"])
def test_finish_with_a_status_a_run_cannot_end_in_raises_and_changes_nothing(store, status):
    a, b = rec(), rec("scheduled")
    a.next_id = b.id
    store.add([a, b])
    claim_id(store)
    with pytest.raises(InvalidStateError):
        store.finish(a.id, "w", status, now=T0 + 1, result=b"x")
    got = store.get(a.id, load=("result",))
    assert (got.status, got.worker, got.result, got.finished_at) == ("running", "w", None, None)
    assert store.status(b.id) == "scheduled"
    assert store.renew([a.id], "w", 10, now=T0 + 2) == {a.id: False}   # still held
    assert_counts(store, running=1, scheduled=1)


def test_finish_with_a_field_a_run_cannot_set_raises_and_changes_nothing(store):
    r = rec()
    store.add([r])
    claim_id(store)
    with pytest.raises(ValueError):
        store.finish(r.id, "w", "succeeded", now=T0 + 1, priority=9)
    got = store.get(r.id)
    assert (got.status, got.priority, got.worker) == ("running", 0, "w")


def test_finish_of_a_task_that_is_not_running_returns_false(store):
    r = rec()
    store.add([r])
    assert store.finish(r.id, "w", "succeeded", now=T0) is False
    assert store.status(r.id) == "pending"
    assert_counts(store, pending=1)


def test_finish_by_a_worker_that_lost_its_claim_changes_nothing(store):
    a, b = rec(), rec("scheduled")
    a.next_id = b.id
    store.add([a, b])
    claim_id(store, "old", lease=1, now=T0)
    assert store.requeue_expired(now=T0 + 2) == [a.id]
    # requeued, not yet claimed again: the old worker's finish is refused
    assert store.finish(a.id, "old", "succeeded", now=T0 + 3, result=b"old") is False
    assert store.status(a.id) == "pending" and store.status(b.id) == "scheduled"
    # claimed by another worker: still refused, and the new run is untouched
    claim_id(store, "new", now=T0 + 4)
    assert store.finish(a.id, "old", "failed", now=T0 + 5, error=dict(ERROR)) is False
    got = store.get(a.id)
    assert (got.status, got.worker, got.error) == ("running", "new", None)
    assert store.status(b.id) == "scheduled"
    assert store.finish(a.id, "new", "succeeded", now=T0 + 6, result=b"new") is True
    got = store.get(a.id, load=("result",))
    assert (got.status, got.result, got.finished_at) == ("succeeded", b"new", T0 + 6)
    assert store.status(b.id) == "pending"


# ---- pipelines -------------------------------------------------------------------
def pipeline(store, n=3):
    steps = [rec()] + [rec("scheduled") for _ in range(n - 1)]
    for step, after in itertools.pairwise(steps):
        step.next_id = after.id
    store.add(steps)
    return steps


def test_pipeline_steps_wait_for_their_parent_not_for_an_eta(store):
    a, b, c = pipeline(store)
    assert store.next_eta() is None
    assert store.promote_due(now=T0 + 10**9) == 0
    assert claim_id(store) == a.id
    assert store.claim("w", 10, now=T0) is None
    assert (store.status(b.id), store.status(c.id)) == ("scheduled", "scheduled")
    assert_counts(store, running=1, scheduled=2)


def test_pipeline_success_promotes_the_next_step_with_the_value(store):
    a, b, c = pipeline(store)
    claim_id(store)
    assert store.finish(a.id, "w", "succeeded", now=T0 + 1, result=b"A")
    got = store.get(b.id, load=("prev",))
    assert (got.status, got.has_prev, got.prev) == ("pending", True, b"A")
    assert store.status(c.id) == "scheduled"
    assert_counts(store, succeeded=1, pending=1, scheduled=1)
    step = store.claim("w", 10, now=T0 + 2)
    assert (step.id, step.prev, step.has_prev, step.payload) == (b.id, b"A", True, b"call")
    assert store.finish(b.id, "w", "succeeded", now=T0 + 3, result=b"B")
    step = store.claim("w", 10, now=T0 + 4)
    assert (step.id, step.prev) == (c.id, b"B")


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_pipeline_failure_or_cancel_cancels_every_later_step(store, status):
    a, b, c = pipeline(store)
    claim_id(store)
    fields = {"error": dict(ERROR)} if status == "failed" else {"message": "stopped"}
    assert store.finish(a.id, "w", status, now=T0 + 1, **fields)
    for later in (b, c):
        got = store.get(later.id)
        assert got.status == "cancelled" and got.finished_at == T0 + 1
        assert got.message
    assert store.claim("w", 10, now=T0 + 2) is None
    expected = {"cancelled": 2}
    expected[status] = expected.get(status, 0) + 1
    assert_counts(store, **expected)


def test_pipeline_failure_in_the_middle_leaves_earlier_steps_alone(store):
    a, b, c = pipeline(store)
    claim_id(store)
    store.finish(a.id, "w", "succeeded", now=T0 + 1, result=b"A")
    claim_id(store, now=T0 + 2)
    store.finish(b.id, "w", "failed", now=T0 + 3, error=dict(ERROR))
    assert [store.status(s.id) for s in (a, b, c)] == ["succeeded", "failed", "cancelled"]
    assert_counts(store, succeeded=1, failed=1, cancelled=1)


# ---- finish_and_claim ------------------------------------------------------------
def test_finish_and_claim_finishes_and_claims_in_one_step(store):
    a, b = rec(), rec(payload=b"next call")
    store.add([a, b])
    claim_id(store)
    done, nxt = store.finish_and_claim(a.id, "w", "succeeded", 10, now=T0 + 1, result=b"A")
    assert done is True
    assert (nxt.id, nxt.status, nxt.worker, nxt.payload) == (b.id, "running", "w", b"next call")
    assert (nxt.attempts, nxt.lease_until) == (1, T0 + 11)
    assert store.get(a.id, load=("result",)).result == b"A"
    assert_counts(store, succeeded=1, running=1)
    assert store.finish_and_claim(b.id, "w", "succeeded", 10, now=T0 + 2) == (True, None)


def test_finish_and_claim_without_a_lease_claims_nothing(store):
    a, b = rec(), rec()
    store.add([a, b])
    claim_id(store)
    assert store.finish_and_claim(a.id, "w", "failed", None, now=T0 + 1,
                                  error=dict(ERROR)) == (True, None)
    assert store.status(b.id) == "pending"
    assert_counts(store, failed=1, pending=1)


def test_finish_and_claim_hands_over_the_promoted_pipeline_step(store):
    a, b = pipeline(store, 2)
    claim_id(store)
    done, nxt = store.finish_and_claim(a.id, "w", "succeeded", 10, now=T0 + 1, result=b"A")
    assert done and (nxt.id, nxt.prev, nxt.has_prev) == (b.id, b"A", True)


# ---- renew -----------------------------------------------------------------------
def test_renew_extends_only_the_workers_own_claims(store):
    mine, theirs, waiting = rec(), rec(), rec()
    store.add([mine, theirs, waiting])
    claim_id(store, "me", now=T0)
    claim_id(store, "them", now=T0)
    got = store.renew([mine.id, theirs.id, waiting.id, "no-such-id"], "me", 10, now=T0 + 8)
    assert got == {mine.id: False}
    assert store.get(mine.id).lease_until == T0 + 18
    assert store.get(theirs.id).lease_until == T0 + 10
    assert store.requeue_expired(now=T0 + 12) == [theirs.id]
    assert store.status(mine.id) == "running"


def test_renew_reports_a_cancel_request(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.renew([r.id], "w", 10, now=T0 + 1) == {r.id: False}
    assert store.cancel(r.id, now=T0 + 2) is True
    assert store.renew([r.id], "w", 10, now=T0 + 3) == {r.id: True}


def test_renew_of_a_finished_run_returns_nothing(store):
    r = rec()
    store.add([r])
    claim_id(store)
    store.finish(r.id, "w", "succeeded", now=T0 + 1)
    assert store.renew([r.id], "w", 10, now=T0 + 2) == {}


# ---- requeue_expired -------------------------------------------------------------
def test_requeue_expired_puts_a_lost_task_back_at_the_front_of_its_priority(store):
    """Ahead even of an older task of its priority (``early``, submitted before it)."""
    early, a = rec("scheduled", eta=T0 + 1), rec()
    store.add([early, a])
    claim_id(store, "dead", lease=10, now=T0)               # a
    high = rec(priority=5)
    store.add([high])
    assert store.promote_due(now=T0 + 1) == 1                # early is pending now
    assert store.requeue_expired(now=T0 + 5) == []             # lease not over yet
    assert store.requeue_expired(now=T0 + 11) == [a.id]
    got = store.get(a.id)
    assert (got.status, got.recoveries, got.attempts, got.worker) == ("pending", 1, 1, None)
    assert got.message
    assert_counts(store, pending=3)
    order = [claim_id(store, now=T0 + 12) for _ in range(3)]
    assert order == [high.id, a.id, early.id]


def test_requeue_expired_fails_with_worker_lost_beyond_max_recoveries(store):
    """Default max_recoveries=1: the first loss requeues, the second fails."""
    r = rec()
    store.add([r])
    claim_id(store, "dead", now=T0)
    assert store.requeue_expired(now=T0 + 11) == [r.id]
    assert store.status(r.id) == "pending"
    claim_id(store, "dead", now=T0 + 20)
    assert store.requeue_expired(now=T0 + 31) == [r.id]
    got = store.get(r.id)
    assert (got.status, got.attempts, got.finished_at, got.worker) == ("failed", 2, T0 + 31, None)
    assert "WorkerLost" in got.error["type"] and got.message
    assert_counts(store, failed=1)
    assert store.requeue_expired(now=T0 + 100) == []


def test_a_pipeline_step_lost_for_good_cancels_the_later_steps(store):
    a, b = pipeline(store, 2)
    claim_id(store, "dead", now=T0)
    assert store.requeue_expired(now=T0 + 11, max_recoveries=0) == [a.id]
    assert (store.status(a.id), store.status(b.id)) == ("failed", "cancelled")
    assert_counts(store, failed=1, cancelled=1)


def test_requeue_expired_honours_max_recoveries(store):
    r, s = rec(), rec()
    store.add([r])
    for i in range(3):
        claim_id(store, "dead", now=T0 + 20 * i)
        assert store.requeue_expired(now=T0 + 20 * i + 11, max_recoveries=3) == [r.id]
        assert store.get(r.id).recoveries == i + 1
    store.add([s])
    claim_id(store, "dead", now=T0 + 100)     # r: recovered tasks go first
    claim_id(store, "dead", now=T0 + 100)
    assert sorted(store.requeue_expired(now=T0 + 111, max_recoveries=0)) == sorted([r.id, s.id])
    assert store.status(r.id) == "failed" and store.status(s.id) == "failed"


def test_requeue_expired_keeps_the_claim_of_a_worker_said_alive(store):
    r = rec()
    store.add([r])
    claim_id(store, "w1", lease=10, now=T0)
    asked = []

    def alive(worker, task_id):
        asked.append((worker, task_id))
        return True

    store.requeue_expired(now=T0 + 11, alive=alive)
    assert asked == [("w1", r.id)]
    got = store.get(r.id)
    assert (got.status, got.worker, got.recoveries) == ("running", "w1", 0)
    assert got.lease_until > T0 + 11                         # extended
    assert store.requeue_expired(now=T0 + 11) == []        # the lease decides: not over
    assert store.finish(r.id, "w1", "succeeded", now=T0 + 12) is True


def test_requeue_expired_requeues_the_task_of_a_worker_said_gone(store):
    r = rec()
    store.add([r])
    claim_id(store, "w1", lease=10, now=T0)
    assert store.requeue_expired(now=T0 + 11, alive=lambda w, t: False) == [r.id]
    got = store.get(r.id)
    assert (got.status, got.worker, got.recoveries) == ("pending", None, 1)


def test_requeue_expired_with_alive_unsure_lets_the_lease_decide(store):
    r = rec()
    store.add([r])
    claim_id(store, "w1", lease=10, now=T0)
    assert store.requeue_expired(now=T0 + 5, alive=lambda w, t: None) == []
    assert store.requeue_expired(now=T0 + 11, alive=lambda w, t: None) == [r.id]
    assert store.status(r.id) == "pending"


# ---- promote_due / next_eta ------------------------------------------------------
def test_scheduled_tasks_wait_for_their_eta(store):
    soon, later = rec("scheduled", eta=T0 + 10), rec("scheduled", eta=T0 + 20)
    store.add([later, soon])
    assert store.next_eta() == T0 + 10
    assert store.claim("w", 10, now=T0 + 15) is None      # claim does not promote
    assert store.promote_due(now=T0 + 9) == 0
    assert store.promote_due(now=T0 + 10) == 1
    assert (store.status(soon.id), store.status(later.id)) == ("pending", "scheduled")
    assert store.get(soon.id).eta is None
    assert store.next_eta() == T0 + 20
    assert_counts(store, pending=1, scheduled=1)
    assert claim_id(store, now=T0 + 10) == soon.id
    assert store.promote_due(now=T0 + 100) == 1
    assert store.next_eta() is None and store.promote_due(now=T0 + 200) == 0


def test_next_eta_covers_retrying_tasks(store):
    r, s = rec(), rec("scheduled", eta=T0 + 50)
    store.add([r, s])
    claim_id(store)
    store.finish(r.id, "w", "retrying", now=T0 + 1, eta=T0 + 30)
    assert store.next_eta() == T0 + 30
    assert store.promote_due(now=T0 + 60) == 2
    assert_counts(store, pending=2)


# ---- cancel ----------------------------------------------------------------------
def test_cancel_a_waiting_task(store):
    pending, sched = rec(), rec("scheduled", eta=T0 + 100)
    store.add([pending, sched])
    assert store.cancel(pending.id, message="not needed", now=T0 + 1) is True
    got = store.get(pending.id)
    assert (got.status, got.message, got.finished_at) == ("cancelled", "not needed", T0 + 1)
    assert store.cancel(sched.id, now=T0 + 2) is True
    assert store.status(sched.id) == "cancelled" and store.next_eta() is None
    assert store.promote_due(now=T0 + 200) == 0
    assert store.claim("w", 10, now=T0 + 200) is None
    assert_counts(store, cancelled=2)


def test_cancel_a_retrying_task(store):
    r = rec()
    store.add([r])
    claim_id(store)
    store.finish(r.id, "w", "retrying", now=T0 + 1, eta=T0 + 5)
    assert store.cancel(r.id, now=T0 + 2) is True
    assert store.status(r.id) == "cancelled" and store.next_eta() is None
    assert store.promote_due(now=T0 + 10) == 0
    assert_counts(store, cancelled=1)


def test_cancel_a_running_task_only_flags_it(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.cancel(r.id, now=T0 + 1) is True
    got = store.get(r.id)
    assert (got.status, got.cancel_requested, got.worker) == ("running", True, "w")
    assert_counts(store, running=1)
    assert store.update(r.id, progress_done=1) is True
    assert store.finish(r.id, "w", "cancelled", now=T0 + 2, message="stopped") is True
    assert_counts(store, cancelled=1)


def test_cancel_a_finished_task_returns_false_and_changes_nothing(store):
    done = finished(store, "succeeded", at=T0)
    assert store.cancel(done, now=T0 + 1) is False
    got = store.get(done, load=("result",))
    assert (got.status, got.result, got.finished_at) == ("succeeded", b"value", T0)
    assert_counts(store, succeeded=1)


def test_cancel_an_unknown_task_raises(store):
    with pytest.raises(TaskNotFound):
        store.cancel("no-such-id")


def test_cancel_a_pipeline_step_cancels_the_later_steps(store):
    a, b, c = pipeline(store)
    claim_id(store)
    assert store.cancel(b.id, now=T0 + 1) is True
    assert [store.status(s.id) for s in (a, b, c)] == ["running", "cancelled", "cancelled"]
    assert store.finish(a.id, "w", "succeeded", now=T0 + 2, result=b"A") is True
    assert store.status(b.id) == "cancelled"
    assert store.claim("w", 10, now=T0 + 3) is None
    assert_counts(store, succeeded=1, cancelled=2)


def test_cancel_the_first_pipeline_step_cancels_them_all(store):
    steps = pipeline(store)
    assert store.cancel(steps[0].id, now=T0 + 1) is True
    assert [store.status(s.id) for s in steps] == ["cancelled"] * 3
    assert store.claim("w", 10, now=T0 + 2) is None
    assert_counts(store, cancelled=3)


# ---- get / status ----------------------------------------------------------------
def test_get_returns_a_copy(store):
    r = rec()
    store.add([r])
    got = store.get(r.id)
    got.status, got.priority, got.name, got.worker = "failed", 99, "changed", "x"
    again = store.get(r.id)
    assert (again.status, again.priority, again.name, again.worker) == ("pending", 0, "t", None)
    assert_counts(store, pending=1)


def test_get_returns_a_copy_down_to_the_error_dict(store):
    """"Changing a returned record changes nothing in the store": its error dict too."""
    done = finished(store, "failed")
    store.get(done).error["message"] = "changed"
    store.page()[0].error["type"] = "Changed"
    got = store.get(done)
    assert (got.error["type"], got.error["message"]) == ("ValueError", "boom")


def test_page_returns_copies(store):
    r = rec()
    store.add([r])
    store.page()[0].status = "failed"
    store.page(status="pending")[0].priority = 7
    got = store.get(r.id)
    assert (got.status, got.priority) == ("pending", 0)


def test_get_of_an_unknown_task_is_none(store):
    assert store.get("no-such-id") is None
    assert store.status("no-such-id") is None


def test_get_loads_bulky_parts_when_asked(store):
    r = rec(payload=b"P")
    store.add([r])
    claim_id(store)
    store.update(r.id, output="hello\n")
    store.finish(r.id, "w", "succeeded", now=T0 + 1, result=b"R")
    got = store.get(r.id, load=("result", "output"))
    assert (got.result, got.output) == (b"R", "hello\n")
    assert store.get(r.id, load=("payload",)).payload == b"P"
    plain = store.get(r.id)
    assert (plain.status, plain.finished_at) == ("succeeded", T0 + 1)


def test_status_follows_every_move(store):
    r = rec("scheduled", eta=T0 + 1)
    store.add([r])
    assert store.status(r.id) == "scheduled"
    store.promote_due(now=T0 + 1)
    assert store.status(r.id) == "pending"
    claim_id(store, now=T0 + 1)
    assert store.status(r.id) == "running"
    store.finish(r.id, "w", "succeeded", now=T0 + 2)
    assert store.status(r.id) == "succeeded"


# ---- update ----------------------------------------------------------------------
def test_update_sets_progress_and_output_of_a_running_task(store):
    r = rec()
    store.add([r])
    claim_id(store)
    assert store.update(r.id, progress_done=3, progress_total=10, progress_message="hi",
                        output="line\n") is False
    got = store.get(r.id, load=("output",))
    assert (got.progress_done, got.progress_total, got.progress_message, got.output) == (
        3, 10, "hi", "line\n")
    assert store.update(r.id, output="line\nmore\n", progress_done=4) is False
    got = store.get(r.id, load=("output",))
    assert (got.output, got.progress_done, got.progress_total) == ("line\nmore\n", 4, 10)


@pytest.mark.parametrize("fields", [{"status": "succeeded"}, {"progress_done": 5, "status": "failed"},
                                    {"result": b"x"}, {"worker": "other"}])
def test_update_refuses_fields_other_than_progress_and_output(store, fields):
    r = rec()
    store.add([r])
    claim_id(store)
    with pytest.raises(ValueError):
        store.update(r.id, **fields)
    got = store.get(r.id, load=("result",))
    assert (got.status, got.worker, got.result, got.progress_done) == ("running", "w", None, 0)
    assert_counts(store, running=1)


def test_update_of_a_task_that_is_not_running_writes_nothing(store):
    waiting = rec()
    store.add([waiting])
    done = finished(store, "succeeded", at=T0)
    assert store.update(done, progress_done=7, progress_message="late", output="late") is None
    got = store.get(done, load=("output",))
    assert (got.progress_done, got.progress_message, got.output) == (0, None, "")
    assert store.update(waiting.id, progress_done=7) is None
    assert store.get(waiting.id).progress_done == 0
    assert store.update("no-such-id", output="x") is None


# ---- counts ----------------------------------------------------------------------
def test_counts_follow_every_kind_of_move(store):
    a, b, c, d = rec(), rec(), rec(), rec("scheduled", eta=T0 + 5)
    e, f = pipeline(store, 2)
    store.add([a, b, c, d])
    assert_counts(store, pending=4, scheduled=2)
    claim_id(store)                                          # e
    claim_id(store)                                          # a
    assert_counts(store, pending=2, scheduled=2, running=2)
    store.finish(e.id, "w", "succeeded", now=T0 + 1)
    assert store.status(f.id) == "pending"                   # promoted
    assert_counts(store, pending=3, scheduled=1, running=1, succeeded=1)
    store.finish(a.id, "w", "retrying", now=T0 + 1, eta=T0 + 3)
    assert_counts(store, pending=3, scheduled=1, retrying=1, succeeded=1)
    store.promote_due(now=T0 + 5)
    assert_counts(store, pending=5, succeeded=1)
    store.cancel(b.id, now=T0 + 5)
    assert_counts(store, pending=4, succeeded=1, cancelled=1)
    running = claim_id(store, lease=1, now=T0 + 6)
    store.requeue_expired(now=T0 + 8)
    assert_counts(store, pending=4, succeeded=1, cancelled=1)
    claim_id(store, lease=1, now=T0 + 9)
    store.requeue_expired(now=T0 + 11)                    # second loss: WorkerLost
    assert store.status(running) == "failed"
    assert_counts(store, pending=3, succeeded=1, cancelled=1, failed=1)
    gone = finished(store, "failed", at=T0 + 12)
    assert_counts(store, pending=3, succeeded=1, cancelled=1, failed=2)
    assert store.purge(statuses=("failed",), now=T0 + 20) == 2
    assert store.get(gone) is None
    assert_counts(store, pending=3, succeeded=1, cancelled=1)
    assert store.retain(keep=1, now=T0 + 100) == 2
    assert_counts(store, pending=3)


# ---- page ------------------------------------------------------------------------
def test_page_is_newest_first_and_filters(store):
    rs = [rec() for _ in range(5)]
    store.add(rs[:2])
    store.add(rs[2:])
    newest_first = ids(rs[::-1])
    assert ids(store.page()) == newest_first
    claim_id(store)
    store.finish(rs[0].id, "w", "succeeded", now=T0)
    claim_id(store)
    store.finish(rs[1].id, "w", "failed", now=T0, error=dict(ERROR))
    assert ids(store.page()) == newest_first                # order is submit order
    assert ids(store.page(status="succeeded")) == [rs[0].id]
    assert ids(store.page(status=("succeeded", "failed"))) == [rs[1].id, rs[0].id]
    assert ids(store.page(status=("pending",), limit=2)) == [rs[4].id, rs[3].id]
    assert store.page(status="running") == []


def test_page_filters_by_name(store):
    a1, b1, a2 = rec(name="a"), rec(name="b"), rec(name="a")
    store.add([a1, b1, a2])
    assert ids(store.page(name="a")) == [a2.id, a1.id]
    assert ids(store.page(name="b")) == [b1.id]
    assert store.page(name="c") == []
    claim_id(store)
    store.finish(a1.id, "w", "succeeded", now=T0)
    assert ids(store.page(name="a", status="pending")) == [a2.id]
    assert ids(store.page(name="a", status=("succeeded", "running"))) == [a1.id]


def test_page_limit_and_offset_walk_every_record_once(store):
    rs = [rec() for _ in range(120)]
    for i in range(0, 120, 7):
        store.add(rs[i:i + 7])
    pages = [store.page(limit=50, offset=off) for off in (0, 50, 100, 150)]
    assert [len(p) for p in pages] == [50, 50, 20, 0]
    assert [r.id for p in pages for r in p] == ids(rs[::-1])
    assert ids(store.page(limit=None)) == ids(rs[::-1])
    assert ids(store.page(limit=None, offset=100)) == ids(rs[19::-1])
    assert ids(store.page(limit=3, offset=117)) == ids(rs[2::-1])


def test_page_paging_within_a_status(store):
    rs = [rec() for _ in range(30)]
    store.add(rs)
    for r in rs[:20]:                                        # oldest 20 succeed
        assert claim_id(store) == r.id
        store.finish(r.id, "w", "succeeded", now=T0)
    first = store.page(status="succeeded", limit=8)
    second = store.page(status="succeeded", limit=8, offset=8)
    rest = store.page(status="succeeded", limit=None, offset=16)
    assert ids(first + second + rest) == ids(rs[19::-1])
    assert ids(store.page(status="pending", limit=None, offset=5)) == ids(rs[24:19:-1])


# ---- find_prefix -----------------------------------------------------------------
def test_find_prefix(store):
    store.add([rec(id="abc123"), rec(id="abd456"), rec(id="xyz789")])
    assert sorted(store.find_prefix("ab")) == ["abc123", "abd456"]
    assert store.find_prefix("abc") == ["abc123"]
    assert store.find_prefix("xyz789") == ["xyz789"]
    assert store.find_prefix("zz") == []
    assert len(store.find_prefix("ab", limit=1)) == 1
    assert set(store.find_prefix("ab", limit=1)) <= {"abc123", "abd456"}


# ---- purge -----------------------------------------------------------------------
def test_purge_older_than(store):
    old = finished(store, "succeeded", at=T0)
    new = finished(store, "failed", at=T0 + 100)
    assert store.purge(older_than=50, now=T0 + 110) == 1
    assert store.get(old) is None and store.status(new) == "failed"
    assert_counts(store, failed=1)
    assert store.purge(older_than=50, now=T0 + 110) == 0


def test_purge_older_than_is_at_least(store):
    """"finished at least ``older_than`` seconds before ``now``": the boundary is deleted."""
    done = finished(store, "succeeded", at=T0)
    assert store.purge(older_than=10, now=T0 + 9) == 0
    assert store.purge(older_than=10, now=T0 + 10) == 1
    assert store.get(done) is None


def test_purge_by_status(store):
    ok = finished(store, "succeeded", at=T0)
    bad = finished(store, "failed", at=T0)
    stopped = finished(store, "cancelled", at=T0)
    assert store.purge(statuses=("failed", "cancelled"), now=T0 + 1) == 2
    assert store.status(ok) == "succeeded"
    assert store.get(bad) is None and store.get(stopped) is None
    assert_counts(store, succeeded=1)


def test_purge_never_deletes_unfinished_tasks(store):
    running, pending, sched = rec(), rec(), rec("scheduled", eta=T0 + 5)
    store.add([running, pending, sched])
    claim_id(store)
    retrying = rec()
    store.add([retrying])
    claim_id(store, "w2")                                    # pending goes first (FIFO)
    claim_id(store, "w3")
    store.finish(retrying.id, "w3", "retrying", now=T0, eta=T0 + 50)
    done = finished(store, "succeeded", at=T0)
    assert store.purge(statuses=UNFINISHED, now=T0 + 10**6) == 0
    assert store.purge(now=T0 + 10**6) == 1
    assert store.get(done) is None
    assert_counts(store, running=2, scheduled=1, retrying=1)


# ---- retain ----------------------------------------------------------------------
def test_retain_drops_records_finished_more_than_keep_seconds_ago(store):
    old = finished(store, "succeeded", at=T0)
    new = finished(store, "cancelled", at=T0 + 50)
    waiting = rec(created_at=T0 - 1000)
    store.add([waiting])
    assert store.retain(keep=30, now=T0 + 60) == 1
    assert store.get(old) is None and store.status(new) == "cancelled"
    assert store.status(waiting.id) == "pending"
    assert_counts(store, cancelled=1, pending=1)
    assert store.retain(keep=30, now=T0 + 60) == 0
    assert store.retain(now=T0 + 10**6) == 0               # keep=None: kept forever


def test_retain_keep_is_more_than(store):
    """"finished more than ``keep`` seconds ago": the boundary is kept."""
    done = finished(store, "succeeded", at=T0)
    assert store.retain(keep=10, now=T0 + 10) == 0
    assert store.retain(keep=10, now=T0 + 10.5) == 1
    assert store.get(done) is None


def test_retain_drops_finished_records_past_their_expiry(store):
    done = finished(store, "succeeded", at=T0, expires_at=T0 + 10)
    lasting = finished(store, "succeeded", at=T0)
    pending = rec(expires_at=T0 + 10)
    store.add([pending])
    running = rec(expires_at=T0 + 10, priority=1)
    store.add([running])
    assert claim_id(store, now=T0 + 1) == running.id
    assert store.retain(now=T0 + 5) == 0
    assert store.retain(now=T0 + 11) == 1
    assert store.get(done) is None and store.status(lasting) == "succeeded"
    assert store.status(pending.id) == "pending" and store.status(running.id) == "running"
    assert_counts(store, succeeded=1, pending=1, running=1)


def test_retain_drops_a_record_that_finished_after_its_expiry(store):
    """Past its expiry while still running it stays; once finished, it goes."""
    r = rec(expires_at=T0 + 10)
    store.add([r])
    claim_id(store, now=T0)
    assert store.retain(now=T0 + 11) == 0
    store.finish(r.id, "w", "succeeded", now=T0 + 12)
    assert store.retain(now=T0 + 13) == 1
    assert store.get(r.id) is None
    assert_counts(store)


def test_retain_is_not_held_up_by_many_unfinished_tasks_past_their_expiry(store):
    """Hundreds of waiting tasks whose expiry passed sit before a finished one in
    expiry order: that one is still dropped, and they are not."""
    waiting = [rec(status="scheduled", eta=T0 + 10_000, expires_at=T0 + 1) for _ in range(1200)]
    store.add(waiting)
    done = finished(store, at=T0, expires_at=T0 + 2)
    assert store.retain(now=T0 + 10) == 1
    assert store.get(done) is None
    assert store.counts()["scheduled"] == 1200
    assert store.retain(now=T0 + 11) == 0


def test_retain_max_finished_keeps_the_newest_finished(store):
    done = [finished(store, "succeeded" if i % 2 else "failed", at=T0 + i) for i in range(5)]
    waiting = [rec() for _ in range(3)]
    store.add(waiting)
    assert store.retain(max_finished=2, now=T0 + 10) == 3
    assert [store.get(i) for i in done[:3]] == [None] * 3
    assert [store.status(i) for i in done[3:]] == ["succeeded", "failed"]
    assert_counts(store, failed=1, succeeded=1, pending=3)
    assert store.retain(max_finished=2, now=T0 + 10) == 0
    assert store.retain(max_finished=0, now=T0 + 10) == 2
    assert_counts(store, pending=3)


def test_retain_with_nothing_due_deletes_nothing(store):
    finished(store, "succeeded", at=T0)
    store.add([rec()])
    assert store.retain(now=T0 + 10**6) == 0
    assert store.retain(keep=100, max_finished=10, now=T0 + 50) == 0
    assert_counts(store, succeeded=1, pending=1)


# ---- trim_runs -------------------------------------------------------------------
def test_trim_runs_keeps_the_newest_finished_runs_of_a_name(store):
    runs = [finished(store, "succeeded", at=T0 + i, name="job") for i in range(5)]
    others = [finished(store, "failed", at=T0 + i, name="other") for i in range(3)]
    going = rec(name="job")
    store.add([going])
    assert store.trim_runs("job", 2) == 3
    assert [store.get(i) for i in runs[:3]] == [None] * 3
    assert [store.status(i) for i in runs[3:]] == ["succeeded"] * 2
    assert [store.status(i) for i in others] == ["failed"] * 3
    assert store.status(going.id) == "pending"
    assert_counts(store, succeeded=2, failed=3, pending=1)
    assert store.trim_runs("job", 2) == 0
    assert store.trim_runs("job", 0) == 2
    assert store.trim_runs("nobody", 0) == 0
    assert_counts(store, failed=3, pending=1)


# ---- periodic jobs ---------------------------------------------------------------
def job(name="j", **kw):
    kw.setdefault("next_run", T0 + 60)
    return JobRecord(name=name, schedule="every 60s", every=60.0, payload=b"job call",
                     created_at=T0, **kw)


def test_put_get_and_list_jobs(store):
    stored = store.put_job(job())
    assert (stored.name, stored.schedule, stored.next_run) == ("j", "every 60s", T0 + 60)
    store.put_job(job("k", next_run=T0 + 5))
    got = store.get_job("j")
    assert (got.name, got.every, got.payload, got.created_at) == ("j", 60.0, b"job call", T0)
    assert sorted(store.jobs()) == ["j", "k"]
    assert store.jobs()["k"].next_run == T0 + 5
    assert store.get_job("nope") is None


def test_jobs_are_returned_as_copies(store):
    store.put_job(job())
    got = store.get_job("j")
    got.paused, got.runs = True, 9
    store.jobs()["j"].next_run = 0
    again = store.get_job("j")
    assert (again.paused, again.runs, again.next_run) == (False, 0, T0 + 60)


def test_put_job_replacing_keeps_counters_and_next_run_of_an_unchanged_schedule(store):
    store.put_job(job())
    assert store.fire_job("j", T0 + 60, T0 + 120, run=rec(name="j"), runs=1, skipped=2, missed=3)
    store.update_job("j", paused=True, errors=4)
    stored = store.put_job(job(next_run=T0 + 999, priority=7))
    got = store.get_job("j")
    for j in (stored, got):
        assert (j.runs, j.skipped, j.missed, j.errors, j.paused) == (1, 2, 3, 4, True)
        assert (j.next_run, j.priority, j.created_at) == (T0 + 120, 7, T0)
    changed = JobRecord(name="j", schedule="every 30s", every=30.0, next_run=T0 + 130,
                        created_at=T0 + 500)
    store.put_job(changed)
    got = store.get_job("j")
    assert (got.schedule, got.next_run, got.runs, got.created_at) == ("every 30s", T0 + 130, 1, T0)


def test_update_job(store):
    store.put_job(job())
    updated = store.update_job("j", paused=True, next_run=T0 + 5)
    assert (updated.paused, updated.next_run) == (True, T0 + 5)
    got = store.get_job("j")
    assert (got.paused, got.next_run, got.schedule) == (True, T0 + 5, "every 60s")
    assert store.update_job("nope", paused=True) is None
    assert store.get_job("nope") is None


def test_remove_job_keeps_its_past_runs(store):
    store.put_job(job())
    run = rec(name="j")
    store.fire_job("j", T0 + 60, T0 + 120, run=run, runs=1)
    assert store.remove_job("j") is True
    assert store.get_job("j") is None and store.jobs() == {}
    assert store.remove_job("j") is False
    assert store.update_job("j", paused=True) is None
    assert store.status(run.id) == "pending"


def test_fire_job_handles_a_tick_exactly_once(store):
    store.put_job(job())
    run = rec(name="j", payload=b"run")
    assert store.fire_job("j", T0 + 60, T0 + 120, run=run, runs=1) is True
    got = store.get_job("j")
    assert (got.next_run, got.runs) == (T0 + 120, 1)
    claimed = store.claim("w", 10, now=T0 + 60)
    assert (claimed.id, claimed.payload) == (run.id, b"run")
    late = rec(name="j")
    assert store.fire_job("j", T0 + 60, T0 + 120, run=late, runs=1) is False
    assert store.get(late.id) is None
    assert (store.get_job("j").next_run, store.get_job("j").runs) == (T0 + 120, 1)
    assert store.fire_job("j", T0 + 120, T0 + 180, skipped=1) is True    # a tick with no run
    got = store.get_job("j")
    assert (got.next_run, got.runs, got.skipped) == (T0 + 180, 1, 1)
    assert_counts(store, running=1)


def test_fire_job_is_exactly_once_across_threads(store):
    store.put_job(job())
    runs = [rec(name="j") for _ in range(8)]
    fired = []
    barrier = threading.Barrier(len(runs))

    def fire(run):
        barrier.wait()
        fired.append(store.fire_job("j", T0 + 60, T0 + 120, run=run, runs=1))

    threads = [threading.Thread(target=fire, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fired) == [False] * 7 + [True]
    assert store.get_job("j").runs == 1
    assert_counts(store, pending=1)


def test_fire_job_with_a_run_that_is_not_new_changes_nothing(store):
    store.put_job(job())
    with pytest.raises(InvalidStateError):
        store.fire_job("j", T0 + 60, T0 + 120, run=rec("running", name="j"), runs=1)
    got = store.get_job("j")
    assert (got.next_run, got.runs) == (T0 + 60, 0)
    assert_counts(store)


def test_fire_job_now_leaves_the_schedule_alone(store):
    store.put_job(job())
    now_run, again = rec(name="j"), rec(name="j")
    assert store.fire_job("j", None, T0 + 999, run=now_run) is True
    assert store.fire_job("j", None, T0 + 999, run=again) is True
    assert store.get_job("j").next_run == T0 + 60
    assert {claim_id(store), claim_id(store)} == {now_run.id, again.id}
    assert store.fire_job("j", T0 + 60, T0 + 120) is True     # the schedule still due


# ---- the scheduler lock ----------------------------------------------------------
def test_lock_has_one_holder_until_its_ttl_ends(store):
    assert store.hold_lock("a", 10, now=T0) is True
    assert store.hold_lock("b", 10, now=T0 + 5) is False
    assert store.hold_lock("a", 10, now=T0 + 5) is True      # renewed until T0 + 15
    assert store.hold_lock("b", 10, now=T0 + 12) is False
    assert store.hold_lock("b", 10, now=T0 + 16) is True     # a's lease ran out
    assert store.hold_lock("a", 10, now=T0 + 17) is False


def test_release_lock_only_by_its_holder(store):
    store.release_lock("nobody")                              # free: no error
    assert store.hold_lock("a", 10, now=T0)
    store.release_lock("b")
    assert store.hold_lock("b", 10, now=T0 + 1) is False
    store.release_lock("a")
    assert store.hold_lock("b", 10, now=T0 + 1) is True
    assert store.hold_lock("a", 10, now=T0 + 2) is False


# ---- wait_done -------------------------------------------------------------------
def test_wait_done_wakes_when_another_thread_finishes_the_task(store):
    r = rec()
    store.add([r])
    claim_id(store)
    started = threading.Event()

    def finish_later():
        started.wait(5)
        time.sleep(0.05)
        store.finish(r.id, "w", "succeeded", result=b"v")

    t = threading.Thread(target=finish_later)
    t.start()
    started.set()
    try:
        assert store.wait_done(r.id, timeout=30) is True
    finally:
        t.join()
    assert store.status(r.id) == "succeeded"


def test_wait_done_wakes_when_a_pipeline_step_is_cancelled_by_its_parent(store):
    a, b = pipeline(store, 2)
    claim_id(store)
    t = threading.Timer(0.05, store.finish, args=(a.id, "w", "failed"),
                        kwargs={"error": dict(ERROR)})
    t.start()
    try:
        assert store.wait_done(b.id, timeout=30) is True
    finally:
        t.join()
    assert store.status(b.id) == "cancelled"


def test_wait_done_times_out_and_knows_unknown_tasks(store):
    r = rec()
    store.add([r])
    assert store.wait_done(r.id, timeout=0.05) is False
    with pytest.raises(TaskNotFound):
        store.wait_done("no-such-id", timeout=0.05)
    done = finished(store, "failed")
    assert store.wait_done(done, timeout=0) is True


# ---- backend specifics -------------------------------------------------------------
def test_what_each_backend_serializes_and_shares(store):
    durable = type(store).__name__ in ("SqliteStorage", "RedisStorage")
    assert (store.serializes, store.shared) == (durable, durable)


@pytest.mark.parametrize("store", ["memory"], indirect=True)
def test_memory_keeps_objects_by_reference(store):
    call, value = (lambda: 1), object()                     # neither could be pickled
    r = rec(payload=call)
    store.add([r])
    assert store.claim("w", 10, now=T0).payload is call
    store.finish(r.id, "w", "succeeded", now=T0, result=value)
    assert store.get(r.id, load=("result",)).result is value


def test_two_sqlite_stores_on_one_directory_see_each_other(sqlite_dir):
    one, two = open_store("sqlite", sqlite_dir), open_store("sqlite", sqlite_dir)
    try:
        r = rec()
        one.add([r])
        assert two.status(r.id) == "pending"
        assert two.claim("w", 10, now=T0).id == r.id
        assert one.claim("w", 10, now=T0) is None
        two.finish(r.id, "w", "succeeded", now=T0 + 1, result=b"v")
        assert one.get(r.id, load=("result",)).result == b"v"
        assert_counts(one, succeeded=1)
    finally:
        one.close()
        two.close()


def test_big_values_round_trip_through_a_pipeline_and_purge(store):
    """Values of a few MiB (the SQLite store keeps those in files) behave like small ones."""
    big_call, big_a, big_b = b"c" * (3 << 20), b"a" * (2 << 20), b"b" * (2 << 20)
    a, b = pipeline(store, 2)
    store.add([rec(payload=big_call, priority=-1)])
    claim_id(store)
    store.finish(a.id, "w", "succeeded", now=T0 + 1, result=big_a)
    assert store.get(a.id, load=("result",)).result == big_a
    assert store.get(b.id, load=("prev",)).prev == big_a
    assert store.purge(now=T0 + 2) == 1                     # the parent goes, b keeps its prev
    step = store.claim("w", 10, now=T0 + 3)
    assert (step.id, step.prev) == (b.id, big_a)
    store.finish(b.id, "w", "succeeded", now=T0 + 4, result=big_b)
    got = store.get(b.id, load=("result", "prev"))
    assert (got.result, got.prev) == (big_b, big_a)
    assert store.claim("w", 10, now=T0 + 5).payload == big_call


def test_a_big_value_from_a_worker_that_lost_its_claim_is_not_kept(store):
    r = rec()
    store.add([r])
    claim_id(store, "old", lease=1, now=T0)
    store.requeue_expired(now=T0 + 2)
    claim_id(store, "new", now=T0 + 3)
    assert store.finish(r.id, "old", "succeeded", now=T0 + 4, result=b"o" * (2 << 20)) is False
    assert store.get(r.id, load=("result",)).result is None
    assert store.finish(r.id, "new", "succeeded", now=T0 + 5, result=b"n" * (2 << 20)) is True
    assert store.get(r.id, load=("result",)).result == b"n" * (2 << 20)


# ---- SQLite only: the store directory ------------------------------------------------
def test_sqlite_store_directory_is_private_and_leaves_no_value_files_behind(tmp_path):
    directory = tmp_path / "s"
    store = open_store("sqlite", directory)
    try:
        assert directory.stat().st_mode & 0o777 == 0o700
        r = rec(payload=b"p" * (2 << 20))
        store.add([r])
        claim_id(store)
        store.finish(r.id, "w", "succeeded", now=T0, result=b"r" * (2 << 20))
        assert store.purge(now=T0 + 1) == 1
        assert [p for p in directory.rglob("*") if p.is_file() and p.parent.name == "values"] == []
    finally:
        store.close()


def test_sqlite_store_refuses_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    with pytest.raises(NbqueueError, match="chmod 700"):
        open_store("sqlite", shared)


def test_sqlite_store_refuses_a_directory_that_is_not_a_store(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NbqueueError, match="not an nbqueue store"):
        open_store("sqlite", foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_sqlite_store_holds_one_queue(sqlite_dir):
    from nbqueue.storage.sqlite import SqliteStorage
    with pytest.raises(NbqueueError, match=repr(QUEUE)):
        SqliteStorage(str(sqlite_dir), "another-queue")


# ---- reads racing writes -----------------------------------------------------------
def test_reads_racing_writes_stay_consistent(store):
    """Threads add, claim, finish, cancel, promote, requeue, retain and read at once,
    with a tiny switch interval: nothing raises and the counts match the records."""
    stop = threading.Event()
    errors, added, claims = [], [], []
    outcome = ["succeeded", "failed", "cancelled", "retrying", "pending"]

    def adder(rnd):
        now = time.time()
        batch = [rec(priority=rnd.randint(-1, 1)) for _ in range(3)]
        batch.append(rec("scheduled", eta=now + rnd.uniform(0, 0.1)))
        batch.append(rec(expires_at=now + rnd.uniform(0, 0.05)))
        a, b = rec(), rec("scheduled")
        a.next_id = b.id
        store.add(batch + [a, b])
        added.extend(ids(batch + [a, b]))
        if len(added) > 1500:
            time.sleep(0.01)

    def claimer(rnd):
        name = threading.current_thread().name
        r = store.claim(name, 0.05)
        if r is None:
            return
        claims.append((r.id, r.attempts))
        if rnd.random() < 0.3:
            store.update(r.id, progress_done=1, output="x")
        if rnd.random() < 0.2:
            store.renew([r.id], name, 0.05)
        status = rnd.choice(outcome)
        fields = {"retrying": {"eta": time.time() + 0.02}, "succeeded": {"result": b"v"},
                  "failed": {"error": dict(ERROR)}}.get(status, {})
        if rnd.random() < 0.5:
            store.finish(r.id, name, status, **fields)
        else:
            _, nxt = store.finish_and_claim(r.id, name, status, 0.05, **fields)
            if nxt is not None:
                claims.append((nxt.id, nxt.attempts))
                store.finish(nxt.id, name, "succeeded", result=b"v")

    def canceller(rnd):
        if added:
            try:
                store.cancel(rnd.choice(added))
            except TaskNotFound:
                pass                                        # dropped by retention

    def mover(rnd):
        store.promote_due()
        store.next_eta()
        store.requeue_expired(max_recoveries=2)
        time.sleep(0.001)

    def janitor(rnd):
        store.retain(keep=0.2, max_finished=200)
        store.purge(older_than=0.5, statuses=("cancelled",))
        time.sleep(0.005)

    def reader(rnd):
        store.page(limit=20)
        store.page(status=("pending", "running"), limit=10, offset=5)
        store.counts()
        if added:
            task_id = rnd.choice(added)
            store.get(task_id, load=("result", "output"))
            store.status(task_id)
            store.find_prefix(task_id[:3])

    def loop(body, seed):
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                body(rnd)
        except Exception:  # noqa: BLE001 (any error in a thread fails the test)
            errors.append(traceback.format_exc())
            stop.set()

    bodies = [adder, claimer, claimer, claimer, canceller, mover, janitor, reader, reader]
    threads = [threading.Thread(target=loop, args=(b, i), name=f"race-{i}")
               for i, b in enumerate(bodies)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        stop.wait(1.5)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    assert claims and added
    assert len(set(claims)) == len(claims), "a run was claimed twice"
    counts = store.counts()
    assert counts == tally(store)
    assert sum(counts.values()) == len(store.page(limit=None))
    for r in store.page(limit=None, status="running"):
        assert r.worker and r.worker.startswith("race-")


# ---- scale -----------------------------------------------------------------------
def test_a_few_thousand_finished_records(store):
    n = 3000
    rs = [rec(name=f"n{i % 3}") for i in range(n)]
    store.add(rs)
    got = store.claim("w", 60, now=T0)
    while got is not None:
        status = "failed" if int(got.id, 16) % 4 == 0 else "succeeded"
        _, got = store.finish_and_claim(got.id, "w", status, 60, now=T0 + 1)
    counts = store.counts()
    assert counts["succeeded"] + counts["failed"] == n and counts["failed"] > 0
    page = store.page(limit=50)
    assert ids(page) == ids(rs[:-51:-1])
    assert len(store.page(status="failed", limit=50)) == 50
    assert ids(store.page(limit=50, offset=n - 10)) == ids(rs[9::-1])
    assert len(store.page(name="n1", limit=50)) == 50
    assert counts == tally(store)
    assert store.retain(max_finished=n - 100, now=T0 + 2) == 100
    assert sum(store.counts().values()) == n - 100


# ---- a second process (SQLite) -------------------------------------------------------
def _child_add_and_finish(directory, task_ids):
    s = open_store("sqlite", directory)
    s.add([rec(id=i) for i in task_ids])
    got = s.claim("child", 10, now=T0)
    s.finish(got.id, "child", "succeeded", now=T0 + 1, result=b"from the child")
    s.close()


def _child_finish_claimed(directory, task_id, go):
    s = open_store("sqlite", directory)
    go.wait(60)
    time.sleep(0.1)
    assert s.finish(task_id, "parent-worker", "succeeded", result=b"done")
    s.close()


def _child_claim_all(directory, barrier, out):
    s = open_store("sqlite", directory)
    name = f"proc-{multiprocessing.current_process().pid}"
    got = []
    barrier.wait(60)
    while (r := s.claim(name, 600)) is not None:
        got.append(r.id)
    s.close()
    out.put(got)


def _run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


@pytest.mark.slow
def test_sqlite_store_sees_another_process(sqlite_dir):
    ctx = multiprocessing.get_context("spawn")
    store = open_store("sqlite", sqlite_dir)
    try:
        assert store.counts()["pending"] == 0
        task_ids = [uuid.uuid4().hex for _ in range(3)]
        p = _run(ctx, _child_add_and_finish, str(sqlite_dir), task_ids)
        p.join(60)
        assert p.exitcode == 0
        got = store.get(task_ids[0], load=("result",))
        assert (got.status, got.result, got.worker) == ("succeeded", b"from the child", None)
        assert [store.status(i) for i in task_ids[1:]] == ["pending", "pending"]
        assert ids(store.page()) == task_ids[::-1]
        assert_counts(store, succeeded=1, pending=2)
        assert claim_id(store, now=T0 + 2) == task_ids[1]
    finally:
        store.close()


@pytest.mark.slow
def test_sqlite_wait_done_sees_a_finish_in_another_process(sqlite_dir):
    ctx = multiprocessing.get_context("spawn")
    store = open_store("sqlite", sqlite_dir)
    try:
        r = rec()
        store.add([r])
        assert claim_id(store, "parent-worker", lease=600, now=time.time()) == r.id
        go = ctx.Event()
        p = _run(ctx, _child_finish_claimed, str(sqlite_dir), r.id, go)
        go.set()
        done = store.wait_done(r.id, timeout=30)
        p.join(30)
        assert p.exitcode == 0, "the child process failed (its traceback is above)"
        assert done is True
        assert store.get(r.id, load=("result",)).result == b"done"
    finally:
        store.close()


@pytest.mark.slow
def test_sqlite_processes_racing_to_claim_each_get_distinct_tasks(sqlite_dir):
    ctx = multiprocessing.get_context("spawn")
    store = open_store("sqlite", sqlite_dir)
    try:
        rs = [rec() for _ in range(300)]
        store.add(rs)
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [_run(ctx, _child_claim_all, str(sqlite_dir), barrier, out) for _ in range(3)]
        results = []
        deadline = time.monotonic() + 120
        while len(results) < len(procs) and time.monotonic() < deadline:
            try:
                results.append(out.get(timeout=0.2))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not failed, "a child process failed (its traceback is above)"
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        claimed = [i for got in results for i in got]
        assert sorted(claimed) == sorted(ids(rs))           # each exactly once
        assert_counts(store, running=300)
        assert all(r.attempts == 1 for r in store.page(limit=None))
    finally:
        store.close()


def test_an_added_record_is_seen_at_once_whatever_other_threads_do(store):
    """A record is readable (status, get) the moment add() returns, and claimed exactly
    once, while other threads add, claim and read at the same time."""
    import threading
    stop = threading.Event()
    missing, claimed, errors = [], [], []

    def adder(k):
        try:
            for i in range(300):
                r = rec(id=f"a{k}-{i}")
                store.add([r])
                if store.status(r.id) is None or store.get(r.id) is None:
                    missing.append(r.id)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    def claimer():
        while not stop.is_set():
            got = store.claim("w", 10)
            if got is not None:
                claimed.append(got.id)
                store.finish(got.id, "w", "succeeded")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=adder, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=claimer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads[:3]:
            t.join()
        deadline = time.monotonic() + 10
        while store.counts()["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads[3:]:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors and not missing
    assert sorted(claimed) == sorted(f"a{k}-{i}" for k in range(3) for i in range(300))
    assert store.counts()["succeeded"] == 900


def test_a_bad_add_among_concurrent_ones_fails_alone(store):
    """Adds from several threads while others claim and finish (the SQLite store lets
    an add ride along with another thread's transaction): the one with a duplicate id
    raises ValueError and stores nothing; every other is stored once."""
    import threading
    store.add([rec(id="taken")])
    errors, stop = [], threading.Event()

    def adder(k):
        for i in range(150):
            batch = [rec(id=f"b{k}-{i}-{j}") for j in range(2)]
            if k == 0 and i == 75:
                batch.append(rec(id="taken"))
            try:
                store.add(batch)
            except ValueError as exc:
                errors.append((k, i, str(exc)))

    def claimer():
        while not stop.is_set():
            got = store.claim("w", 10)
            if got is not None:
                store.finish(got.id, "w", "succeeded")

    threads = [threading.Thread(target=adder, args=(k,)) for k in range(3)]
    claimers = [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads + claimers:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in claimers:
        t.join()
    assert [(k, i) for k, i, _ in errors] == [(0, 75)] and "taken" in errors[0][2]
    assert store.get("b0-75-0") is None and store.get("b0-75-1") is None
    assert sum(store.counts().values()) == 1 + 3 * 150 * 2 - 2

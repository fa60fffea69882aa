"""One contract, every backend: the same tests run against memory and disk stores.

Time is passed in (``now=``) wherever the contract depends on it.
"""

import os
import threading
import uuid

import pytest

from nbqueue.exceptions import InvalidStateError, NbqueueError, TaskNotFound
from nbqueue.storage import TaskRecord
from nbqueue.storage.disk import DiskStorage
from nbqueue.storage.memory import MemoryStorage

T0 = 1_000_000.0


@pytest.fixture(params=["memory", "disk"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStorage()
    else:
        s = DiskStorage(str(tmp_path / "store"), "contract")
    yield s
    s.close()


def rec(status="pending", priority=0, eta=None, created=T0, **kw):
    return TaskRecord(id=uuid.uuid4().hex, name="t", status=status, priority=priority,
                      created_at=created, eta=eta, **kw)


def test_add_get_roundtrip_and_reads_are_not_destructive(store):
    r = rec(payload=b"call")
    store.add([r])
    for _ in range(3):
        got = store.get(r.id)
        assert got.id == r.id and got.status == "pending" and got.payload == b"call"
    assert store.get("nope") is None


def test_claim_is_fifo_within_a_priority_and_highest_priority_first(store):
    low1, low2 = rec(priority=0, created=T0), rec(priority=0, created=T0 + 1)
    high = rec(priority=5, created=T0 + 2)
    neg = rec(priority=-3, created=T0 + 3)
    store.add([low1, low2, high, neg])
    order = [store.claim("w", 10, now=T0).id for _ in range(4)]
    assert order == [high.id, low1.id, low2.id, neg.id]
    assert store.claim("w", 10, now=T0) is None


def test_claim_marks_running_counts_the_attempt_and_holds_a_lease(store):
    r = rec()
    store.add([r])
    got = store.claim("w1", 10, now=T0)
    assert (got.status, got.attempts, got.worker, got.started_at) == ("running", 1, "w1", T0)
    assert store.get(r.id).status == "running"
    assert store.renew([r.id], "w1", 10, now=T0 + 5) == {r.id: False}
    assert store.renew([r.id], "someone-else", 10, now=T0 + 5) == {}


def test_claim_is_atomic_across_threads(store):
    records = [rec() for _ in range(200)]
    store.add(records)
    got, lock = [], threading.Lock()

    def worker(name):
        while True:
            r = store.claim(name, 10)
            if r is None:
                return
            with lock:
                got.append(r.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(r.id for r in records)  # each exactly once


def test_expired_lease_goes_back_to_pending_then_fails_with_worker_lost(store):
    r = rec()
    store.add([r])
    now = T0
    for recovery in range(1, 3):
        store.claim("dead", 10, now=now)
        assert store.requeue_expired(now=now + 5, max_recoveries=2) == []  # not yet
        assert store.requeue_expired(now=now + 11, max_recoveries=2) == [r.id]
        got = store.get(r.id)
        assert (got.status, got.recoveries, got.attempts) == ("pending", recovery, recovery)
        now += 20
    store.claim("dead", 10, now=now)
    assert store.requeue_expired(now=now + 11, max_recoveries=2) == [r.id]
    got = store.get(r.id)
    assert got.status == "failed" and "WorkerLost" in got.error["type"]
    assert got.attempts == 3


def test_renewed_lease_is_not_requeued(store):
    r = rec()
    store.add([r])
    store.claim("w", 10, now=T0)
    store.renew([r.id], "w", 10, now=T0 + 8)
    assert store.requeue_expired(now=T0 + 12) == []
    assert store.get(r.id).status == "running"


def test_finish_by_a_worker_that_lost_the_lease_changes_nothing(store):
    r = rec()
    store.add([r])
    store.claim("old", 1, now=T0)
    store.requeue_expired(now=T0 + 2)
    store.claim("new", 10, now=T0 + 3)
    assert store.finish(r.id, "old", "succeeded", result=1) is False
    assert store.finish(r.id, "new", "succeeded", result=2, now=T0 + 4) is True
    got = store.get(r.id)
    assert (got.status, got.result, got.finished_at) == ("succeeded", 2, T0 + 4)


def test_scheduled_tasks_wait_for_their_eta(store):
    soon, later = rec("scheduled", eta=T0 + 10), rec("scheduled", eta=T0 + 20)
    store.add([later, soon])
    assert store.next_eta() == T0 + 10
    assert store.claim("w", 10, now=T0) is None
    assert store.promote_due(now=T0 + 9) == 0
    assert store.promote_due(now=T0 + 10) == 1
    assert store.get(soon.id).status == "pending" and store.get(later.id).status == "scheduled"
    assert store.next_eta() == T0 + 20
    assert store.claim("w", 10, now=T0 + 10).id == soon.id


def test_retrying_waits_out_its_delay_then_is_pending(store):
    r = rec(retries=1)
    store.add([r])
    store.claim("w", 10, now=T0)
    assert store.finish(r.id, "w", "retrying", eta=T0 + 5, retries_used=1)
    assert store.get(r.id).status == "retrying"
    assert store.claim("w", 10, now=T0 + 1) is None
    store.promote_due(now=T0 + 5)
    again = store.claim("w", 10, now=T0 + 5)
    assert (again.id, again.attempts, again.retries_used) == (r.id, 2, 1)


def test_cancel_waiting_running_and_finished(store):
    waiting, running, done = rec(), rec(), rec()
    sched = rec("scheduled", eta=T0 + 100)
    store.add([running, waiting, done, sched])
    store.claim("w", 10, now=T0)                      # running
    assert store.cancel(waiting.id) is True
    assert store.get(waiting.id).status == "cancelled"
    assert store.cancel(sched.id) is True
    assert store.get(sched.id).status == "cancelled" and store.next_eta() is None
    assert store.cancel(running.id) is True           # flagged, still running
    got = store.get(running.id)
    assert got.status == "running" and got.cancel_requested
    assert store.renew([running.id], "w", 10) == {running.id: True}
    store.claim("w", 10)                              # skips the cancelled one
    store.finish(done.id, "w", "succeeded", result=1)
    assert store.cancel(done.id) is False
    with pytest.raises(TaskNotFound):
        store.cancel("nope")
    assert store.claim("w", 10) is None               # the cancelled waiting task never runs


def test_pipeline_success_releases_the_next_step_with_the_value(store):
    a, b, c = rec(), rec("scheduled"), rec("scheduled")
    a.next_id, b.next_id = b.id, c.id
    store.add([a, b, c])
    assert store.claim("w", 10).id == a.id
    assert store.claim("w", 10) is None               # b waits for a
    store.finish(a.id, "w", "succeeded", result="A")
    got = store.claim("w", 10)
    assert got.id == b.id and got.has_prev and got.prev == "A"
    store.finish(b.id, "w", "failed", error={"type": "ValueError", "message": "x", "traceback": ""})
    got = store.get(c.id)
    assert got.status == "cancelled" and "earlier pipeline step" in got.message


def test_progress_and_output_fields(store):
    r = rec()
    store.add([r])
    store.claim("w", 10)
    store.update(r.id, progress_done=3, progress_total=10, progress_message="hi", output="line\n")
    got = store.get(r.id)
    assert (got.progress_done, got.progress_total, got.progress_message, got.output) == (
        3, 10, "hi", "line\n")
    assert store.update("nope", output="x") is None


def test_expired_before_start_is_cancelled_not_run(store):
    r = rec(expires_at=T0 + 1)
    store.add([r])
    assert store.claim("w", 10, now=T0 + 2) is None
    got = store.get(r.id)
    assert got.status == "cancelled" and "expired" in got.message


def test_list_filters_and_limit_keeps_the_newest(store):
    rs = [rec(created=T0 + i) for i in range(5)]
    store.add(rs)
    store.claim("w", 10)
    store.finish(rs[0].id, "w", "succeeded")
    assert [r.id for r in store.list()] == [r.id for r in rs]
    assert [r.id for r in store.list(status="succeeded")] == [rs[0].id]
    assert [r.id for r in store.list(status=("pending",), limit=2)] == [rs[3].id, rs[4].id]
    assert store.list(name="other") == []


def test_purge_removes_only_finished_records(store):
    old, new, pending = rec(), rec(), rec()
    store.add([old, new, pending])
    store.claim("w", 10, now=T0)
    store.finish(old.id, "w", "succeeded", now=T0)
    store.claim("w", 10, now=T0)
    store.finish(new.id, "w", "failed", now=T0 + 100)
    assert store.purge(older_than=50, now=T0 + 110) == 1
    assert store.get(old.id) is None and store.get(new.id) is not None
    assert store.purge(now=T0 + 110) == 1
    assert store.get(pending.id).status == "pending"
    assert store.delete([pending.id]) == 0


def test_purge_expired(store):
    r = rec(expires_at=T0 + 10)
    store.add([r])
    store.claim("w", 10, now=T0)
    store.finish(r.id, "w", "succeeded", now=T0 + 1)
    assert store.purge_expired(now=T0 + 5) == 0
    assert store.purge_expired(now=T0 + 11) == 1
    assert store.get(r.id) is None


def test_illegal_move_raises(store):
    r = rec()
    store.add([r])
    assert store.finish(r.id, None, "succeeded") is False  # not running: refused
    assert store.get(r.id).status == "pending"
    store.claim("w", 10)
    with pytest.raises(InvalidStateError):
        store.finish(r.id, "w", "scheduled")
    assert store.get(r.id).status == "running"
    with pytest.raises(InvalidStateError):
        store.add([rec("running")])


# ---- disk-only: the directory itself -------------------------------------------
def test_disk_store_directory_is_private(tmp_path):
    DiskStorage(str(tmp_path / "s"), "q").close()
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o700


def test_disk_store_refuses_group_writable_directory(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o770)
    with pytest.raises(NbqueueError, match="chmod 700"):
        DiskStorage(str(d), "q")


def test_disk_store_refuses_foreign_and_corrupt_directories(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NbqueueError, match="not an nbqueue store"):
        DiskStorage(str(foreign), "q")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir(mode=0o700)
    (corrupt / "cache.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NbqueueError, match="corrupt"):
        DiskStorage(str(corrupt), "q")

    import diskcache
    other = tmp_path / "other-cache"
    c = diskcache.Cache(str(other))
    c.set("k", 1)
    c.close()
    os.chmod(other, 0o700)
    with pytest.raises(NbqueueError, match="did not create"):
        DiskStorage(str(other), "q")


def test_disk_store_holds_one_queue(tmp_path):
    DiskStorage(str(tmp_path / "s"), "alpha").close()
    with pytest.raises(NbqueueError, match="'alpha'"):
        DiskStorage(str(tmp_path / "s"), "beta")


def test_disk_store_never_evicts(tmp_path):
    s = DiskStorage(str(tmp_path / "s"), "q")
    assert s.cache.eviction_policy == "none"
    s.close()

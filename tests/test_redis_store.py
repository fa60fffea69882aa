"""The Redis store through the public API, on a real redis-server (``redis_url``):
signing (a forged or unsigned payload is never unpickled, on Redis and on a
store directory with a secret), queues kept apart by their key prefix, errors
that name the server, processes sharing one queue, periodic jobs, a sidecar, and
the dashboard showing tasks a worker on another machine runs. The contract
itself is in ``test_storage_contract.py``; faults (SIGKILL, a restarted server)
in ``test_redis_faults.py``."""

import multiprocessing
import os
import pickle
import socket
import time
import uuid

import pytest
from conftest import unique_name, wait_until

import nbqueue
from nbqueue.exceptions import PayloadRejected, StoreUnavailable
from nbqueue.records import TaskRecord
from nbqueue.signing import Signer

pytestmark = pytest.mark.redis
SECRET = "test-secret-1"


class Planted:
    """A pickle that makes a directory when it is unpickled: proof a payload ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def square(x):
    return x * x


def tick():
    return "tick"


@pytest.fixture
def rq(redis_url):
    q = nbqueue.Queue(unique_name("redis"), storage=redis_url, secret=SECRET, workers=2)
    yield q
    q.close()


def _plant(store, payload, name="square"):
    """Add a pending task whose stored payload is ``payload`` (bytes, as is)."""
    rec = TaskRecord(id=uuid.uuid4().hex, name=name, status="pending", created_at=time.time(),
                     payload=payload)
    store.add([rec])
    return rec.id


# ---- secrets and signatures ------------------------------------------------------------
def test_a_redis_queue_needs_a_secret(redis_url, monkeypatch):
    monkeypatch.delenv("NBQUEUE_SECRET", raising=False)
    with pytest.raises(ValueError, match="secret=.*NBQUEUE_SECRET"):
        nbqueue.Queue(unique_name("nosecret"), storage=redis_url, workers=0)


def test_the_secret_is_checked_before_anything_is_opened(redis_url):
    with pytest.raises(TypeError, match="secret must be a str or bytes, not int"):
        nbqueue.Queue(unique_name("s"), storage=redis_url, secret=12345678, workers=0)
    with pytest.raises(ValueError, match="secret is too short"):
        nbqueue.Queue(unique_name("s"), storage=redis_url, secret="short", workers=0)


def test_the_secret_can_come_from_the_environment(redis_url, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET", SECRET)
    q = nbqueue.Queue(unique_name("env"), storage=redis_url, workers=1)
    try:
        assert q.task(square)(7).get(timeout=10) == 49
    finally:
        q.close()


@pytest.mark.parametrize("forge", ["unsigned", "other secret"])
def test_a_worker_refuses_a_forged_payload_without_unpickling_it(redis_url, tmp_path, forge):
    from nbqueue.storage.redis import RedisStorage
    marker = str(tmp_path / "ran")
    data = pickle.dumps(Planted(marker))
    if forge == "other secret":
        data = Signer(b"attacker-secret").sign(data)
    # Written straight into the task's hash, as someone on the server could, before
    # any worker runs.
    name = unique_name("forged")
    planter = RedisStorage(redis_url, name, Signer(SECRET.encode()))
    task_id = _plant(planter, b"placeholder")
    planter._client.hset(planter._key(task_id), "payload", data)
    planter.close()
    q = nbqueue.Queue(name, storage=redis_url, secret=SECRET, workers=1)
    try:
        with pytest.raises(nbqueue.TaskException) as err:
            q.result(task_id).get(timeout=10)
        assert err.value.exc_type.endswith("PayloadRejected")
        assert "refused without unpickling" in err.value.message
        assert not os.path.exists(marker)          # the pickle never ran
        assert q.task(square)(3).get(timeout=10) == 9   # the worker lives on
    finally:
        q.close()


def test_a_value_signed_with_another_secret_is_not_unpickled(redis_url, tmp_path):
    name = unique_name("values")
    ours = nbqueue.Queue(name, storage=redis_url, secret=SECRET, workers=1)
    try:
        r = ours.task(square)(4)
        assert r.get(timeout=10) == 16
    finally:
        ours.close()
    theirs = nbqueue.Queue(name, storage=redis_url, secret="another-secret", workers=0)
    try:
        with pytest.raises(PayloadRejected, match="signed with another secret"):
            theirs.result(r.id).get(timeout=10)
        assert theirs.result(r.id).status == "succeeded"   # a status read still works
    finally:
        theirs.close()


def test_a_store_directory_with_a_secret_signs_and_refuses_unsigned(tmp_path):
    directory, name = str(tmp_path / "store"), unique_name("disk")
    marker = str(tmp_path / "ran")
    plain = nbqueue.Queue(name, storage=directory, workers=0)
    try:
        planted = _plant(plain.store, pickle.dumps(Planted(marker)))
    finally:
        plain.close()
    signed = nbqueue.Queue(name, storage=directory, secret=SECRET, workers=1)
    try:
        assert signed.task(square)(5).get(timeout=10) == 25   # signed round trip
        with pytest.raises(nbqueue.TaskException, match="not signed"):
            signed.result(planted).get(timeout=10)
        assert not os.path.exists(marker)
    finally:
        signed.close()


# ---- one server, many queues and processes ------------------------------------------------
def test_queues_on_one_server_are_kept_apart(redis_url):
    a = nbqueue.Queue(unique_name("a"), storage=redis_url, secret=SECRET, workers=0)
    b = nbqueue.Queue(unique_name("b"), storage=redis_url, secret=SECRET, workers=1)
    try:
        ra = a.task(square)(2)
        assert b.task(square)(3).get(timeout=10) == 9
        assert ra.status == "pending"              # b's worker never takes a's task
        assert a.counts()["pending"] == 1 and b.counts()["succeeded"] == 1
        keys = {k.decode() for k in b.store._client.keys("*")}
        assert keys and all(k.startswith(("nbqueue:{" + a.name + "}:", "nbqueue:{" + b.name + "}:"))
                            for k in keys)
    finally:
        a.close()
        b.close()


def _claim_all(url, name, out):
    from nbqueue.storage.redis import RedisStorage
    store = RedisStorage(url, name, Signer(SECRET.encode()))
    got = []
    while (rec := store.claim(f"w{os.getpid()}", 30)) is not None:
        got.append(rec.id)
    out.put(got)
    store.close()


@pytest.mark.slow
def test_processes_racing_to_claim_each_get_distinct_tasks(redis_url):
    from nbqueue.storage.redis import RedisStorage
    name = unique_name("race")
    store = RedisStorage(redis_url, name, Signer(SECRET.encode()))
    ids = [_plant(store, b"x") for _ in range(600)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(redis_url, name, out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [i for part in got for i in part]
    assert sorted(claimed) == sorted(ids)          # every task once, none twice
    assert store.counts()["running"] == 600
    store.close()


def test_a_result_wait_wakes_on_a_finish_by_another_connection(redis_url):
    from nbqueue.storage.redis import RedisStorage
    name = unique_name("wake")
    one = RedisStorage(redis_url, name, Signer(SECRET.encode()))
    two = RedisStorage(redis_url, name, Signer(SECRET.encode()))
    try:
        task_id = _plant(one, b"x")
        assert two.claim("w", 30).id == task_id
        assert one.wait_done(task_id, timeout=0.05) is False
        two.finish(task_id, "w", "succeeded", result=two.signer.sign(b"v"))
        assert one.wait_done(task_id, timeout=10) is True
    finally:
        one.close()
        two.close()


def test_periodic_jobs_run_on_redis(rq):
    ran = rq.periodic(every=1)(tick)
    assert wait_until(lambda: ran.runs >= 2, timeout=15)
    assert rq.store.get_job(ran.name).runs >= 2


@pytest.mark.slow
def test_a_sidecar_runs_a_redis_queue(redis_url):
    q = nbqueue.Queue(unique_name("sidecar"), storage=redis_url, secret=SECRET, workers=0)
    try:
        info = q.start_sidecar(workers=1, worker_type="thread")
        assert info["pid"] != os.getpid()

        def where(x):  # shipped by value, as a notebook's function is
            return x ** 3, os.getpid()
        assert q.task(where)(3).get(timeout=20) == (27, info["pid"])
        assert q.stop_sidecar() is True
    finally:
        q.stop_sidecar(now=True)
        q.close()


def test_the_dashboard_shows_tasks_and_workers_of_other_machines(redis_url):
    from nbqueue.ui.dashboard import DashboardView
    q = nbqueue.Queue(unique_name("dash"), storage=redis_url, secret=SECRET, workers=0)
    try:
        r = q.task(square)(3)
        # a worker on another host: its registration and its claim, made through the store
        q.store.beat_worker("gpu-box:42:1:abc", {"pid": 42, "host": "gpu-box", "workers": 8,
                                                   "kind": "process", "busy": 1})
        assert q.store.claim("gpu-box:42:1:abc", 30).id == r.id
        view = DashboardView(q)
        try:
            assert "worker pid 42 on gpu-box: 8 process workers, 1 busy" in view.workers.value
            assert wait_until(lambda: "1 running" in view.heading.value, timeout=10)
        finally:
            view.close()
    finally:
        q.close()


# ---- errors that say what to do --------------------------------------------------------
def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_producer_without_the_server_gets_an_error_naming_it(redis_url):
    url = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    q = nbqueue.Queue(unique_name("down"), storage=url, secret=SECRET, workers=0)
    with pytest.raises(ConnectionError) as err:
        q.task(square)(2)
    q.close()   # closing a queue whose server is gone raises nothing
    assert isinstance(err.value, StoreUnavailable)
    assert "127.0.0.1" in str(err.value) and "hunter2" not in str(err.value)


def test_a_url_redis_py_cannot_read_is_refused(redis_url):
    with pytest.raises(ValueError, match="redis://"):
        nbqueue.Queue(unique_name("bad"), storage="redis://127.0.0.1:notaport/0", secret=SECRET)


def wait_for_file(path, result):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


@pytest.mark.slow
def test_a_run_that_ends_while_the_server_is_down_keeps_its_outcome(tmp_path):
    import redisserver
    server = redisserver.RedisServer(tmp_path / "redis")
    server.start()
    q = nbqueue.Queue(unique_name("outage"), storage=server.url, secret=SECRET, workers=1,
                      lease=30)
    try:
        gate = str(tmp_path / "gate")
        r = q.task(wait_for_file)(gate, "kept")
        assert wait_until(lambda: r.status == "running", timeout=10)
        server.stop()
        open(gate, "w").close()          # the run ends now, with no server to write to
        time.sleep(0.5)
        server.start()                   # same port, its data back from the append-only file
        assert r.get(timeout=30) == "kept"
        assert r.attempts == 1           # written once the server was back, not run again
        assert q.task(square)(9).get(timeout=30) == 81   # the worker carried on
    finally:
        q.close()
        server.stop()


# ---- memoized results, shared by every machine on the queue ------------------------------
def test_memoized_results_are_shared_through_the_server(redis_url):
    name = unique_name("memo")
    one = nbqueue.Queue(name, storage=redis_url, secret=SECRET, workers=1)
    try:
        first = one.task(cache=True)(square)(12)
        assert first.get(timeout=10) == 144 and not first.cached
    finally:
        one.close()
    # another process would open the same queue: the value comes from the server
    two = nbqueue.Queue(name, storage=redis_url, secret=SECRET, workers=1)
    try:
        again = two.task(cache=True)(square)(12)
        assert again.get(timeout=10) == 144 and again.cached
        assert two.cache_clear() == 1
        third = two.task(cache=True)(square)(12)
        assert third.get(timeout=10) == 144 and not third.cached
    finally:
        two.close()


def test_the_memo_keeps_under_its_size_limit_evicting_the_least_recently_used(redis_url):
    from nbqueue.storage.redis import RedisStorage
    store = RedisStorage(redis_url, unique_name("lru"), Signer(SECRET.encode()))
    memo = store.open_memo()
    memo.size_limit = 3 * (1000 + 100)            # about three values of 1,000 bytes
    for i, key in enumerate("abc"):
        memo.set(key, bytes(1000), now=100 + i)
    assert memo.get("a", float("inf"), now=200)[0]   # a is used: b is now the oldest
    memo.set("d", bytes(1000), now=201)
    assert [memo.get(k, float("inf"), now=300)[0] for k in "abcd"] == [True, False, True, True]
    assert memo.get("a", 10, now=300) == (False, None)   # older than max_age
    store._client.set(store.prefix + "memo:c", b"\0" * 8 + pickle.dumps("planted"))
    assert memo.get("c", float("inf"), now=300) == (False, None)   # unsigned: a miss
    store.close()


# ---- big batches, URLs -------------------------------------------------------------------
def test_a_big_batch_is_stored_whole_in_short_scripts_or_not_at_all(redis_url):
    from nbqueue.storage import redis as redis_store
    store = redis_store.RedisStorage(redis_url, unique_name("batch"), Signer(SECRET.encode()))
    try:
        n = 2 * redis_store.ADD_CHUNK + 500            # three scripts in one MULTI/EXEC
        recs = [TaskRecord(id=uuid.uuid4().hex, name="t", status="pending", payload=b"x")
                for _ in range(n)]
        store.add(recs)
        assert [r.seq for r in recs] == list(range(1, n + 1))
        assert store.counts()["pending"] == n
        again = [TaskRecord(id=uuid.uuid4().hex, name="t", status="pending", payload=b"x")
                 for _ in range(n - 1)] + [TaskRecord(id=recs[-1].id, name="t", status="pending")]
        with pytest.raises(ValueError, match=recs[-1].id):   # the last chunk's id is taken...
            store.add(again)
        assert store.counts()["pending"] == n                # ...so none of the batch is stored
        assert store.status(again[0].id) is None
        store.add(again[:-1])                                # the refusal does not linger
        assert store.counts()["pending"] == 2 * n - 1
    finally:
        store.close()


def test_a_unix_socket_url_works_and_passwords_stay_out_of_messages(tmp_path):
    import subprocess

    import redisserver
    from nbqueue.storage.redisconn import safe_url
    assert safe_url("redis://u:hunter2@h:1/0?password=hunter3") == \
        "redis://u:***@h:1/0?password=***"
    sock = str(tmp_path / "redis.sock")
    server = subprocess.Popen([redisserver.redis_server_path(), "--port", "0", "--unixsocket", sock,
                               "--unixsocketperm", "700", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.exists(sock), timeout=20)
        q = nbqueue.Queue(unique_name("unix"), storage=f"unix://{sock}?db=0", secret=SECRET,
                          workers=1)
        try:
            assert q.task(square)(11).get(timeout=10) == 121
        finally:
            q.close()
    finally:
        server.terminate()
        server.wait(10)


def test_a_signed_call_moved_to_another_task_is_refused(redis_url):
    from nbqueue.storage.redis import RedisStorage
    store = RedisStorage(redis_url, unique_name("moved"), Signer(SECRET.encode()))
    try:
        a, b = _plant(store, b"call of a"), _plant(store, b"call of b")
        key_a, key_b = store._key(a), store._key(b)
        # someone with write access to the server but not the secret swaps the calls
        store._client.hset(key_a, "payload", store._client.hget(key_b, "payload"))
        got = store.get(a, load=("payload",)).payload
        with pytest.raises(PayloadRejected, match="for another task"):
            nbqueue.serializer.loads(got)
        assert store.get(b, load=("payload",)).payload == b"call of b"   # its own: fine
        memo = store.open_memo()
        memo.set("k1", b"value one", now=100)
        store._client.set(store.prefix + "memo:k2", store._client.get(store.prefix + "memo:k1"))
        assert memo.get("k1", float("inf"), now=101) == (True, b"value one")
        assert memo.get("k2", float("inf"), now=101) == (False, None)   # moved: refused
    finally:
        store.close()

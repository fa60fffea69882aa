"""Shared fixtures for the engine tests.

Queues get a unique name per test: a Queue created again with the same name and
store in the same process takes over the live one.

Task functions for the disk store must be picklable (the disk store validates
the whole call at submit time), so a task that needs to coordinate with the
test cannot close over a ``threading.Event``. Tests use *gates* instead: a
string key names an Event in the registry below; module-level task functions
(pickled by reference) look their gates up by key. Every gate is opened before
the queues of a test are shut down, so a failing test never hangs teardown on a
task that still waits.
"""

import collections
import os
import threading
import time
import uuid

import pytest

import nbqueue

STORES = ("memory", "disk")

def wait_until(predicate, timeout=10, interval=0.002):
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def append_line(path, line):
    """Append ``line`` to the file at ``path`` in one write (O_APPEND: whole lines
    from many processes, none torn): a ledger of what ran where."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path):
    """The lines of the file at ``path``; none if it does not exist yet."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


_GATES = collections.defaultdict(threading.Event)
_GATES_LOCK = threading.Lock()


def gate(key):
    """The Event named ``key`` (created on first use)."""
    with _GATES_LOCK:
        return _GATES[key]


def wait_gate(key, value=None, started=None, timeout=10):
    """A task body: open gate ``started`` (if given), then block until gate ``key`` opens;
    returns ``value``."""
    if started is not None:
        gate(started).set()
    if not gate(key).wait(timeout):
        raise RuntimeError(f"gate {key} was never opened")
    return value


def new_gate_key(prefix="gate"):
    key = f"{prefix}-{uuid.uuid4().hex}"
    gate(key)
    return key


def release_all_gates():
    with _GATES_LOCK:
        events = list(_GATES.values())
        _GATES.clear()
    for ev in events:
        ev.set()


def unique_name(prefix="q"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def queue_threads(name):
    """Live threads that belong to queue ``name``."""
    return [t for t in threading.enumerate() if t.is_alive() and name in t.name]


class QueueFactory:
    """Creates queues on one kind of store and shuts all of them down afterwards."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.tmp_path = tmp_path
        self.created = []
        self._n = 0

    def storage(self, name):
        if self.kind == "memory":
            return "memory"
        return str(self.tmp_path / f"store-{name}")

    def __call__(self, name=None, storage=None, **kwargs):
        name = name or unique_name()
        kwargs.setdefault("workers", 4)
        q = nbqueue.Queue(name, storage=storage or self.storage(name), **kwargs)
        self.created.append(q)
        return q

    def close_all(self):
        release_all_gates()
        for q in reversed(self.created):
            q.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def gates():
    """``gates.new()`` -> key; ``gates[key]`` -> Event. All opened at teardown."""

    class Gates:
        new = staticmethod(new_gate_key)

        def __getitem__(self, key):
            return gate(key)

    yield Gates()
    release_all_gates()


@pytest.fixture(params=STORES, ids=STORES)
def store_kind(request):
    """'memory' or 'disk': the store of ``queue`` and of ``make_queue``'s queues."""
    return request.param


@pytest.fixture
def make_queue(store_kind, tmp_path):
    """A factory for more queues (``start=False``, ``workers=1``, ...) on the same kind
    of store as ``queue``; each gets its own name and directory."""
    factory = QueueFactory(store_kind, tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def queue(store_kind, tmp_path):
    """A started queue with 4 workers, on the memory store and on a diskcache
    directory (ids ``memory`` / ``disk``)."""
    name = unique_name()
    storage = "memory" if store_kind == "memory" else str(tmp_path / "store")
    q = nbqueue.Queue(name, storage=storage, workers=4)
    yield q
    release_all_gates()
    q.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def memory_queue():
    q = nbqueue.Queue(unique_name("mem"), storage="memory", workers=4)
    yield q
    release_all_gates()
    q.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def disk_queue(tmp_path):
    q = nbqueue.Queue(unique_name("disk"), storage=str(tmp_path / "store"), workers=4)
    yield q
    release_all_gates()
    q.shutdown(wait=True, cancel_pending=True)


def iopub_until_idle(kc, msg_id, timeout=120):
    """The iopub messages a kernel sends until the cell ``msg_id`` is idle again
    (messages of other cells on the way included, as a frontend would see them)."""
    msgs = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        msgs.append(msg)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            return msgs


# ---- a real redis-server for the Redis store's tests ----------------------------------
def _redis_server_or_skip():
    """Skip (or, with NBQUEUE_REDIS_TESTS=required as in CI, fail) without redis-server."""
    import redisserver
    missing = []
    if redisserver.redis_server_path() is None:
        missing.append("redis-server is not on the PATH (Debian: apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py is not installed (pip install -e '.[test]')")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("NBQUEUE_REDIS_TESTS") == "required":
            pytest.fail(f"NBQUEUE_REDIS_TESTS=required but {reason}", pytrace=False)
        pytest.skip(reason)
    return redisserver


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One ``redisserver.RedisServer`` for the session (append-only, fsync always), in a
    temporary directory; stopped at the end. A test that stops or kills it gets it back
    through ``redis_url``; a test that restarts it must do so on the same port
    (``restart()``), or use a server of its own."""
    redisserver = _redis_server_or_skip()
    server = redisserver.RedisServer(tmp_path_factory.mktemp("redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session server's URL (``redis://127.0.0.1:PORT/0``), emptied (FLUSHALL) first."""
    if not redis_server.ping():
        if redis_server.running:
            redis_server.kill()
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url

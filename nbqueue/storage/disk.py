"""Durable storage in a diskcache directory, shared safely by threads and processes.

Layout (one queue per directory):

- ``nbqueue:meta``: format version and queue name; marks the directory as ours.
- ``t:<id>``: the task record.
- ``q<priority>-<n>``: a diskcache push/pull FIFO of pending ids per priority;
  ``nbqueue:priorities`` lists the priorities in use, highest first.
- ``nbqueue:etas`` / ``nbqueue:leases``: small maps of waiting and running tasks.
- ``nbqueue:expiries``: when records with ``expires`` may be purged.
- ``nbqueue:jobs``: the periodic jobs; ``nbqueue:scheduler-lock``: which process
  fires them (one scheduler per store).

Every change runs in ``Cache.transact()`` (SQLite ``BEGIN IMMEDIATE``), atomic
across processes. Within a process every access goes through one SQLite
connection behind one lock: threads queue on a cheap lock instead of SQLite's
busy-wait, and the connection's page cache stays warm (with a connection per
thread, as diskcache has by default, each write by one thread throws away the
others' caches, which halved throughput with four workers).
"""

import contextlib
import os
import sqlite3
import stat
import threading
import types

import diskcache

from ..exceptions import NbqueueError
from .base import Storage

FORMAT = 1
META = "nbqueue:meta"
PRIORITIES = "nbqueue:priorities"
ETAS = "nbqueue:etas"
LEASES = "nbqueue:leases"
EXPIRIES = "nbqueue:expiries"
JOBS = "nbqueue:jobs"
SCHEDULER_LOCK = "nbqueue:scheduler-lock"


def prepare_directory(path):
    """Create ``path`` (mode 0700) or check an existing one is ours and private.

    Raises NbqueueError when the directory is owned by someone else or is
    group- or world-writable: the store holds pickles, and loading a pickle
    runs code, so only its owner may write there.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode is masked by the umask
    if not os.path.isdir(path):
        raise NbqueueError(f"store {path!r} is a file, not a directory; give a directory path")
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NbqueueError(
            f"store {path!r} belongs to another user (uid {st.st_uid}); nbqueue loads pickles "
            "from its store, which runs code, so it only uses a directory you own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NbqueueError(
            f"store {path!r} is writable by group or others (mode {stat.filemode(st.st_mode)}); "
            "anyone who can write there could make this process run code. "
            f"Fix it with: chmod 700 {path}")
    return path


class _OneConnectionCache(diskcache.Cache):
    """A diskcache.Cache whose threads share one connection (per process). The
    owner must serialize every use of it (DiskStorage holds ``_mutex``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.close()
        self._local = types.SimpleNamespace()  # instead of threading.local()

    @property
    def _con(self):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked child opens its own
            local.__dict__.pop("con", None)
            local.pid = os.getpid()
        con = getattr(local, "con", None)
        if con is None:
            con = local.con = sqlite3.connect(os.path.join(self._directory, diskcache.core.DBNAME),
                                              timeout=self._timeout, isolation_level=None,
                                              check_same_thread=False)
            try:  # per-connection pragmas, as diskcache sets them
                settings = con.execute("SELECT key, value FROM Settings").fetchall()
            except sqlite3.OperationalError:
                pass
            else:
                for key, value in settings:
                    if key.startswith("sqlite_"):
                        self.reset(key, value, update=False)
        return con


class DiskStorage(Storage):
    """diskcache-backed store; ``directory`` is the diskcache directory itself."""

    shared = True
    serializes = True

    def __init__(self, directory, queue_name):
        super().__init__()
        self.directory = prepare_directory(directory)
        self._mutex = threading.RLock()  # every use of the shared connection
        self._known_priorities = set()   # priorities already in PRIORITIES
        foreign = [f for f in os.listdir(self.directory)
                   if not f.startswith("cache.db") and not _is_diskcache_subdir(self.directory, f)]
        if foreign and not os.path.exists(os.path.join(self.directory, "cache.db")):
            raise NbqueueError(
                f"{self.directory!r} is not an nbqueue store: it holds other files "
                f"({', '.join(sorted(foreign)[:3])}...). Give an empty or new directory.")
        try:
            # Nothing is ever evicted or expires by age in diskcache's sense, so turn
            # culling off: it costs a query on every set.
            self.cache = _OneConnectionCache(self.directory, eviction_policy="none", cull_limit=0,
                                             statistics=False, tag_index=False)
            meta = self.cache.get(META)
            if meta is None:
                with self.cache.transact(retry=True):
                    meta = self.cache.get(META)
                    if meta is None:
                        if len(self.cache):
                            raise NbqueueError(
                                f"{self.directory!r} is a diskcache that nbqueue did not create "
                                "(it has entries but no nbqueue marker); give an empty or new directory")
                        meta = {"format": FORMAT, "queue": queue_name}
                        self.cache.set(META, meta)
        except sqlite3.DatabaseError as err:
            raise NbqueueError(
                f"{self.directory!r} does not hold a readable nbqueue store ({err}); it is corrupt "
                "or not a store. Move it aside and give an empty or new directory.") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise NbqueueError(f"{self.directory!r} holds an nbqueue store of an unknown format "
                               f"({meta!r}); this nbqueue reads format {FORMAT}")
        if meta.get("queue") != queue_name:
            raise NbqueueError(
                f"{self.directory!r} is the store of queue {meta.get('queue')!r}, not {queue_name!r}; "
                f"one queue per directory: use Queue({meta.get('queue')!r}, storage=...) "
                "or another directory")

    def __repr__(self):
        return f"DiskStorage({self.directory!r})"

    @contextlib.contextmanager
    def _txn(self):
        with self._mutex:
            try:
                with self.cache.transact(retry=True):
                    yield
            except BaseException:
                self._known_priorities.clear()  # it may hold one the rollback undid
                raise

    def _read(self, key, default=None):
        with self._mutex:
            return self.cache.get(key, default)

    def get(self, task_id):
        return self._read("t:" + task_id)

    _load = get

    def _save(self, rec):
        self.cache.set("t:" + rec.id, rec)

    def _remove(self, task_id):
        self.cache.delete("t:" + task_id)

    def _push(self, rec):
        if rec.priority not in self._known_priorities:  # the list only grows: skip the read
            priorities = self.cache.get(PRIORITIES, ())
            if rec.priority not in priorities:
                self.cache.set(PRIORITIES, tuple(sorted(priorities + (rec.priority,), reverse=True)))
            self._known_priorities.add(rec.priority)
        self.cache.push(rec.id, prefix=f"q{rec.priority}")

    def _pop(self):
        for priority in self.cache.get(PRIORITIES, ()):
            key, task_id = self.cache.pull(prefix=f"q{priority}")
            if key is not None:
                return task_id
        return None

    def _maybe_pending(self):
        # A read without a write transaction: an idle worker's look costs ~20 us, not
        # a BEGIN IMMEDIATE. Same key range and test as diskcache's pull(prefix=...).
        with self._mutex:
            for priority in self.cache.get(PRIORITIES, ()):
                prefix = f"q{priority}"
                row = self.cache._sql(
                    "SELECT 1 FROM Cache WHERE ? < key AND key < ? AND raw = 1 LIMIT 1",
                    (prefix + "-000000000000000", prefix + "-999999999999999")).fetchone()
                if row is not None:
                    return True
        return False

    def _etas(self):
        return self._read(ETAS, {})

    def _put_etas(self, etas):
        self.cache.set(ETAS, etas)

    def _leases(self):
        return self._read(LEASES, {})

    def _put_leases(self, leases):
        self.cache.set(LEASES, leases)

    def _ids(self):
        with self._mutex:
            return [key[2:] for key in self.cache.iterkeys()
                    if isinstance(key, str) and key.startswith("t:")]

    def _expiries(self):
        return self._read(EXPIRIES, {})

    def _put_expiries(self, expiries):
        self.cache.set(EXPIRIES, expiries)

    def _jobs(self):
        return self._read(JOBS, {})

    def _put_jobs(self, jobs):
        self.cache.set(JOBS, jobs)

    def _lock_state(self):
        return self._read(SCHEDULER_LOCK)

    def _put_lock_state(self, state):
        self.cache.set(SCHEDULER_LOCK, state)

    def close(self):
        with self._mutex:
            self.cache.close()


def queue_name_of(directory):
    """The name of the queue whose store is ``directory``. Raises NbqueueError."""
    path = os.path.abspath(os.path.expanduser(directory))
    if not os.path.exists(os.path.join(path, "cache.db")):
        raise NbqueueError(f"{path!r} is not an nbqueue store (no cache.db); "
                           "give the directory of a queue, like .nbqueue/default")
    prepare_directory(path)  # ownership and permissions first: reading the marker unpickles
    try:
        with diskcache.Cache(path, eviction_policy="none") as cache:
            meta = cache.get(META)
    except sqlite3.DatabaseError as err:
        raise NbqueueError(f"{path!r} does not hold a readable nbqueue store ({err})") from err
    if not isinstance(meta, dict) or "queue" not in meta:
        raise NbqueueError(f"{path!r} is not an nbqueue store (no nbqueue marker)")
    return meta["queue"]


def _is_diskcache_subdir(directory, name):
    # diskcache keeps values over 32 KiB in two-hex-digit subdirectories
    return len(name) == 2 and os.path.isdir(os.path.join(directory, name))

"""Durable storage in a diskcache directory, shared safely by threads and processes.

Layout (one queue per directory):

- ``nbqueue:meta``: format version and queue name; marks the directory as ours.
- ``t:<id>``: the task record.
- ``q<priority>-<n>``: a diskcache push/pull FIFO of pending ids per priority;
  ``nbqueue:priorities`` lists the priorities in use, highest first.
- ``nbqueue:etas`` / ``nbqueue:leases``: small maps of waiting and running tasks.
- ``nbqueue:jobs``: the periodic jobs; ``nbqueue:scheduler-lock``: which process
  fires them (one scheduler per store).

Every change runs in ``Cache.transact()`` (SQLite ``BEGIN IMMEDIATE``), atomic
across processes, behind a thread lock so threads of one process queue on a
cheap lock instead of SQLite's busy-wait.
"""

import contextlib
import os
import sqlite3
import stat
import threading

import diskcache

from ..exceptions import NbqueueError
from .base import Storage

FORMAT = 1
META = "nbqueue:meta"
PRIORITIES = "nbqueue:priorities"
ETAS = "nbqueue:etas"
LEASES = "nbqueue:leases"
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


class DiskStorage(Storage):
    """diskcache-backed store; ``directory`` is the diskcache directory itself."""

    shared = True
    serializes = True

    def __init__(self, directory, queue_name):
        super().__init__()
        self.directory = prepare_directory(directory)
        self._mutex = threading.Lock()
        foreign = [f for f in os.listdir(self.directory)
                   if not f.startswith("cache.db") and not _is_diskcache_subdir(self.directory, f)]
        if foreign and not os.path.exists(os.path.join(self.directory, "cache.db")):
            raise NbqueueError(
                f"{self.directory!r} is not an nbqueue store: it holds other files "
                f"({', '.join(sorted(foreign)[:3])}...). Give an empty or new directory.")
        try:
            self.cache = diskcache.Cache(self.directory, eviction_policy="none",
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
        with self._mutex, self.cache.transact(retry=True):
            yield

    def get(self, task_id):
        return self.cache.get("t:" + task_id)

    _load = get

    def _save(self, rec):
        self.cache.set("t:" + rec.id, rec)

    def _remove(self, task_id):
        self.cache.delete("t:" + task_id)

    def _push(self, rec):
        priorities = self.cache.get(PRIORITIES, ())
        if rec.priority not in priorities:
            self.cache.set(PRIORITIES, tuple(sorted(priorities + (rec.priority,), reverse=True)))
        self.cache.push(rec.id, prefix=f"q{rec.priority}")

    def _pop(self):
        for priority in self.cache.get(PRIORITIES, ()):
            key, task_id = self.cache.pull(prefix=f"q{priority}")
            if key is not None:
                return task_id
        return None

    def _etas(self):
        return self.cache.get(ETAS, {})

    def _put_etas(self, etas):
        self.cache.set(ETAS, etas)

    def _leases(self):
        return self.cache.get(LEASES, {})

    def _put_leases(self, leases):
        self.cache.set(LEASES, leases)

    def _ids(self):
        return [key[2:] for key in self.cache.iterkeys()
                if isinstance(key, str) and key.startswith("t:")]

    def _jobs(self):
        return self.cache.get(JOBS, {})

    def _put_jobs(self, jobs):
        self.cache.set(JOBS, jobs)

    def _lock_state(self):
        return self.cache.get(SCHEDULER_LOCK)

    def _put_lock_state(self, state):
        self.cache.set(SCHEDULER_LOCK, state)

    def close(self):
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

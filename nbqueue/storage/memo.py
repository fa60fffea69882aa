"""Memoized results of ``@q.task(cache=...)``: a value kept by call key.

A store directory keeps them in a ``diskcache.Cache`` in its ``memo/``
subdirectory (public diskcache API only): bounded by ``size_limit`` bytes with
diskcache's own least-recently-used eviction, shared by processes, kept across
restarts. A memory queue keeps them in an in-process LRU of at most
``max_entries`` values, with the same rules. Each entry is ``(stored_at, value)``
so a ``cache=timedelta(...)`` age limit is checked on read.
"""

import collections
import os
import threading
import time

DEFAULT_SIZE_LIMIT = 1 << 30   # bytes, disk
DEFAULT_MAX_ENTRIES = 1024     # values, memory
_MISSING = object()


class MemoryMemo:
    """In-process LRU: values by reference, nothing pickled."""

    def __init__(self, max_entries=DEFAULT_MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, max_age, now=None):
        """``(True, value)`` if ``key`` holds a value stored at most ``max_age``
        seconds ago (inf: any age), else ``(False, None)``. Atomic."""
        now = time.time() if now is None else now
        with self._lock:
            entry = self._entries.get(key, _MISSING)
            if entry is _MISSING or now - entry[0] > max_age:
                return False, None
            self._entries.move_to_end(key)
            return True, entry[1]

    def set(self, key, value, now=None):
        """Keep ``value`` under ``key``, evicting the least recently used beyond the limit."""
        with self._lock:
            self._entries[key] = (time.time() if now is None else now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self):
        """Drop every value; returns how many there were."""
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
        return n

    def close(self):
        pass


class DiskMemo:
    """A diskcache.Cache in ``directory`` (values are the store's encoded bytes)."""

    def __init__(self, directory, size_limit=DEFAULT_SIZE_LIMIT):
        import diskcache
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.cache = diskcache.Cache(directory, size_limit=size_limit,
                                     eviction_policy="least-recently-used")

    def get(self, key, max_age, now=None):
        now = time.time() if now is None else now
        entry = self.cache.get(key, default=None, retry=True)  # marks it recently used
        if entry is None or now - entry[0] > max_age:
            return False, None
        return True, entry[1]

    def set(self, key, value, now=None):
        self.cache.set(key, (time.time() if now is None else now, value), retry=True)

    def clear(self):
        return self.cache.clear(retry=True)

    def close(self):
        self.cache.close()


def open_memo(store):
    """The memo cache beside ``store``: its own if it has one (Redis), on disk for
    a store directory, else in memory."""
    own = getattr(store, "open_memo", None)
    if own is not None:
        return own()
    directory = getattr(store, "directory", None)
    return DiskMemo(os.path.join(directory, "memo")) if directory else MemoryMemo()

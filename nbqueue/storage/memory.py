"""In-process storage: records are Python objects, arguments and values are kept by
reference (nothing is pickled, so unpicklable arguments work). Lost with the process."""

import heapq
import itertools
import threading

from .base import Storage


class MemoryStorage(Storage):
    shared = False
    serializes = False

    def __init__(self):
        super().__init__()
        self._mutex = threading.Lock()
        self._records = {}
        self._queue = []                 # heap of (-priority, seq, task_id)
        self._seq = itertools.count()
        self._eta_map = {}
        self._lease_map = {}
        self._job_map = {}
        self._expiry_map = {}
        self._lock_holder = None

    def __repr__(self):
        return "MemoryStorage()"

    def _txn(self):
        return self._mutex

    def get(self, task_id):
        # The live record: the worker sets the outcome fields before the status,
        # so a reader that sees a finished status also sees its outcome.
        return self._records.get(task_id)

    _load = get

    def _save(self, rec):
        self._records[rec.id] = rec

    def _remove(self, task_id):
        del self._records[task_id]

    def _push(self, rec):
        heapq.heappush(self._queue, (-rec.priority, next(self._seq), rec.id))

    def _pop(self):
        return heapq.heappop(self._queue)[2] if self._queue else None

    def _maybe_pending(self):
        return bool(self._queue)

    def _etas(self):
        return self._eta_map

    def _put_etas(self, etas):
        self._eta_map = etas

    def _leases(self):
        return self._lease_map

    def _put_leases(self, leases):
        self._lease_map = leases

    def _ids(self):
        return list(self._records)

    def _expiries(self):
        return self._expiry_map

    def _put_expiries(self, expiries):
        self._expiry_map = expiries

    def _jobs(self):
        return self._job_map

    def _put_jobs(self, jobs):
        self._job_map = jobs

    def _lock_state(self):
        return self._lock_holder

    def _put_lock_state(self, state):
        self._lock_holder = state

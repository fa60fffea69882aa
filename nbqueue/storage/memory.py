"""In-process storage: records are Python objects, arguments and values are kept by
reference (nothing is pickled, so unpicklable arguments work). Lost with the process.

Everything is guarded by one lock, and every read hands out a copy. Indexes:

- ``_ready``: a heap of ``(-priority, qseq, id)``; ``_etas``: a heap of
  ``(eta, seq, id)``; ``_finished`` and ``_expiries``: heaps for retention.
  Heaps are cleaned lazily: an entry whose record moved on is skipped when met.
- ``_by_status`` / ``_by_name``: sorted sets of ``seq`` (``SeqIndex``) per state and
  per (name, state), so a page
  or a count never walks the history; ``_counts`` is kept as records move.
- ``_running``: the claimed tasks (as many as there are busy workers).
"""

import collections
import heapq
import itertools
import threading
import time
from collections import Counter

from ..exceptions import WorkerLost
from ..serializer import describe_exception
from ..states import (
    FINISHED,
    PENDING,
    RUNNING,
    STATES,
    WAITING,
    check_states,
)
from .base import Storage, check_load, check_progress_fields, check_run_end, not_found
from .memoryjobs import MemoryJobs
from .seqindex import SeqIndex

FRONT = -(1 << 62)   # qseq of recovered tasks: ahead of every normal one
ALIVE_RECHECK = 5.0  # a live holder's lapsed claim is extended by this, then checked again
RETAIN_BATCH = 500   # records retention drops per hold of the lock


class MemoryStorage(MemoryJobs, Storage):
    shared = False
    serializes = False

    def __init__(self):
        super().__init__()
        self._mutex = threading.Lock()
        self._records = {}                   # id -> record
        self._all = SeqIndex()               # every seq, for the unfiltered page
        self._intake = collections.deque()   # batches added, not yet indexed
        self._arrived = {}                   # id -> record of those batches
        self._by_seq = {}                    # seq -> id
        self._by_status = {s: SeqIndex() for s in STATES}
        self._by_name = {}                   # (name, state) -> SeqIndex
        self._counts = Counter()
        self._ready = []
        self._etas = []
        self._finished = []                  # (finished_at, seq, id)
        self._expiries = []                  # (expires_at, seq, id)
        self._expire_later = set()           # expired while unfinished: dropped once finished
        self._running = {}
        self._seq = itertools.count(1)
        self._front = itertools.count(FRONT)
        self._job_map = {}
        self._lock_state = None
        self._workers = {}  # worker id -> info (beat_worker)

    def __repr__(self):
        return "MemoryStorage()"

    # ---- indexes (called with the lock held) ------------------------------
    def _index(self, rec):
        self._records[rec.id] = rec
        self._all.add(rec.seq)
        self._by_seq[rec.seq] = rec.id
        self._by_status[rec.status].add(rec.seq)
        self._name_index(rec.name, rec.status).add(rec.seq)
        self._counts[rec.status] += 1
        if rec.expires_at is not None:
            heapq.heappush(self._expiries, (rec.expires_at, rec.seq, rec.id))
        self._queue(rec)

    def _queue(self, rec, front=False):
        if rec.status == PENDING:
            qseq = next(self._front) if front else rec.seq
            heapq.heappush(self._ready, (-rec.priority, qseq, rec.id))
        elif rec.status in WAITING and rec.eta is not None:
            heapq.heappush(self._etas, (rec.eta, rec.seq, rec.id))
        elif rec.status == RUNNING:
            self._running[rec.id] = rec
        elif rec.status in FINISHED:
            heapq.heappush(self._finished, (rec.finished_at, rec.seq, rec.id))

    def _moved(self, rec, old, front=False):
        """Re-index ``rec`` after its state went from ``old`` to ``rec.status``
        (``front``: a recovered task, ready before the others of its priority)."""
        if old == rec.status:
            return
        self._by_status[old].remove(rec.seq)
        self._by_status[rec.status].add(rec.seq)
        self._unname(rec.name, old, rec.seq)
        self._name_index(rec.name, rec.status).add(rec.seq)
        self._counts[old] -= 1
        self._counts[rec.status] += 1
        if old == RUNNING:
            self._running.pop(rec.id, None)
        self._queue(rec, front)

    def _drop(self, rec):
        del self._records[rec.id]
        self._all.remove(rec.seq)
        del self._by_seq[rec.seq]
        self._by_status[rec.status].remove(rec.seq)
        self._unname(rec.name, rec.status, rec.seq)
        self._counts[rec.status] -= 1
        self._expire_later.discard(rec.id)

    def _name_index(self, name, status):
        index = self._by_name.get((name, status))
        if index is None:
            index = self._by_name[(name, status)] = SeqIndex()
        return index

    def _unname(self, name, status, seq):
        index = self._by_name[(name, status)]
        index.remove(seq)
        if not index:
            del self._by_name[(name, status)]

    def _newest(self, indexes, offset=0):
        """Records newest first across ``indexes`` (SeqIndex), skipping ``offset``."""
        if len(indexes) == 1:
            seqs = indexes[0].newest(offset)
        else:
            seqs = itertools.islice(heapq.merge(*map(reversed, indexes), reverse=True), offset, None)
        return (self._records[self._by_seq[s]] for s in seqs)

    def _after_finish(self, rec):
        """Pipeline: promote or cancel the steps after a finished ``rec``.
        Returns how many became pending (0 or 1)."""
        move = rec.successor_move()
        child = self._records.get(rec.next_id) if move else None
        if move == "promote":
            if child is None or not child.promotable_successor():
                return 0
            old = child.status
            child.promote(rec.result, True)
            self._moved(child, old)
            return 1
        while child is not None:  # a failed or cancelled step cancels every later one
            old = child.status
            if not child.cancel_as_successor(rec, rec.finished_at):
                break
            self._moved(child, old)
            child = self._records.get(child.next_id) if child.next_id else None
        return 0

    def _claim_locked(self, worker, lease, now):
        ready = self._ready
        while ready:
            task_id = heapq.heappop(ready)[2]
            rec = self._records.get(task_id)
            if rec is None or rec.status != PENDING:
                continue  # cancelled or purged while queued
            if rec.expires_at is not None and rec.expires_at <= now:
                rec.cancel(now, "expired before it started")
                self._moved(rec, PENDING)
                self._after_finish(rec)
                continue
            rec.start(worker, now + lease, now)
            self._moved(rec, PENDING)
            return rec.copy()
        return None

    # ---- tasks ---------------------------------------------------------
    def add(self, records):
        # No lock: the records join an intake queue (a deque append, atomic) that the
        # next locked operation moves into the indexes; readers see them at once in
        # ``_arrived``. A submitting thread then never blocks on a lock a worker
        # holds, which under the GIL costs it up to a switch interval (5 ms) each time.
        records = list(records)
        ids = set()
        for rec in records:
            rec.check_new()
            if rec.id in ids or rec.id in self._arrived or rec.id in self._records:
                raise ValueError(f"task id {rec.id!r} is already in the store")
            ids.add(rec.id)
        ready = waiting = 0
        for rec in records:
            rec.seq = next(self._seq)
            ready += rec.status == PENDING
            waiting += rec.eta is not None
        arrived = self._arrived
        for rec in records:
            arrived[rec.id] = rec
        self._intake.append(records)
        if ready:
            self.notify_work(ready)
        if waiting:
            self.notify_eta()

    def _drain(self):
        """Move added records from the intake into the indexes (with the lock held)."""
        intake = self._intake
        while intake:
            for rec in intake.popleft():
                self._index(rec)                   # in _records first...
                self._arrived.pop(rec.id, None)    # ...then out of _arrived: never in neither

    def claim(self, worker, lease, now=None):
        if not self._ready and not self._intake:
            return None  # an idle look costs no lock
        now = time.time() if now is None else now
        with self._mutex:
            self._drain()
            before = self._counts["cancelled"]
            rec = self._claim_locked(worker, lease, now)
            ended = self._counts["cancelled"] != before
        if ended:
            self.notify_done()
        return rec

    def finish_and_claim(self, task_id, worker, status, lease, now=None, **fields):
        check_run_end(status, fields)
        now = time.time() if now is None else now
        released = 0
        with self._mutex:
            self._drain()
            rec = self._records.get(task_id)
            finished = rec is not None and rec.status == RUNNING and rec.worker == worker
            if finished:
                rec.finish(status, now, **fields)  # raises before changing anything
                self._moved(rec, RUNNING)
                released = 1 if status == PENDING else self._after_finish(rec)
            nxt = self._claim_locked(worker, lease, now) if lease is not None else None
            pipeline = finished and rec.next_id is not None
        if finished:
            if status in FINISHED:
                self.notify_done(None if pipeline else task_id)
            elif status != PENDING:
                self.notify_eta()
            if released:
                self.notify_work(released)
        return finished, nxt

    def renew(self, task_ids, worker, lease, now=None):
        now = time.time() if now is None else now
        held = {}
        with self._mutex:
            self._drain()
            for task_id in task_ids:
                rec = self._running.get(task_id)
                if rec is not None and rec.worker == worker:
                    rec.lease_until = now + lease
                    held[task_id] = rec.cancel_requested
        return held

    def requeue_expired(self, now=None, max_recoveries=1, alive=None):
        now = time.time() if now is None else now
        handled = []
        with self._mutex:
            self._drain()
            expired = [rec for rec in self._running.values() if rec.lease_until < now]
        for rec in expired:
            verdict = alive(rec.worker, rec.id) if alive is not None else None
            with self._mutex:
                self._drain()
                if self._running.get(rec.id) is not rec or rec.lease_until >= now:
                    continue
                if verdict:  # alive but not renewing (a C call holding the GIL): keep its claim
                    rec.lease_until = now + ALIVE_RECHECK
                    continue
                handled.append(rec.id)
                why = (f"its worker {rec.worker} died while running it "
                       f"(lease ended {now - rec.lease_until:.1f}s ago)")
                if rec.recoveries < max_recoveries:
                    rec.requeue(f"recovered: {why}")
                    self._moved(rec, RUNNING, front=True)
                else:
                    lost = WorkerLost(f"task {rec.id} ({rec.name}) was lost {rec.recoveries + 1} "
                                      f"times: {why}; giving up")
                    rec.fail_lost(now, str(lost), describe_exception(lost, self.serializes))
                    self._moved(rec, RUNNING)
                    self._after_finish(rec)
        if handled:
            self.notify_work(len(handled))
            self.notify_done()
        return handled

    def promote_due(self, now=None):
        now = time.time() if now is None else now
        if not self._intake and (not self._etas or self._etas[0][0] > now):
            return 0
        moved = 0
        with self._mutex:
            self._drain()
            etas = self._etas
            while etas and etas[0][0] <= now:
                eta, _, task_id = heapq.heappop(etas)
                rec = self._records.get(task_id)
                if rec is None or not rec.waiting or rec.eta != eta:
                    continue  # cancelled, purged or rescheduled meanwhile
                old = rec.status
                rec.promote()
                self._moved(rec, old)
                moved += 1
        if moved:
            self.notify_work(moved)
        return moved

    def next_eta(self):
        with self._mutex:
            self._drain()
            etas = self._etas
            while etas:
                eta, _, task_id = etas[0]
                rec = self._records.get(task_id)
                if rec is not None and rec.waiting and rec.eta == eta:
                    return eta
                heapq.heappop(etas)
        return None

    def cancel(self, task_id, message="cancelled", now=None):
        now = time.time() if now is None else now
        with self._mutex:
            self._drain()
            rec = self._records.get(task_id)
            if rec is None:
                raise not_found(task_id)
            old = rec.status
            moved = rec.cancel(now, message)
            if moved is None:
                return False
            self._moved(rec, old)
            if moved != RUNNING:
                self._after_finish(rec)
            pipeline = rec.next_id is not None
        if moved != RUNNING:
            self.notify_done(None if pipeline else task_id)
        return True

    def get(self, task_id, load=()):
        check_load(load)
        rec = self._records.get(task_id)
        if rec is not None and rec.finished:  # never changed again: no lock to wait for
            return rec.copy()
        with self._mutex:
            self._drain()
            rec = self._records.get(task_id)
            return None if rec is None else rec.copy()

    def status(self, task_id):
        # _arrived first: a record leaves it only once it is in _records
        rec = self._arrived.get(task_id) or self._records.get(task_id)
        return None if rec is None else rec.status

    def update(self, task_id, **fields):
        check_progress_fields(fields)
        with self._mutex:
            self._drain()
            rec = self._running.get(task_id)
            if rec is None:
                return None
            for key, value in fields.items():
                setattr(rec, key, value)
            return rec.cancel_requested

    def counts(self):
        with self._mutex:
            self._drain()
            return {s: self._counts[s] for s in STATES}

    def page(self, status=None, name=None, limit=50, offset=0):
        statuses = STATES if status is None else tuple(dict.fromkeys(check_states(status)))
        with self._mutex:
            self._drain()
            if name is not None:
                indexes = [self._by_name[(name, s)] for s in statuses if (name, s) in self._by_name]
            elif status is not None:
                indexes = [self._by_status[s] for s in statuses]
            else:
                indexes = [self._all]
            recs = self._newest(indexes, offset) if indexes else ()
            return [r.copy() for r in itertools.islice(recs, limit)]

    def find_prefix(self, prefix, limit=2):
        with self._mutex:
            self._drain()
            return list(itertools.islice((i for i in self._records if i.startswith(prefix)), limit))

    def purge(self, older_than=None, statuses=None, now=None):
        now = time.time() if now is None else now
        statuses = FINISHED if statuses is None else set(statuses) & FINISHED
        cutoff = None if older_than is None else now - older_than
        with self._mutex:
            self._drain()
            doomed = [self._records[self._by_seq[s]] for st in statuses for s in reversed(self._by_status[st])]
            doomed = [r for r in doomed if cutoff is None or (r.finished_at or 0) <= cutoff]
            for rec in doomed:
                self._drop(rec)
        return len(doomed)

    def retain(self, keep=None, max_finished=None, now=None):
        # In batches, letting the lock go between them: a flood of finished tasks
        # (15,000 a second) must not stop the workers while thousands are dropped.
        now = time.time() if now is None else now
        batch, total = RETAIN_BATCH, 0
        while batch == RETAIN_BATCH:
            with self._mutex:
                self._drain()
                batch = self._retain_some(keep, max_finished, now, RETAIN_BATCH)
            total += batch
        with self._mutex:
            expiries = self._expiries
            while expiries and expiries[0][0] <= now:
                _, _, task_id = heapq.heappop(expiries)
                self._expire_later.add(task_id)
            for task_id in list(self._expire_later):
                rec = self._records.get(task_id)
                if rec is None:
                    self._expire_later.discard(task_id)
                elif rec.finished:
                    self._drop(rec)
                    total += 1
        return total

    def _retain_some(self, keep, max_finished, now, most):
        """Drop at most ``most`` finished records that ``keep``/``max_finished`` let go."""
        finished, dropped = self._finished, 0
        excess = sum(self._counts[s] for s in FINISHED) - (max_finished or 0)
        while finished and dropped < most:
            at, _, task_id = finished[0]
            old = keep is not None and at < now - keep
            if not old and (max_finished is None or excess <= 0):
                break
            heapq.heappop(finished)
            rec = self._records.get(task_id)
            if rec is not None and rec.finished and rec.finished_at == at:
                self._drop(rec)
                dropped += 1
                excess -= 1
        return dropped

    def trim_runs(self, name, keep):
        with self._mutex:
            self._drain()
            indexes = [self._by_name[(name, s)] for s in FINISHED if (name, s) in self._by_name]
            doomed = list(self._newest(indexes, keep)) if indexes else []
            for rec in doomed:
                self._drop(rec)
        return len(doomed)

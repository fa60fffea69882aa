"""The disk store: one SQLite database (the standard library's ``sqlite3``) per
queue directory, shared safely by threads and processes. ``sqlitedb`` holds its
schema, directory checks, connection and value files; this module the operations."""

import heapq
import os
import time

from ..exceptions import NbqueueError, WorkerLost
from ..records import BULKY
from ..serializer import describe_exception
from ..states import (
    CANCELLED,
    FINISHED,
    PENDING,
    RETRYING,
    RUNNING,
    STATES,
    check_states,
)
from .base import (Signals, Storage, check_progress_fields, check_run_end, new_batch,
                   not_found)
from .sqlitedb import (
    COLS,
    SELECT,
    VALUE_KINDS,
    Big,
    SqliteDatabase,
    prepare_directory,
    snap,
    unlink,
)
from .sqlitejobs import SqliteJobs
from .wakeups import Wakeups

__all__ = ["SqliteStorage", "prepare_directory", "queue_name_of"]

WAKE_ALL = 1 << 16       # a wake-up from another process wakes every waiting worker
BATCH = 500              # records deleted per transaction
FRONT = -(1 << 62)       # qseq of recovered tasks: FRONT + seq, ahead of every normal one
SEQ = COLS.index("seq")
FINISHED_SQL = "('cancelled', 'failed', 'succeeded')"
# The partial indexes, named: without statistics SQLite would rather take (status, seq).
READY = " INDEXED BY tasks_ready WHERE status = 'pending'"
LEASED = " INDEXED BY tasks_lease WHERE status = 'running'"
WAITING_ETA = " INDEXED BY tasks_eta WHERE status IN ('scheduled', 'retrying') AND eta IS NOT NULL"


def queue_name_of(directory):
    """The name of the queue whose store is ``directory``. Raises NbqueueError."""
    path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if not os.path.isdir(path):
        raise NbqueueError(f"{path!r} is not an nbqueue store (no such directory); "
                           "give the directory of a queue, like .nbqueue/default")
    store = SqliteStorage(path, None)  # checks ownership and modes, creates nothing
    store.close()
    return store.queue_name


class SqliteStorage(SqliteJobs, SqliteDatabase, Storage):
    """Durable store in one SQLite database, shared safely by threads and processes.

    Layout of a store directory (one queue per directory; the directory is 0700,
    every file nbqueue makes in it 0600):

    - ``nbqueue.db`` (WAL journal, with its ``-wal`` and ``-shm`` side files):

      - ``tasks``: one row per task, every field a column except the bulky ones.
        ``seq`` (the rowid) is the submit order; ``qseq`` the place in the ready
        queue (``seq``, or below every ``seq`` for a task recovered from a dead
        worker). Partial indexes serve the ready queue, etas, leases, expiry and
        retention; ``(status, seq)`` and ``(name, seq)`` serve pages.
      - ``blobs(key, external, data)``: payload, result and prev (``key`` is
        ``seq * 4`` + 1, 2 or 3), and ``outputs(seq, text)``: kept apart, so a status
        read or a progress flush never touches a big value.
      - ``counts(status, n)``: records per state, kept by triggers in the same
        transaction as every insert, delete and move.
      - ``jobs(name, data)``: pickled JobRecords; ``meta``: format, queue name, the
        seq counter and the scheduler lock.

    - ``values/<id>.<kind>``: values over 1 MiB (a blob row with ``external`` set),
      so a 200 MB result neither bloats the database nor slows other reads.

    Every change is one ``BEGIN IMMEDIATE`` transaction, atomic across processes: an
    ``add`` batch, a run's end with its pipeline successors and the next claim, a
    job's tick with its run. ``purge`` and ``retain`` commit in batches of 500, so
    they never hold the write lock for long. Within a process every access goes
    through one connection behind one lock: threads queue on a cheap lock instead of
    SQLite's busy wait and share one warm page cache; a forked child opens its own.
    """

    shared = True
    serializes = True

    def __init__(self, directory, queue_name, signer=None):
        super().__init__()
        self.signer = signer
        self._open_store(directory, queue_name)
        self._wakeups = Wakeups(self.directory, {
            b"w": lambda: Signals.notify_work(self, WAKE_ALL),
            b"d": lambda: Signals.notify_done(self),
            b"e": lambda: Signals.notify_eta(self),
            b"c": self.notify_cancel})

    # ---- wake-ups: in this process, and a datagram to the others (``wakeups``) ------
    def notify_work(self, n=1):
        super().notify_work(n)
        self._wakeups.send(b"w")

    def notify_done(self, task_id=None):
        super().notify_done(task_id)
        self._wakeups.send(b"d")

    def notify_eta(self):
        super().notify_eta()
        self._wakeups.send(b"e")

    def wait_for_work(self, seen_seq, timeout):
        self._wakeups.listen()
        super().wait_for_work(seen_seq, timeout)

    def wait_done(self, task_id, timeout=None):
        self._wakeups.listen()
        return super().wait_done(task_id, timeout)

    def wait_for_eta(self, seen_seq, timeout):
        self._wakeups.listen()
        super().wait_for_eta(seen_seq, timeout)

    def close(self):
        wakeups = getattr(self, "_wakeups", None)  # None: the open failed
        if wakeups is not None:
            wakeups.close()
        super().close()

    def __repr__(self):
        return f"SqliteStorage({self.directory!r})"

    def _successor(self, t, rec, now):
        """Pipeline: after ``rec`` finished, promote the next step (its ``prev`` is
        ``rec``'s result, copied blob to blob) or cancel every later step.
        Returns how many became pending (0 or 1)."""
        move = rec.successor_move()
        child = self._row(t.con, rec.next_id) if move else None
        if move == "promote":
            if child is None or not child.promotable_successor():
                return 0
            before = snap(child)
            child.promote(prev=None, has_prev=True)
            self._save(t, child, before)
            self._copy_blob(t, rec, "result", child, "prev")
            return 1
        while child is not None:  # a failed or cancelled step cancels every later one
            before = snap(child)
            if not child.cancel_as_successor(rec, now):
                break
            self._save(t, child, before)
            child = self._row(t.con, child.next_id) if child.next_id else None
        return 0

    def _notify_ended(self, ended):
        if ended:
            one = len(ended) == 1 and not ended[0].next_id
            self.notify_done(ended[0].id if one else None)

    # ---- tasks -----------------------------------------------------------------
    def add(self, records):
        records = new_batch(records)
        if not records:
            return
        staged = []
        try:
            for r in records:
                staged.append({k: self._stage(getattr(r, k), r.id, k) for k in VALUE_KINDS
                               if getattr(r, k) is not None})
            def write(t):
                seq = self._take_seq(t.con, len(records))
                for i, (rec, values) in enumerate(zip(records, staged)):
                    self._insert(t, rec, seq + i, values)

            self._join(write)
        finally:
            unlink(v.tmp for values in staged for v in values.values() if isinstance(v, Big))
        ready = sum(r.status == PENDING for r in records)
        if ready:
            self.notify_work(ready)
        if any(r.eta is not None for r in records):
            self.notify_eta()

    def claim(self, worker, lease, now=None):
        # An idle look is a plain read: no write transaction while nothing is pending.
        if self._one("SELECT 1 FROM tasks" + READY + " LIMIT 1") is None:
            return None
        now = time.time() if now is None else now
        with self._txn() as t:
            rec, ended, files = self._claim_in(t, worker, lease, now)
        self._notify_ended(ended)
        if rec is not None:
            self._read_files(rec, files)  # it is ours now: nothing deletes a running task's files
        return rec

    def _claim_in(self, t, worker, lease, now):
        ended = []
        while True:
            row = t.con.execute(SELECT + READY + " ORDER BY priority DESC, qseq LIMIT 1").fetchone()
            if row is None:
                return None, ended, ()
            rec = self._record(row)
            before = snap(rec)
            if rec.expires_at is not None and rec.expires_at <= now:
                rec.cancel(now, "expired before it started")
                self._save(t, rec, before)
                self._successor(t, rec, now)
                ended.append(rec)
                continue
            rec.start(worker, now + lease, now)
            self._save(t, rec, before, lease=lease)
            # output only if an earlier attempt may have left some: one read less per task
            parts = ("payload",) + (("prev",) if rec.has_prev else ()) + (
                ("output",) if rec.attempts > 1 else ())
            return rec, ended, self._load(t.con, rec, parts)

    def finish_and_claim(self, task_id, worker, status, lease, now=None, **fields):
        check_run_end(status, fields)
        now = time.time() if now is None else now
        result = self._stage(fields["result"], task_id, "result") if "result" in fields else None
        finished, released, ended, nxt, files = False, 0, [], None, ()
        try:
            with self._txn() as t:
                rec = self._row(t.con, task_id)
                if rec is not None and rec.status == RUNNING and rec.worker == worker:
                    before = snap(rec)
                    rec.finish(status, now, **fields)
                    # Pending again (RetryTask): back to its submit place, not a recovered one's.
                    again = {"qseq": rec.seq} if status == PENDING else {}
                    self._save(t, rec, before, lease=None, **again)
                    if "result" in fields:  # only a success writes one, once: no old blob
                        self._put_blob(t, rec, "result", result, new=True)
                    if "output" in fields:
                        self._put_output(t, rec.seq, fields["output"])
                    if rec.finished:
                        released += self._successor(t, rec, now)
                        ended.append(rec)
                    released += status == PENDING
                    finished = True
                if lease is not None:
                    nxt, more, files = self._claim_in(t, worker, lease, now)
                    ended += more
        finally:
            if isinstance(result, Big):
                unlink([result.tmp])
        self._notify_ended(ended)
        if finished and status == RETRYING:
            self.notify_eta()
        if released:
            self.notify_work(released)
        if nxt is not None:
            self._read_files(nxt, files)
        return finished, nxt

    def renew(self, task_ids, worker, lease, now=None):
        task_ids = list(task_ids)
        if not task_ids:
            return {}
        now = time.time() if now is None else now
        held = {}
        with self._txn() as t:
            for task_id in task_ids:
                row = t.con.execute("SELECT cancel_requested FROM tasks WHERE id = ? AND "
                                    "status = 'running' AND worker = ?", (task_id, worker)).fetchone()
                if row is not None:
                    t.con.execute("UPDATE tasks SET lease_until = ?, lease = ? WHERE id = ?",
                                  (now + lease, lease, task_id))
                    held[task_id] = bool(row[0])
        return held

    def requeue_expired(self, now=None, max_recoveries=1, alive=None):
        now = time.time() if now is None else now
        first = self._one("SELECT lease_until FROM tasks" + LEASED + " ORDER BY lease_until LIMIT 1")
        if first is None or first[0] >= now:
            return []  # the common case: a plain read, no write transaction
        expired = self._all("SELECT id, worker, lease FROM tasks" + LEASED +
                            " AND lease_until < ? ORDER BY lease_until", (now,))
        # alive() may be slow (it may look at processes): ask before taking the lock.
        verdicts = {(i, w): alive(w, i) for i, w, _ in expired} if alive is not None else {}
        handled, ended, released = [], [], 0
        with self._txn() as t:
            for task_id, worker, lease in expired:
                rec = self._row(t.con, task_id)
                if rec is None or rec.status != RUNNING or rec.worker != worker \
                        or rec.lease_until >= now:
                    continue  # finished or renewed meanwhile
                if verdicts.get((task_id, worker)) is True:  # alive but not renewing: keep its claim
                    t.con.execute("UPDATE tasks SET lease_until = ? WHERE id = ?",
                                  (now + (lease or 30.0), task_id))
                    continue
                before = snap(rec)
                at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.lease_until))
                why = f"its worker {worker} died (lease expired at {at})"
                if rec.recoveries < max_recoveries:
                    rec.requeue(f"recovered: {why}")
                    self._save(t, rec, before, lease=None, qseq=FRONT + self._take_seq(t.con))
                    released += 1
                else:
                    lost = WorkerLost(f"task {task_id} ({rec.name}) was lost {rec.recoveries + 1} "
                                      f"times: {why}; giving up")
                    rec.fail_lost(now, str(lost), describe_exception(lost, True))
                    self._save(t, rec, before, lease=None)
                    self._successor(t, rec, now)
                    ended.append(rec)
                handled.append(task_id)
        if released:
            self.notify_work(released)
        self._notify_ended(ended)
        return handled

    def promote_due(self, now=None):
        now = time.time() if now is None else now
        first = self.next_eta()
        if first is None or first > now:
            return 0
        with self._txn() as t:
            rows = t.con.execute(SELECT + WAITING_ETA + " AND eta <= ? ORDER BY eta", (now,)).fetchall()
            for row in rows:
                rec = self._record(row)
                before = snap(rec)
                rec.promote()
                self._save(t, rec, before, qseq=rec.seq)
        if rows:
            self.notify_work(len(rows))
        return len(rows)

    def next_eta(self):
        row = self._one("SELECT eta FROM tasks" + WAITING_ETA + " ORDER BY eta LIMIT 1")
        return None if row is None else row[0]

    def cancel(self, task_id, message="cancelled", now=None):
        now = time.time() if now is None else now
        with self._txn() as t:
            rec = self._row(t.con, task_id)
            if rec is None:
                raise not_found(task_id)
            had_eta = rec.waiting and rec.eta is not None
            before = snap(rec)
            moved = rec.cancel(now, message)
            if moved is None:
                return False
            self._save(t, rec, before)
            if moved == CANCELLED:
                self._successor(t, rec, now)
        if moved == CANCELLED:
            self._notify_ended([rec])
            if had_eta:
                self.notify_eta()
        else:  # running, maybe in another process: its worker learns of it now
            self._wakeups.send(b"c")
        return True

    def get(self, task_id, load=()):
        load = frozenset((load,) if isinstance(load, str) else load)
        if load - BULKY:
            raise ValueError(f"load={sorted(load - BULKY)}: only {', '.join(sorted(BULKY))} "
                             "are loaded on demand")
        if not load:
            row = self._one(SELECT + " WHERE id = ?", (task_id,))
            return None if row is None else self._record(row)
        with self._snapshot() as con:
            rec = self._row(con, task_id)
            files = () if rec is None else self._load(con, rec, load)
        try:
            self._read_files(rec, files)
        except NbqueueError:
            if self.status(task_id) is None:
                return None  # purged between the read and the file
            raise
        return rec

    def status(self, task_id):
        row = self._one("SELECT status FROM tasks WHERE id = ?", (task_id,))
        return None if row is None else row[0]

    def update(self, task_id, **fields):
        check_progress_fields(fields)
        cols = {k: v for k, v in fields.items() if k != "output"}
        with self._txn() as t:
            row = t.con.execute("SELECT seq, cancel_requested FROM tasks WHERE id = ? AND "
                                "status = 'running'", (task_id,)).fetchone()
            if row is None:
                return None
            if cols:
                t.con.execute(f"UPDATE tasks SET {', '.join(k + ' = ?' for k in cols)} WHERE seq = ?",
                              (*cols.values(), row[0]))
            if "output" in fields:
                self._put_output(t, row[0], fields["output"])
        return bool(row[1])

    def counts(self):
        counts = dict.fromkeys(STATES, 0)
        counts.update((s, n) for s, n in self._all("SELECT status, n FROM counts") if s in counts)
        return counts

    def page(self, status=None, name=None, limit=50, offset=0):
        statuses = None if status is None else tuple(dict.fromkeys(check_states(status)))
        if name is None and statuses is None:
            return [self._record(r) for r in self._all(SELECT + " ORDER BY seq DESC LIMIT ? OFFSET ?",
                                                 (-1 if limit is None else limit, offset))]
        # One indexed range per state ((status, seq) or (name, status, seq)), each read at
        # most offset + limit rows deep and merged newest first: O(log N + page).
        if name is None:
            sql, params = SELECT + " INDEXED BY tasks_status WHERE status = ?", [(s,) for s in statuses]
        else:
            sql = SELECT + " INDEXED BY tasks_name WHERE name = ? AND status = ?"
            params = [(name, s) for s in statuses or STATES]
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        if len(params) == 1:
            rows = self._all(sql, (*params[0], -1 if limit is None else limit, offset))
        else:
            top = -1 if limit is None else offset + limit
            with self._snapshot() as con:
                runs = [con.execute(sql, (*p, top, 0)).fetchall() for p in params]
            rows = list(heapq.merge(*runs, key=lambda r: r[SEQ], reverse=True))
            rows = rows[offset:None if limit is None else offset + limit]
        return [self._record(r) for r in rows]

    def find_prefix(self, prefix, limit=2):
        rows = self._all("SELECT id FROM tasks WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                         (prefix, prefix + "\U0010ffff", -1 if limit is None else limit))
        return [r[0] for r in rows]

    def _delete_batches(self, sql, params, budget=None):
        """Delete the finished records that ``sql`` (``SELECT seq, id ... LIMIT ?``)
        finds, a batch per transaction. ``budget(con)``: how many more may go. Looks
        with a plain read first, so a pass with nothing due writes nothing."""
        total = 0
        while True:
            with self._guard():
                con = self._connection()
                if (budget is not None and budget(con) <= 0) or \
                        con.execute(sql, (*params, 1)).fetchone() is None:
                    return total
            with self._txn() as t:
                n = BATCH if budget is None else min(BATCH, budget(t.con))
                rows = t.con.execute(sql, (*params, n)).fetchall() if n > 0 else []
                if not rows:
                    return total
                for seq, task_id in rows:
                    t.after += self._files_of(t.con, task_id, seq)  # unlinked after the commit
                total += t.con.executemany("DELETE FROM tasks WHERE seq = ? AND finished_at IS NOT NULL",
                                           ((seq,) for seq, _ in rows)).rowcount

    def purge(self, older_than=None, statuses=None, now=None):
        statuses = sorted(FINISHED if statuses is None else set(check_states(statuses)) & FINISHED)
        now = time.time() if now is None else now
        if older_than is None:
            return sum(self._delete_batches("SELECT seq, id FROM tasks INDEXED BY tasks_status "
                                            "WHERE status = ? LIMIT ?", (s,)) for s in statuses)
        if not statuses:
            return 0
        return self._delete_batches(
            "SELECT seq, id FROM tasks INDEXED BY tasks_finished WHERE finished_at IS NOT NULL AND "
            f"finished_at <= ? AND status IN ({', '.join('?' * len(statuses))}) LIMIT ?",
            (now - older_than, *statuses))

    def retain(self, keep=None, max_finished=None, now=None):
        now = time.time() if now is None else now
        oldest = "SELECT seq, id FROM tasks INDEXED BY tasks_finished WHERE finished_at IS NOT NULL "
        total = 0
        if keep is not None:
            total += self._delete_batches(oldest + "AND finished_at < ? LIMIT ?", (now - keep,))
        total += self._delete_batches(
            "SELECT seq, id FROM tasks INDEXED BY tasks_expires WHERE expires_at IS NOT NULL AND "
            "finished_at IS NOT NULL AND expires_at <= ? LIMIT ?", (now,))
        if max_finished is not None:
            def excess(con):
                sql = f"SELECT sum(n) FROM counts WHERE status IN {FINISHED_SQL}"
                (n,) = con.execute(sql).fetchone()
                return (n or 0) - max_finished
            total += self._delete_batches(oldest + "ORDER BY finished_at LIMIT ?", (), excess)
        return total

    def trim_runs(self, name, keep):
        # The keep-th newest finished run, from the newest ``keep`` of each finished
        # state ((name, status, seq) index); the finished ones before it go.
        below = 1 << 62  # above every seq
        if keep > 0:
            sql = "SELECT seq FROM tasks INDEXED BY tasks_name WHERE name = ? AND status = ? " \
                  "ORDER BY seq DESC LIMIT ?"
            with self._snapshot() as con:
                newest = sorted((seq for st in sorted(FINISHED)
                                 for (seq,) in con.execute(sql, (name, st, keep))), reverse=True)
            if len(newest) < keep:
                return 0
            below = newest[keep - 1]
        return self._delete_batches("SELECT seq, id FROM tasks INDEXED BY tasks_name WHERE name = ? "
                                    f"AND status IN {FINISHED_SQL} AND seq < ? LIMIT ?", (name, below))

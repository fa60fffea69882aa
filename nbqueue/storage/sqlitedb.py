"""The SQLite store's database and directory (``SqliteStorage`` is in ``sqlite``):
the schema, the trust checks on the directory and its files, one connection per
process behind one lock, transactions, rows to records and back, and the files
under ``values/`` that hold big values."""

import collections
import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading

from ..exceptions import NbqueueError
from ..signing import blob_context
from ..states import STATES
from .checkpointer import BACKSTOP_PAGES, Checkpointer
from .sqliterows import COLS, INSERT, SELECT, record, row_values, snap  # noqa: F401 (re-exported)
from .storedir import (DB, VALUES, Big, WriteLock, check_files, check_private, damaged,
                       prepare_directory, survey, unlink)

FORMAT = 2
WORKERS_TABLE = "CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info TEXT NOT NULL)"
BIG = 1 << 20            # values over this go to files under values/
BUSY_TIMEOUT = 60.0
JOIN_WAIT = 0.002        # an add waits this long for another thread's commit, then tries itself      # other processes share the file
VALUE_KINDS = ("payload", "result", "prev")
KIND = {"payload": 1, "result": 2, "prev": 3}   # blobs.key = seq * 4 + KIND[kind]


# ``seq`` is the rowid, so every index on (x) is in effect on (x, seq), and the blob
# and output rows of a task are found from its seq without an index of their own.
# Numeric columns without a declared type keep ints ints and floats floats.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS tasks (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, qseq INTEGER NOT NULL,
        name TEXT NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL,
        created_at, eta, expires_at, started_at, finished_at, attempts INTEGER, retries INTEGER,
        retries_used INTEGER, recoveries INTEGER, retry_delay, retry_backoff, timeout,
        has_prev INTEGER, next_id TEXT, worker TEXT, lease_until, lease, cancel_requested INTEGER,
        progress_done, progress_total, progress_message TEXT, error BLOB, message TEXT,
        cache_key TEXT, cached INTEGER)""",
    "CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (priority DESC, qseq) WHERE status = 'pending'",
    "CREATE INDEX IF NOT EXISTS tasks_eta ON tasks (eta) "
    "WHERE status IN ('scheduled', 'retrying') AND eta IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE status = 'running'",
    # Finished records only: an unfinished one past its expiry is claim's to cancel,
    # and must not be walked over by every retention pass until then.
    "CREATE INDEX IF NOT EXISTS tasks_expires ON tasks (expires_at) "
    "WHERE expires_at IS NOT NULL AND finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status)",   # (status, seq)
    # (name, status, seq): a page of one name in some states, and a job's history
    # trim, read only what they return (a state change moves the entry: one page more).
    "CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name, status)",
    "CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS blobs (key INTEGER PRIMARY KEY, external INTEGER NOT NULL, data BLOB)",
    "CREATE TABLE IF NOT EXISTS outputs (seq INTEGER PRIMARY KEY, text TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, data BLOB NOT NULL)",
    WORKERS_TABLE,
    """CREATE TRIGGER IF NOT EXISTS tasks_added AFTER INSERT ON tasks BEGIN
        UPDATE counts SET n = n + 1 WHERE status = new.status; END""",
    """CREATE TRIGGER IF NOT EXISTS tasks_deleted AFTER DELETE ON tasks BEGIN
        UPDATE counts SET n = n - 1 WHERE status = old.status;
        DELETE FROM blobs WHERE key BETWEEN old.seq * 4 AND old.seq * 4 + 3;
        DELETE FROM outputs WHERE seq = old.seq; END""",
    """CREATE TRIGGER IF NOT EXISTS tasks_moved AFTER UPDATE OF status ON tasks
        WHEN old.status IS NOT new.status BEGIN
        UPDATE counts SET n = n - 1 WHERE status = old.status;
        UPDATE counts SET n = n + 1 WHERE status = new.status; END""",
]
OBJECTS = frozenset(re.search(r"EXISTS (\w+)", sql).group(1) for sql in SCHEMA) - {"workers"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")


class Txn:
    __slots__ = ("con", "after", "undo", "joined")

    def __init__(self, con):
        self.con, self.after, self.undo = con, [], []   # files to unlink after commit / rollback
        self.joined = []                                # adds carried by this transaction


class Join:
    """An add waiting to be written by whichever transaction comes next."""
    __slots__ = ("write", "done", "error")

    def __init__(self, write):
        self.write, self.done, self.error = write, threading.Event(), None


class SqliteDatabase:
    """The database half of ``SqliteStorage`` (a mixin: the store operations are there)."""

    def _open_store(self, directory, queue_name):
        """Check, open (or create) the store; ``queue_name`` None: only read its name."""
        self.directory = prepare_directory(directory)
        self._path = os.path.join(self.directory, DB)
        self._values = os.path.join(self.directory, VALUES)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._con = None
        self._forked = []   # a parent's connections: never closed (or freed) in the child
        self._checkpointer = Checkpointer(self._path, BUSY_TIMEOUT)
        self._joins = collections.deque()   # adds waiting for a transaction to carry them
        self._write_lock = WriteLock(self.directory)
        new = survey(self.directory)
        check_files(self.directory)
        if new and queue_name is not None:
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(self._path, 0o600)  # the umask may have taken bits, never added any
        elif new:
            raise NbqueueError(f"{self.directory!r} is not an nbqueue store (no {DB}); "
                               "give the directory of a queue, like .nbqueue/default")
        try:
            # One opener at a time: two processes making a store at once would race
            # the schema and the switch to WAL (which SQLite may refuse as busy).
            with self._guard(), self._write_lock:
                self.queue_name = self._check_schema(queue_name)
        except BaseException:
            self.close()
            raise

    def _check_schema(self, queue_name):
        con = self._connection()
        for side in (self._path + "-wal", self._path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(side, 0o600)
        names = {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
        if "meta" not in names and queue_name is not None:
            self._create(con, queue_name)
            names = {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
        if "meta" not in names:
            raise damaged(self._path, "has lost its tables" if names else "holds no store")
        meta = dict(con.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise NbqueueError(
                f"{self.directory!r} holds an nbqueue store of format {meta.get('format')!r}; this "
                f"nbqueue reads format {FORMAT}. Use the nbqueue that wrote it, or a new directory")
        if queue_name is not None and meta.get("queue") != queue_name:
            raise NbqueueError(
                f"{self.directory!r} is the store of queue {meta.get('queue')!r}, not {queue_name!r}; "
                f"one queue per directory: use Queue({meta.get('queue')!r}, storage=...) "
                "or another directory")
        if "workers" not in names:  # a store made before the worker registry
            con.execute(WORKERS_TABLE)
        if OBJECTS - names or "queue" not in meta:
            lost = ", ".join(sorted(OBJECTS - names)) or "its queue name"
            raise damaged(self._path, f"has lost {lost}")
        # Every page's structure, once per open (60 ms for 100,000 records): garbage in
        # the middle of the file is found here, before anything is written into it.
        (verdict,) = con.execute("PRAGMA quick_check(1)").fetchone()
        if verdict != "ok":
            raise damaged(self._path, f"fails SQLite's check ({verdict})")
        return meta["queue"]

    def _create(self, con, queue_name):
        con.execute("BEGIN IMMEDIATE")
        try:
            names = {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
            if "meta" not in names:  # another process may have made it meanwhile
                if names or os.path.isdir(self._values):
                    raise damaged(self._path, "has lost its tables")
                for sql in SCHEMA:
                    con.execute(sql)
                con.executemany("INSERT INTO meta VALUES (?, ?)", (
                    ("format", FORMAT), ("queue", queue_name), ("seq", 0),
                    ("lock_holder", None), ("lock_until", None)))
                con.executemany("INSERT INTO counts VALUES (?, 0)", ((s,) for s in STATES))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        # values/ only once the schema is committed: values/ beside an empty database
        # then means the database was lost, never a store half made.
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._values, 0o700)
            os.chmod(self._values, 0o700)

    # ---- connection, transactions, errors --------------------------------------------
    def _connection(self):
        if self._con is None:
            con = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                  check_same_thread=False, cached_statements=256)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run in a thread of their own (``checkpointer``); this one
            # is a backstop only.
            con.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            self._con = con
        return self._con

    def _lock_here(self):
        """This process's lock. A forked child makes its own lock and, on first use, its
        own connection: the parent's may have been in use by another thread."""
        if self._pid != os.getpid():
            self._forked.append(self._con)
            self._con, self._lock, self._pid = None, threading.RLock(), os.getpid()
            self._joins = collections.deque()  # the parent's waiting adds are not ours
        return self._lock

    @contextlib.contextmanager
    def _guard(self):
        """The lock, and any database error as an NbqueueError that says what to do."""
        with self._lock_here():
            try:
                yield
            except sqlite3.DatabaseError as err:
                text = str(err).lower()
                if isinstance(err, sqlite3.OperationalError):
                    if "locked" in text or "busy" in text:
                        raise
                    if any(w in text for w in ("full", "i/o", "readonly", "unable to open")):
                        raise NbqueueError(
                            f"cannot use the store database {self._path!r}: {err}") from err
                raise damaged(self._path, f"cannot be read ({type(err).__name__}: {err})") from err

    @contextlib.contextmanager
    def _txn(self):
        with self._guard():
            con = self._connection()
            t = Txn(con)
            self._write_lock.acquire()
            try:
                con.execute("BEGIN IMMEDIATE")
                yield t
                carried = self._carry(t)
                con.execute("COMMIT")
                self._checkpointer.committed()
            except BaseException:
                if con.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # keep the first error
                        con.execute("ROLLBACK")
                unlink(t.undo)
                self._joins.extendleft(reversed(t.joined))  # not written: their owners retry
                raise
            finally:
                self._write_lock.release()
        unlink(t.after)
        for join in carried:
            join.done.set()

    def _carry(self, t):
        """Write the adds waiting to join a transaction into this one, each under a
        savepoint of its own (one that fails is undone alone and told why)."""
        joins, carried = self._joins, []
        while joins:
            try:
                join = joins.popleft()
            except IndexError:
                break
            t.joined.append(join)
            t.con.execute("SAVEPOINT joined")
            files = len(t.undo)
            try:
                join.write(t)
            except sqlite3.Error:
                raise  # the database's trouble, not the add's: the whole transaction fails
            except Exception as err:  # a bad add (a duplicate id): its owner raises it
                t.con.execute("ROLLBACK TO joined")
                unlink(t.undo[files:])
                del t.undo[files:]
                join.error = err
            t.con.execute("RELEASE joined")
            carried.append(join)
        return carried

    def _join(self, write):
        """Run ``write(t)`` in a write transaction: this thread's own, or, while another
        thread holds the lock, that thread's (group commit: one commit for both, and
        the caller never queues behind a worker for the lock). Raises what ``write``
        raised, and what the transaction raised."""
        join = Join(write)
        self._joins.append(join)
        lock = self._lock_here()
        # The lock free: commit now. Taken: a writer's commit may carry this add within
        # JOIN_WAIT; if none did (the holder only reads), wait for the lock after all.
        if lock.acquire(blocking=False) or not join.done.wait(JOIN_WAIT) and lock.acquire():
            try:
                if not join.done.is_set():
                    with self._txn():
                        pass  # the commit carries the waiting adds, ours included
            except BaseException:
                with contextlib.suppress(ValueError):  # raised to our caller: never written later
                    self._joins.remove(join)
                raise
            finally:
                lock.release()
        if join.error is not None:
            raise join.error

    @contextlib.contextmanager
    def _snapshot(self):
        """Several reads that see one state of the store (a WAL read transaction)."""
        with self._guard():
            con = self._connection()
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")

    def _one(self, sql, params=()):
        with self._guard():
            return self._connection().execute(sql, params).fetchone()

    def _all(self, sql, params=()):
        with self._guard():
            return self._connection().execute(sql, params).fetchall()

    def close(self):
        self._checkpointer.stop()
        with self._lock_here():
            if self._con is not None:
                self._con.close()
            self._con = None
            self._write_lock.close()

    # ---- rows (inside a transaction) --------------------------------------------------
    def _take_seq(self, con, n=1):
        (last,) = con.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        con.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (last + n,))
        return last + 1

    def _row(self, con, task_id):
        row = con.execute(SELECT + " WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else self._record(row)

    def _save(self, t, rec, before, **extra):
        """Write the columns ``rec``'s move changed (and ``extra`` table-only ones)."""
        after = row_values(snap(rec), self.signer)
        sets = {c: v for c, v, old in zip(COLS, after, row_values(before, self.signer)) if v != old}
        sets.update(extra)
        if sets:
            t.con.execute(f"UPDATE tasks SET {', '.join(k + ' = ?' for k in sets)} WHERE seq = ?",
                          (*sets.values(), rec.seq))

    def _insert(self, t, rec, seq, values):
        rec.seq = seq
        try:
            t.con.execute(INSERT, (*row_values(snap(rec), self.signer), seq))
        except sqlite3.IntegrityError as err:
            if "tasks.id" not in str(err):
                raise
            raise ValueError(f"task id {rec.id!r} is already in the store") from None
        for kind, value in values.items():
            self._put_blob(t, rec, kind, value, new=True)
        if rec.output:
            self._put_output(t, rec.seq, rec.output)

    def _put_output(self, t, seq, text):
        t.con.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?)", (seq, text or ""))

    # ---- values ------------------------------------------------------------------
    def _file(self, task_id, kind):
        name = task_id if _SAFE_NAME.fullmatch(task_id) else hashlib.sha256(task_id.encode()).hexdigest()
        return os.path.join(self._values, f"{name}.{kind}")

    def _stage(self, value, task_id, kind):
        """``kind`` of ``task_id`` as stored (signed if there is a secret); a big value
        is written to a temp file now, before the write lock is taken."""
        if value is None or isinstance(value, (str, int, float)):
            return value
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"the SQLite store keeps values as bytes (nbqueue.serializer), "
                            f"not {type(value).__name__}")
        if self.signer is not None:
            value = self.signer.sign(value, blob_context(kind, task_id))
        if len(value) <= BIG:
            return bytes(value)
        if not os.path.isdir(self._values):  # deleted by hand: made again, private
            os.makedirs(self._values, 0o700, exist_ok=True)
            os.chmod(self._values, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self._values, prefix=".tmp-")   # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
        except BaseException:
            unlink([tmp])
            raise
        return Big(tmp)

    def _put_blob(self, t, rec, kind, value, new=False):
        path, key = self._file(rec.id, kind), rec.seq * 4 + KIND[kind]
        old = None if new else t.con.execute(
            "SELECT external FROM blobs WHERE key = ?", (key,)).fetchone()
        if isinstance(value, Big):
            # Renamed into place only now, with the write lock held: a worker that lost
            # its claim never replaces the file of the run that took it over.
            os.replace(value.tmp, path)
            t.undo.append(path)
            t.con.execute("INSERT OR REPLACE INTO blobs VALUES (?, 1, NULL)", (key,))
            return
        if old is not None and old[0]:
            t.after.append(path)
        if value is not None:
            t.con.execute("INSERT OR REPLACE INTO blobs VALUES (?, 0, ?)", (key, value))
        elif old is not None:
            t.con.execute("DELETE FROM blobs WHERE key = ?", (key,))

    def _copy_blob(self, t, src, src_kind, dst, dst_kind):
        """``src``'s value of ``src_kind`` becomes ``dst``'s ``dst_kind`` (records)."""
        row = t.con.execute("SELECT external, data FROM blobs WHERE key = ?",
                            (src.seq * 4 + KIND[src_kind],)).fetchone()
        if row is None:
            return
        if row[0]:  # a hard link, not a copy of a big value; each name is unlinked on its own
            src_path, dst_path = self._file(src.id, src_kind), self._file(dst.id, dst_kind)
            unlink([dst_path])
            try:
                os.link(src_path, dst_path)
            except OSError:
                fd, tmp = tempfile.mkstemp(dir=self._values, prefix=".tmp-")
                with os.fdopen(fd, "wb") as out, open(src_path, "rb") as f:
                    shutil.copyfileobj(f, out)
                os.replace(tmp, dst_path)
            t.undo.append(dst_path)
        t.con.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)",
                      (dst.seq * 4 + KIND[dst_kind], *row))

    def _load(self, con, rec, load):
        """Load the inline bulky parts named in ``load``; returns the (kind, path) of
        files to read once the lock is let go (a 200 MB read must not hold others up)."""
        files = []
        for kind in VALUE_KINDS:
            if kind in load:
                row = con.execute("SELECT external, data FROM blobs WHERE key = ?",
                                  (rec.seq * 4 + KIND[kind],)).fetchone()
                if row is not None and row[0]:
                    files.append((kind, self._file(rec.id, kind)))
                elif row is not None:
                    setattr(rec, kind, self._opened(row[1], rec.id, kind))
        if "output" in load:
            row = con.execute("SELECT text FROM outputs WHERE seq = ?", (rec.seq,)).fetchone()
            rec.output = "" if row is None else row[0]
        return files

    def _record(self, row):
        return record(row, self.signer)

    def _opened(self, blob, task_id, kind):
        """A stored value checked against the secret: its bytes, or ``signing.Rejected``."""
        return blob if self.signer is None else self.signer.open(blob, kind, blob_context(kind, task_id))

    def _files_of(self, con, task_id, seq):
        """The value files of a record about to be deleted."""
        return [self._file(task_id, VALUE_KINDS[key % 4 - 1]) for (key,) in con.execute(
            "SELECT key FROM blobs WHERE key BETWEEN ? AND ? AND external = 1", (seq * 4, seq * 4 + 3))]

    def _read_files(self, rec, files):
        for kind, path in files:
            try:
                with open(path, "rb") as f:
                    check_private(path, os.fstat(f.fileno()), "600")
                    setattr(rec, kind, self._opened(f.read(), rec.id, kind))
            except FileNotFoundError:
                raise NbqueueError(f"the {kind} of task {rec.id} is missing: its file {path!r} was "
                                   "deleted by something other than nbqueue") from None

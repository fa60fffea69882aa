"""The SQLite store's periodic jobs, scheduler lock and worker registry (a mixin
of ``SqliteStorage``): one ``jobs`` row per job (the JobRecord pickled), the
lock in ``meta``, one ``workers`` row per registered worker (JSON)."""

import json
import pickle
import time

from .. import serializer
from ..records import UNREADABLE, JobRecord
from ..signing import context
from ..states import PENDING
from .base import check_job_fields
from .sqlitedb import VALUE_KINDS, Big, unlink


def _load_job(name, data, signer=None):
    """The stored job, or a paused stand-in saying why it cannot be read (written by
    another version, damaged, unsigned or forged): one bad job never breaks the
    others or a dashboard, and a planted one never runs."""
    try:
        return serializer.loads(data if signer is None else
                                signer.open(data, "periodic job", context("job", name)))
    except Exception as err:
        return JobRecord(name=name, schedule=UNREADABLE, paused=True, errors=1,
                         last_error=f"the stored job could not be read ({type(err).__name__}: "
                                    f"{err}); define it again to replace it")


class SqliteJobs:
    def _job(self, con, name):
        row = con.execute("SELECT data FROM jobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else _load_job(name, row[0], self.signer)

    def _put(self, t, job):
        data = pickle.dumps(job)
        t.con.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)",
                      (job.name, data if self.signer is None else
                       self.signer.sign(data, context("job", job.name))))

    def jobs(self):
        return {name: _load_job(name, data, self.signer) for name, data in self._all("SELECT name, data FROM jobs")}

    def get_job(self, name):
        with self._guard():
            return self._job(self._connection(), name)

    def put_job(self, job):
        with self._txn() as t:
            old = self._job(t.con, job.name)
            if old is not None:
                job.take_over(old)
            self._put(t, job)
        self.notify_eta()
        return job

    def update_job(self, name, **fields):
        check_job_fields(fields)
        with self._txn() as t:
            job = self._job(t.con, name)
            if job is None:
                return None
            for key, value in fields.items():
                setattr(job, key, value)
            self._put(t, job)
        self.notify_eta()
        return job

    def remove_job(self, name):
        with self._txn() as t:
            found = t.con.execute("DELETE FROM jobs WHERE name = ?", (name,)).rowcount > 0
        if found:
            self.notify_eta()
        return found

    def fire_job(self, name, due, next_run, run=None, **increments):
        values = {}
        if run is not None:
            run.check_new()
            values = {k: self._stage(getattr(run, k), run.id, k) for k in VALUE_KINDS
                      if getattr(run, k) is not None}
        try:
            with self._txn() as t:
                job = self._job(t.con, name)
                if job is None or (due is not None and job.next_run != due):
                    return False
                if due is not None:
                    job.next_run = next_run
                for key, n in increments.items():
                    setattr(job, key, getattr(job, key) + n)
                if run is not None:
                    self._insert(t, run, self._take_seq(t.con), values)
                    job.last_run_id = run.id
                self._put(t, job)
        finally:
            unlink(v.tmp for v in values.values() if isinstance(v, Big))
        if run is not None and run.status == PENDING:
            self.notify_work()
        self.notify_eta()
        return True

    def _holder(self, con):
        state = dict(con.execute("SELECT key, value FROM meta "
                                 "WHERE key IN ('lock_holder', 'lock_until')"))
        return state.get("lock_holder"), state.get("lock_until")

    def hold_lock(self, holder, ttl, now=None):
        now = time.time() if now is None else now
        with self._guard():
            current, until = self._holder(self._connection())
        if current is not None and current != holder and until > now:
            return False  # another's: decided by a plain read
        with self._txn() as t:
            current, until = self._holder(t.con)
            if current is not None and current != holder and until > now:
                return False
            t.con.executemany("UPDATE meta SET value = ? WHERE key = ?",
                              ((holder, "lock_holder"), (now + ttl, "lock_until")))
        return True

    def release_lock(self, holder):
        with self._txn() as t:
            if self._holder(t.con)[0] == holder:
                t.con.execute("UPDATE meta SET value = NULL WHERE key = 'lock_holder'")

    # ---- the worker registry ---------------------------------------------------
    def beat_worker(self, worker, info, now=None):
        info = dict(info, beat_at=time.time() if now is None else now)
        with self._txn() as t:
            row = t.con.execute("SELECT info FROM workers WHERE id = ?", (worker,)).fetchone()
            if row is not None:
                info = dict(_load_info(row[0]), **info)
            t.con.execute("INSERT OR REPLACE INTO workers VALUES (?, ?)", (worker, json.dumps(info)))
        return info

    def update_worker(self, worker, **fields):
        with self._txn() as t:
            row = t.con.execute("SELECT info FROM workers WHERE id = ?", (worker,)).fetchone()
            if row is None:
                return False
            t.con.execute("UPDATE workers SET info = ? WHERE id = ?",
                          (json.dumps(dict(_load_info(row[0]), **fields)), worker))
        return True

    def remove_worker(self, worker):
        with self._txn() as t:
            return t.con.execute("DELETE FROM workers WHERE id = ?", (worker,)).rowcount > 0

    def registered_workers(self):
        return {w: _load_info(info) for w, info in self._all("SELECT id, info FROM workers")}


def _load_info(text):
    try:
        info = json.loads(text)
    except ValueError:
        return {"unreadable": True}
    return info if isinstance(info, dict) else {"unreadable": True}

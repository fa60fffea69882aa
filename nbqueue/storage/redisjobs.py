"""The Redis store's periodic jobs, scheduler lock and worker registry (a mixin
of ``RedisStorage``).

Jobs live in one hash, each a signed pickled ``JobRecord``. A change reads the
job and writes it back in a WATCH/MULTI transaction, retried if another process
changed the jobs meanwhile: ``fire_job`` adds the run record in the same
transaction, so a tick is handled exactly once across machines. The lock and
the registry are small hashes; registry values are JSON.
"""

import json
import logging
import pickle
import time

from ..signing import context
from .base import check_job_fields
from .redisconn import import_redis

WatchError = import_redis().WatchError

log = logging.getLogger("nbqueue.redis")


class RedisJobs:
    def _jobs_key(self):
        return self.prefix + "jobs"

    def _load_job(self, name, blob):
        """The JobRecord, or None (logged) if its signature fails: a planted job
        must not run, nor stop the others."""
        data = self.signer.open(blob, "periodic job", context("job", name))
        if not isinstance(data, bytes):
            log.error("periodic job %r of queue %r left out: %s", name, self.queue_name, data.reason)
            return None
        return pickle.loads(data)

    def _dump_job(self, job):
        return self.signer.sign(pickle.dumps(job, pickle.HIGHEST_PROTOCOL), context("job", job.name))

    def jobs(self):
        found = {}
        for name, blob in self._client.hgetall(self._jobs_key()).items():
            job = self._load_job(name.decode(), blob)
            if job is not None:
                found[job.name] = job
        return found

    def get_job(self, name):
        blob = self._client.hget(self._jobs_key(), name)
        return None if blob is None else self._load_job(name, blob)

    def _change_job(self, name, change, extra_watch=()):
        """Read job ``name``, let ``change(pipe, job)`` alter it and queue more
        commands, and commit both atomically; retried on a concurrent change.
        Returns ``(what change returned, the replies to its commands)``;
        ``change`` raises to change nothing."""
        key = self._jobs_key()
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, *extra_watch)
                    blob = pipe.hget(key, name)
                    job = None if blob is None else self._load_job(name, blob)
                    pipe.multi()
                    outcome = change(pipe, job)
                    return outcome, pipe.execute()
                except WatchError:
                    continue
                finally:
                    pipe.reset()

    def put_job(self, job):
        def change(pipe, old):
            if old is not None:
                job.take_over(old)
            pipe.hset(self._jobs_key(), job.name, self._dump_job(job))
            pipe.publish(self.prefix + "events:e", "")  # other schedulers look again
            return job
        self._change_job(job.name, change)
        self.notify_eta()
        return job

    def update_job(self, name, **fields):
        check_job_fields(fields)

        def change(pipe, job):
            if job is None:
                return None
            for key, value in fields.items():
                setattr(job, key, value)
            pipe.hset(self._jobs_key(), name, self._dump_job(job))
            pipe.publish(self.prefix + "events:e", "")
            return job
        job = self._change_job(name, change)[0]
        if job is not None:
            self.notify_eta()
        return job

    def remove_job(self, name):
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._jobs_key(), name)
        pipe.publish(self.prefix + "events:e", "")
        found = pipe.execute()[0] == 1
        if found:
            self.notify_eta()
        return found

    def fire_job(self, name, due, next_run, run=None, **increments):
        if run is not None:
            run.check_new()
        watch = () if run is None else (self._key(run.id),)

        def change(pipe, job):
            if job is None or (due is not None and job.next_run != due):
                return False
            if run is not None:
                if self._client.exists(self._key(run.id)):
                    raise ValueError(f"task id {run.id!r} is already in the store")
                job.last_run_id = run.id
            if due is not None:
                job.next_run = next_run
            for key, n in increments.items():
                setattr(job, key, getattr(job, key) + n)
            pipe.hset(self._jobs_key(), name, self._dump_job(job))
            if run is not None:
                self._queue_add(pipe, [run])
            return True
        fired, replies = self._change_job(name, change, watch)
        if fired and run is not None:
            run.seq = replies[-1][0]  # the ADD script's reply: {first seq, eta moved}
            self.notify_work()
        return fired

    # ---- the scheduler lock -------------------------------------------------------
    def hold_lock(self, holder, ttl, now=None):
        now = time.time() if now is None else now
        return self._run("HOLD_LOCK", holder, repr(now + ttl), repr(float(now))) == 1

    def release_lock(self, holder):
        self._run("RELEASE_LOCK", holder)

    # ---- the worker registry --------------------------------------------------------
    def beat_worker(self, worker, info, now=None):
        info = dict(info, beat_at=time.time() if now is None else now)
        key = self.prefix + "w:" + worker
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in info.items()})
        pipe.sadd(self.prefix + "workers", worker)
        pipe.hgetall(key)
        return _decoded(pipe.execute()[-1])

    def update_worker(self, worker, **fields):
        if not fields:
            return bool(self._client.sismember(self.prefix + "workers", worker))
        pairs = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return self._run("UPDATE_WORKER", worker, *pairs) == 1

    def remove_worker(self, worker):
        pipe = self._client.pipeline(transaction=True)
        pipe.srem(self.prefix + "workers", worker)
        pipe.delete(self.prefix + "w:" + worker)
        return pipe.execute()[0] == 1

    def registered_workers(self):
        workers = sorted(w.decode() for w in self._client.smembers(self.prefix + "workers"))
        pipe = self._client.pipeline(transaction=False)
        for worker in workers:
            pipe.hgetall(self.prefix + "w:" + worker)
        return {w: _decoded(info) for w, info in zip(workers, pipe.execute())}


def _decoded(stored):
    return {k.decode(): json.loads(v) for k, v in stored.items()}

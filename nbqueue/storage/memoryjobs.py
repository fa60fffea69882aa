"""The memory store's periodic jobs and scheduler lock (a mixin of ``MemoryStorage``):
JobRecords in a dict, handed out as copies, under the store's one lock."""

import time

from .base import check_job_fields


class MemoryJobs:
    def jobs(self):
        with self._mutex:
            return {name: job.copy() for name, job in self._job_map.items()}

    def get_job(self, name):
        with self._mutex:
            job = self._job_map.get(name)
            return None if job is None else job.copy()

    def put_job(self, job):
        with self._mutex:
            self._drain()
            old = self._job_map.get(job.name)
            if old is not None:
                job.take_over(old)
            self._job_map[job.name] = job.copy()
        self.notify_eta()
        return job

    def update_job(self, name, **fields):
        with self._mutex:
            self._drain()
            job = self._job_map.get(name)
            if job is None:
                return None
            check_job_fields(fields)
            for key, value in fields.items():
                setattr(job, key, value)
            job = job.copy()
        self.notify_eta()
        return job

    def remove_job(self, name):
        with self._mutex:
            self._drain()
            found = self._job_map.pop(name, None) is not None
        if found:
            self.notify_eta()
        return found

    def fire_job(self, name, due, next_run, run=None, **increments):
        with self._mutex:
            self._drain()
            job = self._job_map.get(name)
            if job is None or (due is not None and job.next_run != due):
                return False
            if run is not None:
                run.check_new()
                if run.id in self._records:
                    raise ValueError(f"task id {run.id!r} is already in the store")
            if due is not None:
                job.next_run = next_run
            for key, n in increments.items():
                setattr(job, key, getattr(job, key) + n)
            if run is not None:
                run.seq = next(self._seq)
                self._index(run)
                job.last_run_id = run.id
        if run is not None:
            self.notify_work()
        return True

    def hold_lock(self, holder, ttl, now=None):
        now = time.time() if now is None else now
        with self._mutex:
            self._drain()
            state = self._lock_state
            if state is not None and state[0] != holder and state[1] > now:
                return False
            self._lock_state = (holder, now + ttl)
        return True

    def release_lock(self, holder):
        with self._mutex:
            self._drain()
            if self._lock_state is not None and self._lock_state[0] == holder:
                self._lock_state = None

    # ---- the worker registry (in-process workers only: a memory store is not shared)
    def beat_worker(self, worker, info, now=None):
        with self._mutex:
            stored = self._workers.setdefault(worker, {})
            stored.update(info, beat_at=time.time() if now is None else now)
            return dict(stored)

    def update_worker(self, worker, **fields):
        with self._mutex:
            if worker not in self._workers:
                return False
            self._workers[worker].update(fields)
            return True

    def remove_worker(self, worker):
        with self._mutex:
            return self._workers.pop(worker, None) is not None

    def registered_workers(self):
        with self._mutex:
            return {w: dict(info) for w, info in self._workers.items()}

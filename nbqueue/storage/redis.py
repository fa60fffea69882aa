"""The Redis store: a queue shared by notebooks and workers on many machines.

Each contract operation that changes more than one key is one Lua script
(``redislua``), atomic on the server; reads are single commands or pipelines.
Every key starts with ``nbqueue:{<queue name>}:`` (one hash slot per queue).
Payloads, values and exceptions are signed with HMAC-SHA256 (``signing``):
a Redis store needs ``secret=`` or ``$NBQUEUE_SECRET``, the same in every process.

Wake-ups cross machines through the store's pub/sub channel (``redisconn.Events``):
a submit wakes idle workers everywhere within milliseconds, a finish wakes
``Result.get``. Pub/sub can drop a message while a connection is down, so waiters
also look again at most every ``max_poll`` seconds.

Times are each caller's ``time.time()``: the machines' clocks must agree to well
within a lease (NTP does).
"""

import heapq
import itertools
import time
import uuid

from ..exceptions import WorkerLost
from ..serializer import describe_exception
from ..states import FINISHED, PENDING, STATES, check_states
from .base import Storage, check_load, check_progress_fields, check_run_end, new_batch, not_found
from .rediscodec import CLAIMED, LIGHT, Codec
from .redisconn import Events, connect, safe_url, translating
from .redisjobs import RedisJobs
from .redislua import sources

ALIVE_RECHECK = 5.0  # a live holder's lapsed claim is extended by this, then checked again
BATCH = 500          # records a script moves or deletes at most per call
ADD_CHUNK = 1000     # records one ADD script stores at most (a bigger batch: several)
WAKE_ALL = 1 << 16   # a wake-up from the channel wakes every waiting worker
CONTRACT = ("add", "claim", "finish_and_claim", "renew", "requeue_expired", "promote_due",
            "next_eta", "cancel", "get", "status", "update", "counts", "page", "find_prefix",
            "purge", "retain", "trim_runs", "jobs", "get_job", "put_job", "update_job",
            "remove_job", "fire_job", "hold_lock", "release_lock", "beat_worker",
            "update_worker", "remove_worker", "registered_workers")


def _repr(x):
    return repr(float(x))


@translating(CONTRACT)
class RedisStorage(RedisJobs, Storage):
    """A queue's tasks in a Redis server (``redis://``, ``rediss://`` for TLS,
    ``unix://``), under the key prefix ``nbqueue:{<queue name>}:``.

    Raises StoreUnavailable (a ConnectionError naming the server) from any
    operation while the server cannot be reached; the operation then changed
    nothing, or committed whole (a script runs entirely or not at all).
    """

    shared = True
    serializes = True
    max_poll = 2.0  # pub/sub wakes waiters at once; this is the net under a dropped message

    def __init__(self, url, queue_name, signer):
        super().__init__()
        if signer is None:
            raise ValueError(
                "a Redis store is shared ground and nbqueue signs every payload on it: give "
                "Queue(..., secret='...') or set $NBQUEUE_SECRET, the same in every notebook "
                "and worker (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self.url = url
        self.queue_name = queue_name
        self.prefix = f"nbqueue:{{{queue_name}}}:"
        self._keys = [self.prefix]
        self._codec = Codec(signer)
        self.signer = signer
        self._client = connect(url)
        self._scripts = {name: self._client.register_script(src)
                         for name, src in sources(CLAIMED).items()}
        self._events = Events(self._client, self.prefix + "events:", {
            "w": lambda n: self.notify_work(min(int(n or WAKE_ALL), WAKE_ALL)),
            "d": lambda task: self.notify_done(task.decode() or None),
            "e": lambda _: self.notify_eta(),
            "c": lambda _: self.notify_cancel()})

    def __repr__(self):
        return f"RedisStorage({safe_url(self.url)!r}, {self.queue_name!r})"

    def _run(self, name, *args, client=None):
        return self._scripts[name](keys=self._keys, args=args, client=client)

    def _key(self, task_id):
        return f"{self.prefix}t:{task_id}"

    # ---- wake-ups: the scripts publish them; each process listens to the kinds
    # it waits for (a submitter never hears of work, a worker of finishes)
    def wait_for_work(self, seen_seq, timeout):
        self._events.listen("w")
        super().wait_for_work(seen_seq, timeout)

    def wait_done(self, task_id, timeout=None):
        # Counted as a waiter first, so its finish is published (to waited tasks only).
        self._events.listen("d")
        seq = self.done_seq
        status = self._run("WAIT_ON", task_id)
        if status is None:
            raise not_found(task_id)
        status = status.decode()
        if status in FINISHED:
            return True  # not counted as a waiter
        done = False
        try:
            done = super().wait_done(task_id, timeout, first_look=(seq, status))
            return done
        finally:
            if not done:  # a finish clears the count itself
                try:
                    self._run("UNWAIT", task_id)
                except Exception:  # the server is gone: the count goes with the task
                    pass

    def wait_for_eta(self, seen_seq, timeout):
        self._events.listen("e")
        super().wait_for_eta(seen_seq, timeout)

    def on_cancel(self, fn, add=True):
        super().on_cancel(fn, add)
        if add:
            self._events.listen("c", wait=0)

    def open_memo(self):
        """Memoized results in this server, shared by every machine (``redismemo``)."""
        from .redismemo import RedisMemo
        return RedisMemo(self)

    def close(self):
        self._events.close()
        self._client.close()

    # ---- reading records ----------------------------------------------------------
    def _read(self, task_ids, names=LIGHT):
        """Records of ``task_ids`` (one round trip), None for those gone."""
        pipe = self._client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(self._key(task_id), names)
        return [self._codec.decode(names, values) for values in pipe.execute()]

    def _changes(self, task_id, fields, pairs=(), dels=()):
        """``fields`` of ``task_id`` as the ``[name, text, ...]`` to set and the
        names to delete (those set to None), after ``pairs`` and ``dels``."""
        pairs, dels = list(pairs), list(dels)
        for name, value in fields.items():
            text = self._codec.encode(name, value, task_id)
            if text is None:
                dels.append(name)
            else:
                pairs += (name, text)
        return pairs, dels

    def _claimed(self, values):
        return self._codec.decode(CLAIMED, values) if values else None

    # ---- tasks ------------------------------------------------------------------
    def add(self, records):
        records = new_batch(records)
        if not records:
            return
        if len(records) <= ADD_CHUNK:
            try:
                first, eta_moved = self._queue_add(None, records)
            except Exception as err:
                if str(err).startswith("DUPLICATE "):
                    raise ValueError(f"task id {str(err)[10:]!r} is already in the store") from None
                raise
        else:
            first, eta_moved = self._add_batch(records)
        for i, rec in enumerate(records):
            rec.seq = first + i
        ready = sum(r.status == PENDING for r in records)
        if ready:
            self.notify_work(ready)
        if eta_moved:  # the scheduler sleeps until the earliest eta
            self.notify_eta()

    def _add_batch(self, records):
        """Add many records in ADD_CHUNK-sized scripts inside one MULTI/EXEC, after a
        check that none is stored: all or none, and no script holds the server
        for long (a long one makes every other client's call fail with BUSY)."""
        token = uuid.uuid4().hex
        pipe = self._client.pipeline(transaction=True)
        self._run("CHECK_NEW", token, *(r.id for r in records), client=pipe)
        for i in range(0, len(records), ADD_CHUNK):
            self._queue_add(pipe, records[i:i + ADD_CHUNK], token)
        self._run("END_BATCH", token, client=pipe)
        replies = pipe.execute()
        if replies[0] is not None:
            raise ValueError(f"task id {replies[0].decode()!r} is already in the store")
        return replies[1][0], max(reply[1] for reply in replies[1:-1])

    def _queue_add(self, client, records, batch=""):
        """Run the ADD script for ``records`` on ``client`` (None: at once; or a
        pipeline). Returns ``[first seq, eta moved]`` (at once) or the pipeline."""
        args = [batch, len(records)]
        for rec in records:
            pairs = self._codec.pairs(rec, CLAIMED, skip=("seq",))
            args += (rec.id, rec.name, rec.status, rec.priority,
                     "" if rec.eta is None else _repr(rec.eta),
                     "" if rec.expires_at is None else _repr(rec.expires_at), len(pairs) // 2, *pairs)
        return self._run("ADD", *args, client=client)

    def claim(self, worker, lease, now=None):
        now = time.time() if now is None else now
        return self._claimed(self._run("CLAIM", worker, _repr(now + lease), _repr(now)))

    def finish_and_claim(self, task_id, worker, status, lease, now=None, **fields):
        check_run_end(status, fields)
        now = time.time() if now is None else now
        if status == PENDING:
            fields["eta"] = None
        pairs, dels = self._changes(task_id, fields, ["status", status], ["worker", "lease_until"])
        if status in FINISHED:
            pairs += ("finished_at", _repr(now))
        reply = self._run("FINISH", task_id, worker, status, _repr(now),
                          "" if lease is None else _repr(now + lease),
                          len(pairs) // 2, *pairs, len(dels), *dels)
        finished = reply[0] == 1
        if finished:
            if status in FINISHED:
                self.notify_done()
            elif status == PENDING:
                self.notify_work()
        return finished, self._claimed(reply[1:])

    def renew(self, task_ids, worker, lease, now=None):
        if not task_ids:
            return {}
        now = time.time() if now is None else now
        reply = self._run("RENEW", worker, _repr(now + lease), *task_ids)
        return {reply[i].decode(): reply[i + 1] == b"1" for i in range(0, len(reply), 2)}

    def requeue_expired(self, now=None, max_recoveries=1, alive=None):
        now = time.time() if now is None else now
        handled = []
        while True:
            lapsed = self._client.zrangebyscore(self.prefix + "running", "-inf", f"({_repr(now)}",
                                                start=0, num=BATCH)
            if not lapsed:
                return handled
            args = [_repr(now)]
            pipe = self._client.pipeline(transaction=False)
            for task_id in lapsed:
                pipe.hmget(self._key(task_id.decode()), ("worker", "recoveries", "name", "lease_until"))
            for task_id, (worker, recoveries, name, until) in zip(lapsed, pipe.execute()):
                if worker is None:
                    continue
                args += self._verdict(task_id.decode(), worker.decode(), int(recoveries or 0),
                                      name.decode(), float(until), now, max_recoveries, alive)
            done = [i.decode() for i in self._run("REQUEUE", *args)] if len(args) > 1 else []
            handled += done
            if done:
                self.notify_work(len(done))
                self.notify_done()
            if len(lapsed) < BATCH:
                return handled

    def _verdict(self, task_id, worker, recoveries, name, until, now, max_recoveries, alive):
        """The REQUEUE script's arguments for one lapsed claim."""
        if alive is not None and alive(worker, task_id):  # alive but not renewing: keep its claim
            return [task_id, worker, str(recoveries), "keep", _repr(now + ALIVE_RECHECK), ""]
        why = f"its worker {worker} died while running it (lease ended {now - until:.1f}s ago)"
        if recoveries < max_recoveries:
            return [task_id, worker, str(recoveries), "requeue", "", f"recovered: {why}"]
        lost = WorkerLost(f"task {task_id} ({name}) was lost {recoveries + 1} times: {why}; giving up")
        error = self._codec.encode_error(describe_exception(lost, True), task_id)
        return [task_id, worker, str(recoveries), "lost", error, str(lost)]

    def promote_due(self, now=None):
        now = time.time() if now is None else now
        moved = self._sweep("PROMOTE", _repr(now), BATCH)
        if moved:
            self.notify_work(moved)
        return moved

    def next_eta(self):
        top = self._client.zrange(self.prefix + "etas", 0, 0, withscores=True)
        return top[0][1] if top else None

    def cancel(self, task_id, message="cancelled", now=None):
        now = time.time() if now is None else now
        outcome = self._run("CANCEL", task_id, message, _repr(now))
        if outcome == -1:
            raise not_found(task_id)
        if outcome == 1:
            self.notify_done()
        return outcome > 0

    def get(self, task_id, load=()):
        check_load(load)
        names = LIGHT + tuple(sorted(load)) if load else LIGHT
        return self._codec.decode(names, self._client.hmget(self._key(task_id), names))

    def status(self, task_id):
        status = self._client.hget(self._key(task_id), "status")
        return None if status is None else status.decode()

    def update(self, task_id, **fields):
        check_progress_fields(fields)
        pairs, dels = self._changes(task_id, fields)
        flag = self._run("UPDATE", task_id, len(pairs) // 2, *pairs, *dels)
        return None if flag is None else flag == b"1"

    def counts(self):
        stored = self._client.hgetall(self.prefix + "counts")
        counts = {s: 0 for s in STATES}
        for status, n in stored.items():
            counts[status.decode()] = int(n)
        return counts

    def page(self, status=None, name=None, limit=50, offset=0):
        statuses = STATES if status is None else tuple(dict.fromkeys(check_states(status)))
        if name is not None:
            keys = [f"{self.prefix}n:{s}:{name}" for s in statuses]
        elif status is not None:
            keys = [f"{self.prefix}s:{s}" for s in statuses]
        else:
            keys = [self.prefix + "all"]
        end = -1 if limit is None else offset + limit - 1
        if len(keys) == 1:
            ids = [i.decode() for i in self._client.zrevrange(keys[0], offset, end)]
        else:  # newest first across the sets: each one's newest offset + limit, merged
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.zrevrange(key, 0, end, withscores=True)
            merged = heapq.merge(*pipe.execute(), key=lambda pair: -pair[1])
            stop = None if limit is None else offset + limit
            ids = [i.decode() for i, _ in itertools.islice(merged, offset, stop)]
        return [r for r in self._read(ids) if r is not None]

    def find_prefix(self, prefix, limit=2):
        found = self._client.zrangebylex(self.prefix + "ids", b"[" + prefix.encode(),
                                         b"[" + prefix.encode() + b"\xff", start=0, num=limit)
        return [i.decode() for i in found]

    def purge(self, older_than=None, statuses=None, now=None):
        now = time.time() if now is None else now
        statuses = [s for s in FINISHED if statuses is None or s in statuses]
        cutoff = "+inf" if older_than is None else _repr(now - older_than)
        return self._batches("PURGE", cutoff, BATCH, *statuses) if statuses else 0

    def retain(self, keep=None, max_finished=None, now=None):
        now = time.time() if now is None else now
        dropped = self._sweep("EXPIRE", _repr(now), BATCH)
        if keep is not None:
            dropped += self._batches("PURGE", f"({_repr(now - keep)}", BATCH, *FINISHED)
        if max_finished is not None:
            counts = self.counts()
            excess = sum(counts[s] for s in FINISHED) - max_finished
            while excess > 0:
                n = self._run("TRIM_OLDEST", min(excess, BATCH), BATCH)
                dropped += n
                excess = excess - n if n else 0
        return dropped

    def trim_runs(self, name, keep):
        return self._batches("TRIM_RUNS", name, keep, BATCH)

    def _sweep(self, script, *args):
        """Run a script that returns ``{done, looked at}`` until it looks at less
        than BATCH entries. Returns the sum of ``done``."""
        total = 0
        while True:
            done, looked = self._run(script, *args)
            total += done
            if looked < BATCH:
                return total

    def _batches(self, script, *args):
        """Run a deleting script until it deletes less than BATCH (so Redis is never
        held for long). Returns how many it deleted."""
        total = 0
        while True:
            n = self._run(script, *args)
            total += n
            if n < BATCH:
                return total

"""nbqueue Redis store benchmark: nbqueue on Redis against Huey's RedisHuey, on one server.

    python benchmarks/run.py --redis [--quick] [--json PATH]   (or python benchmarks/redisbench.py)

The default run of ``benchmarks/run.py`` and ``--quick`` run it too (after the
crash test, before the scale benchmark) when ``redis-server`` is on PATH and
the ``redis`` package imports; otherwise they print a note and skip it.

One ``redis-server`` is started for the whole benchmark, on 127.0.0.1 at a free
port, in a temp dir, with ``--save '' --appendonly no`` (nothing written to
disk), and stopped at the end (on error too). Every worker runs in a process of
its own; this process only submits and waits:

- nbqueue: ``Queue(name, storage="redis://127.0.0.1:PORT/DB", secret=...,
  workers=0)`` here, and ``python -m nbqueue worker redis://... --queue NAME -w
  4`` (``NBQUEUE_SECRET`` in its environment), stopped with SIGINT at the end.
  The no-op is shipped by value (cloudpickle): the worker imports nothing of
  this file. Waiting: ``r.get(timeout=60)``.
- huey: ``RedisHuey(name, url=...)`` on another db of the same server, its
  consumer a separate process doing what ``huey_consumer -w 4 -k thread -d
  0.001 -m 0.01`` does (huey's ``ConsumerConfig``, its logger set up the same
  way, then ``create_consumer(**config.values).run()``; polling set for low
  latency, though RedisHuey's workers block on BRPOP for tasks, so those delays
  only matter after an error), stopped with SIGINT. Both workers log at their
  default level, INFO (each writes a line or two per task to its log file). Waiting: ``r.get(blocking=True,
  timeout=60)``. Huey gets its better setting for each measurement: for the
  round trip ``notify_result=True`` (``r.get`` waits on a BLPOP instead of
  polling from 50 ms up: ~0.8 ms instead of ~51 ms here), for throughput the
  default (the result notification costs it about 20% of its throughput here).
  So two consumers are started one after the other, each on its own name.

The task is ``noop()``, returning ``time.time()`` (Huey does not store None);
each worker's first result times its start, then 20 no-ops warm it up.

1. Throughput: N no-op tasks (3,000; 500 with ``--quick``) submitted as fast as
   this thread can, then every result awaited (``run.throughput``); 3 rounds
   alternating nbqueue and RedisHuey (1 with ``--quick``); median tasks/s of each
   and their ratio. Also, for information, nbqueue with the N tasks submitted in
   one ``fn.map`` (one atomic batch) instead of N calls; Huey has no batch submit.
2. Round trip: 300 sequential ``fn().get()`` of the no-op (100 with ``--quick``;
   ``run.round_trips``), each side; p50 and p99 in ms.
3. Scale: a fresh queue in an empty db with its own worker process (``-w 4``):
   the round trip as in 2 and the cost of a submit (``fn()`` one call at a time,
   300 in a row, 100 with ``--quick``; then all awaited), (i) on the empty store
   (only the warm-up and measured tasks), then (ii) after loading it with
   20,000 finished records (``fn.map`` batches of 1,000 no-ops run by the
   worker: real records) and 5,000 tasks scheduled an hour ahead
   (``fn.schedule(delay=3600)`` each). The counts (``q.counts()``) are checked.
   Same sizes with ``--quick``. Reported: p50/p99 of each, loaded / empty.

Targets: nbqueue throughput >= 2x RedisHuey's; nbqueue round trip p50 < 2 ms;
the loaded store's round-trip and submit p50 within 2x of the empty store's.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import cloudpickle

import nbqueue

WORKERS = 4
SECRET = "nbqueue-bench-secret"  # the signing secret of both sides (at least 8 bytes)
NBQ_DB, HUEY_DB, SCALE_DB = 0, 1, 2
FINISHED, SCHEDULED, FILL_BATCH = 20_000, 5_000, 1_000
WARM_UP, START_TIMEOUT, STOP_TIMEOUT = 20, 60.0, 30.0  # tasks; seconds
HERE = os.path.dirname(os.path.abspath(__file__))


def noop():
    return time.time()


if __name__ != "__main__":
    # ship the no-op by value, like a notebook's: the worker imports nothing of this file
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def log(text):
    print(text, file=sys.stderr, flush=True)


def unavailable():
    """Why this benchmark cannot run here, or None if it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (e.g. apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install 'redis>=5')"
    return None


# ---- child processes: the server, the workers ---------------------------------------------

class Child:
    """A child process in a session of its own (a Ctrl+C here does not reach it: the
    ``finally`` blocks stop it), its output in a log file."""

    def __init__(self, what, argv, log_path, env=None, cwd=None):
        self.what, self.log_path = what, log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=cwd, start_new_session=True)

    def tail(self, chars=3000):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]

    def check(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, sig=signal.SIGINT, timeout=STOP_TIMEOUT):
        """Send ``sig``, wait (SIGKILL after ``timeout``): seconds to exit, None if killed."""
        if self.proc.poll() is not None:
            return None
        t0 = time.perf_counter()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
            return time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            log(f"redis: {self.what} still running {timeout:g} s after {sig.name}: killed")
            self.proc.kill()
            return self.proc.wait() and None


class RedisServer:
    """A redis-server of our own on a free port of 127.0.0.1, nothing saved to disk."""

    def __init__(self, directory):
        import redis
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.child = Child("redis-server", [
            shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", directory, "--save", "", "--appendonly", "no", "--daemonize", "no"],
            os.path.join(directory, "redis-server.log"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.version = redis.Redis(port=self.port).info("server")["redis_version"]
                break
            except redis.ConnectionError:
                self.child.check()
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server not answering after {START_TIMEOUT:g} s")
                time.sleep(0.02)

    def url(self, db):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self):
        self.child.stop(signal.SIGTERM, 10)


class Runner:
    """``submit()`` / ``wait(handle)`` like run.py's runners; the tasks run in ``self.child``."""

    child, stop_s = None, None

    def start(self, make_child):
        """Start the worker process and time the first task; on error, close."""
        try:
            self.child = make_child()
            t0 = time.perf_counter()
            self.wait(self.submit())
            self.start_s = time.perf_counter() - t0
        except BaseException:
            self.close()
            raise

    def submit(self):
        return self.fn()

    def wait(self, r):
        try:
            return self.get(r)
        except Exception:
            self.child.check()  # a dead worker: say so, with its output
            raise

    def close(self):
        self.stop_s = self.child and self.child.stop()


class NbqueueRedis(Runner):
    """A submit-only queue on ``url`` and its ``nbqueue worker`` process."""

    label = f"nbqueue (Redis store, worker process -w {WORKERS})"

    def __init__(self, url, name, tmp):
        self.q = nbqueue.Queue(name, storage=url, secret=SECRET, workers=0)
        self.fn = self.q.task(noop)
        self.start(lambda: Child("nbqueue worker", [
            sys.executable, "-m", "nbqueue", "worker", url, "--queue", name, "-w", str(WORKERS)],
            os.path.join(tmp, f"worker-{name}.log"), env={**os.environ, "NBQUEUE_SECRET": SECRET},
            cwd=tmp))

    def get(self, r):
        return r.get(timeout=START_TIMEOUT)

    def close(self):
        try:
            super().close()
        finally:
            self.q.shutdown(wait=True)
            self.q.store.close()


def make_huey(url, name, notify):
    from huey import RedisHuey
    h = RedisHuey(name, url=url, notify_result=notify)
    return h, h.task(name="noop")(noop)


def huey_consumer(url, name, notify):
    """The consumer process, as ``huey_consumer`` runs it (``bin/huey_consumer.py``)."""
    import logging

    from huey.consumer_options import ConsumerConfig
    h, _ = make_huey(url, name, notify)
    config = ConsumerConfig(workers=WORKERS, worker_type="thread", initial_delay=0.001,
                            backoff=1.15, max_delay=0.01)
    config.validate()
    config.setup_logger(logging.getLogger("huey"))  # its default: INFO, 2 lines a task
    h.create_consumer(**config.values).run()


class HueyRedis(Runner):
    label = f"huey RedisHuey (consumer process, {WORKERS} threads)"

    def __init__(self, url, name, tmp, notify):
        self.huey, self.fn = make_huey(url, name, notify)
        code = (f"import sys; sys.path.insert(0, {HERE!r}); import redisbench; "
                f"redisbench.huey_consumer({url!r}, {name!r}, {notify!r})")
        self.start(lambda: Child("huey consumer", [sys.executable, "-c", code],
                                 os.path.join(tmp, f"huey-{name}.log"), cwd=tmp))

    def get(self, r):
        return r.get(blocking=True, timeout=START_TIMEOUT)

    def close(self):
        try:
            super().close()
        finally:
            self.huey.storage.pool.disconnect()


def warm_up(runner):
    for h in [runner.submit() for _ in range(WARM_UP)]:
        runner.wait(h)


# ---- 1 and 2: against RedisHuey -------------------------------------------------------------

def versus(server, tmp, bench, tasks, rounds, round_trips):
    labels = {"nbqueue": NbqueueRedis.label,
              "huey": HueyRedis.label + "; round trip: notify_result=True"}
    out = {"tasks": tasks, "rounds": rounds, "labels": labels,
           "throughput": {"nbqueue": [], "huey": []}, "map_throughput": [], "round_trip": {},
           "start_s": {}, "stop_s": dict.fromkeys(("nbqueue", "huey", "huey notify"))}
    runners = {}

    def start(key, make):
        runners[key] = make()
        out["start_s"][key] = runners[key].start_s
        warm_up(runners[key])

    def stop(key):
        try:
            runners[key].close()
        finally:
            out["stop_s"][key] = runners.pop(key).stop_s

    try:
        log(f"redis: starting an nbqueue worker process (-w {WORKERS}) and a huey consumer...")
        start("nbqueue", lambda: NbqueueRedis(server.url(NBQ_DB), "bench-redis", tmp))
        start("huey", lambda: HueyRedis(server.url(HUEY_DB), "bench_redis", tmp, notify=False))
        for i in range(rounds):
            log(f"redis: throughput, round {i + 1} of {rounds} ({tasks:,} tasks each)...")
            for key in ("nbqueue", "huey"):
                out["throughput"][key].append(bench.throughput(runners[key], tasks))
            out["map_throughput"].append(map_throughput(runners["nbqueue"], tasks))
        stop("huey")
        log("redis: a huey consumer with notify_result=True for the round trips...")
        start("huey notify", lambda: HueyRedis(server.url(HUEY_DB), "bench_redis_notify", tmp,
                                               notify=True))
        log(f"redis: {round_trips} round trips each...")
        for key in ("nbqueue", "huey notify"):
            rt = bench.round_trips(runners[key], round_trips, budget=120.0)
            out["round_trip"][key.split()[0]] = {"n": len(rt), "p50": bench.pct(rt, 50),
                                                 "p99": bench.pct(rt, 99), "max": max(rt)}
    finally:
        for key in list(runners):
            stop(key)
    med = {k: statistics.median(v) for k, v in out["throughput"].items()}
    out["throughput_median"] = med
    out["ratio"] = med["nbqueue"] / med["huey"]
    out["map_median"] = statistics.median(out["map_throughput"])
    out["map_ratio"] = out["map_median"] / med["huey"]
    return out


def map_throughput(runner, n):
    """Like ``run.throughput``, the N tasks submitted in one ``fn.map`` (one atomic
    batch, one script) instead of N calls: what a loop of submits can become."""
    t0 = time.perf_counter()
    for r in runner.fn.map([()] * n):
        runner.wait(r)
    return n / (time.perf_counter() - t0)


# ---- 3: an empty store against a loaded one -------------------------------------------------

def costs(runner, bench, round_trips, submits):
    rt = bench.round_trips(runner, round_trips, budget=120.0)
    spent, handles = [], []
    for _ in range(submits):
        t0 = time.perf_counter()
        handles.append(runner.submit())
        spent.append((time.perf_counter() - t0) * 1e6)
    for h in handles:
        runner.wait(h)
    return {"rt_n": len(rt), "rt_p50": bench.pct(rt, 50), "rt_p99": bench.pct(rt, 99),
            "submit_n": len(spent), "submit_p50_us": bench.pct(spent, 50),
            "submit_p99_us": bench.pct(spent, 99)}


def store_size(runner, server):
    import redis
    client = redis.Redis(port=server.port, db=SCALE_DB)
    counts = {k: v for k, v in runner.q.counts().items() if v}
    return {"counts": counts, "records": sum(counts.values()), "keys": client.dbsize(),
            "used_memory": client.info("memory")["used_memory_human"]}


def scale(server, tmp, bench, round_trips, submits):
    out = {"finished": FINISHED, "scheduled": SCHEDULED, "batch": FILL_BATCH}
    log(f"redis: scale, a fresh queue in db {SCALE_DB} with its own worker process...")
    runner = NbqueueRedis(server.url(SCALE_DB), "bench-redis-scale", tmp)
    try:
        warm_up(runner)
        out["empty"] = costs(runner, bench, round_trips, submits)
        out["empty"].update(store_size(runner, server))
        log(f"redis: loading {FINISHED:,} finished and {SCHEDULED:,} scheduled records...")
        t0 = time.perf_counter()
        groups = [runner.fn.map([()] * min(FILL_BATCH, FINISHED - i))
                  for i in range(0, FINISHED, FILL_BATCH)]
        for g in groups:
            g.get(timeout=600)
        out["fill_finished_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(SCHEDULED):
            runner.fn.schedule(delay=3600)
        out["fill_scheduled_s"] = time.perf_counter() - t0
        loaded = store_size(runner, server)
        have = loaded["counts"]
        if have.get("scheduled", 0) < SCHEDULED or have.get("succeeded", 0) < FINISHED:
            raise RuntimeError(f"the loaded store holds {have}: it was not filled")
        log("redis: scale, the loaded store...")
        out["loaded"] = costs(runner, bench, round_trips, submits)
        out["loaded"].update(loaded)
    finally:
        runner.close()
    out["ratio"] = {k: out["loaded"][k] / out["empty"][k]
                    for k in ("rt_p50", "rt_p99", "submit_p50_us", "submit_p99_us")}
    return out


# ---- the run ----------------------------------------------------------------------------------

def run(tmp, bench, quick=False):
    """All three parts on one redis-server; ``bench`` is run.py's module (its throughput,
    round_trips and pct). Returns the results as a dict (see ``report``)."""
    import huey
    import redis
    tasks, rounds, round_trips, submits = (500, 1, 100, 100) if quick else (3000, 3, 300, 300)
    directory = os.path.join(tmp, "redis")
    os.makedirs(directory, exist_ok=True)
    log("redis: starting redis-server...")
    server = RedisServer(directory)
    try:
        out = {"redis_server": server.version, "redis_py": redis.__version__, "huey": huey.__version__,
               "port": server.port, "workers": WORKERS, "load_start": os.getloadavg()[0]}
        out["versus"] = versus(server, directory, bench, tasks, rounds, round_trips)
        out["scale"] = scale(server, directory, bench, round_trips, submits)
        out["load_end"] = os.getloadavg()[0]
    finally:
        server.stop()
    return out


def checks(result):
    """``(name, value, target, ok)`` rows for run.py's check table."""
    vs, ratio = result["versus"], result["scale"]["ratio"]
    p50, rt, sub = vs["round_trip"]["nbqueue"]["p50"], ratio["rt_p50"], ratio["submit_p50_us"]
    return [("redis: nbqueue throughput vs RedisHuey", vs["ratio"], ">= 2x", vs["ratio"] >= 2),
            ("redis: nbqueue fn.map throughput vs RedisHuey (calls)", vs["map_ratio"], "(info)",
             True),
            ("redis: nbqueue round trip p50 (ms)", p50, "< 2", p50 < 2),
            ("redis: round trip p50, loaded / empty store", rt, "< 2x", rt < 2),
            ("redis: submit p50, loaded / empty store", sub, "< 2x", sub < 2)]


def report(result):
    vs, sc = result["versus"], result["scale"]
    med = vs["throughput_median"]

    def ms(what):
        return ", ".join(f"{k} {'-' if v is None else format(v * 1000, '.0f')}" for k, v in what.items())

    print(f"\nRedis: redis-server {result['redis_server']} on 127.0.0.1:{result['port']} "
          f"(--save '' --appendonly no), redis-py {result['redis_py']}, huey {result['huey']}. "
          f"Start to first result (ms): {ms(vs['start_s'])}; stop on SIGINT (ms): {ms(vs['stop_s'])}. "
          f"Load average (1 min, this run included) {result['load_start']:.2f} at the start, "
          f"{result['load_end']:.2f} at the end, on {os.cpu_count()} CPUs.\n")
    print(f"| runner, submit-only here | throughput (tasks/s, n={vs['tasks']:,}, median of "
          f"{vs['rounds']}) | rounds | round trip p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|--:|---|--:|--:|--:|")
    for key, label in vs["labels"].items():
        rt = vs["round_trip"][key]
        print(f"| {label} | {med[key]:,.0f} | {', '.join(f'{v:,.0f}' for v in vs['throughput'][key])} "
              f"| {rt['p50']:.3f} | {rt['p99']:.3f} | {rt['max']:.3f} |")
    print(f"| nbqueue, the same tasks submitted in one fn.map | {vs['map_median']:,.0f} | "
          f"{', '.join(f'{v:,.0f}' for v in vs['map_throughput'])} | | | |")
    print(f"\nnbqueue / RedisHuey throughput = {vs['ratio']:.2f}x (target >= 2x; with fn.map "
          f"{vs['map_ratio']:.2f}x); nbqueue round trip "
          f"p50 {vs['round_trip']['nbqueue']['p50']:.3f} ms (target < 2 ms), RedisHuey "
          f"{vs['round_trip']['huey']['p50']:.3f} ms.")
    e, lo, r = sc["empty"], sc["loaded"], sc["ratio"]
    print(f"\nRedis scale: a fresh queue (its own worker, -w {WORKERS}), empty, then loaded with "
          f"{sc['finished']:,} finished no-ops (fn.map batches of {sc['batch']:,}, run by the worker: "
          f"{sc['fill_finished_s']:.1f} s, {sc['finished'] / sc['fill_finished_s']:,.0f} tasks/s) and "
          f"{sc['scheduled']:,} scheduled an hour ahead (schedule(delay=3600) one by one: "
          f"{sc['fill_scheduled_s']:.1f} s, {sc['fill_scheduled_s'] / sc['scheduled'] * 1e6:.0f} us "
          f"each).\n")
    print("| nbqueue on Redis | empty store | loaded store | loaded / empty |")
    print("|---|--:|--:|--:|")
    print(f"| records (q.counts()); redis keys in the db | {e['records']:,}; {e['keys']:,} "
          f"| {lo['records']:,}; {lo['keys']:,} | |")
    print(f"| redis used memory (whole server) | {e['used_memory']} | {lo['used_memory']} | |")
    for key, what in (("rt_p50", f"round trip p50 (ms, n={e['rt_n']})"), ("rt_p99", "round trip p99 (ms)"),
                      ("submit_p50_us", f"submit p50 (us, n={e['submit_n']})"),
                      ("submit_p99_us", "submit p99 (us)")):
        digits = 3 if key.startswith("rt") else 0
        print(f"| {what} | {e[key]:,.{digits}f} | {lo[key]:,.{digits}f} | {r[key]:.2f}x |")
    print("\nLoaded store: " + ", ".join(f"{n:,} {s}" for s, n in lo["counts"].items())
          + ". Targets: loaded / empty p50 < 2x.")


def main(argv=None):
    sys.path.insert(0, HERE)
    import run as bench  # benchmarks/run.py: it owns the command line
    return bench.main(["--redis", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

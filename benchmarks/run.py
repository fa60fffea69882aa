"""nbqueue benchmark: one command, every runner, the same no-op task, 4 workers.

    python benchmarks/run.py [--quick] [--scale | --sidecar | --redis] [--json PATH]

``--scale`` runs only the scale benchmark (``benchmarks/scale.py``: each operation
on a store of 25,000 records against one of 100, and the open time of a
100,000-record SQLite store); the default run and ``--quick`` run it too, after
the rest (``--quick`` with fewer repetitions but the same store sizes).
``--sidecar`` runs only the process-worker and sidecar benchmark
(``benchmarks/sidecar.py``: the kernel's responsiveness while CPU-bound tasks
run in thread and in process workers; a sidecar's round trip, and its
throughput with 4 process workers against SqliteHuey's; and the crash test of
``benchmarks/crash.py``: a sidecar SIGKILLed three times mid-run); the default
run and ``--quick`` run it too, after the periodic lateness.
``--redis`` runs only the Redis store benchmark (``benchmarks/redisbench.py``:
on one redis-server it starts, an ``nbqueue worker`` process against a RedisHuey
consumer process, throughput and round trip, and the round trip and submit cost
on an empty store against one of 5,000 scheduled and 20,000 finished records);
the default run and ``--quick`` run it too, after the crash test, when
``redis-server`` is on PATH (otherwise they print a note and skip it).

Runners, measured one after another in this process:

- ``nbqueue memory``: ``Queue(name, storage="memory", workers=4)``
- ``nbqueue disk``: ``Queue(name, storage=<fresh temp dir>, workers=4)``, the
  SQLite store (``nbqueue/storage/sqlite.py``)
- ``ThreadPoolExecutor``: ``concurrent.futures.ThreadPoolExecutor(4)``; delayed
  tasks are a ``threading.Timer`` that submits to the pool
- ``huey MemoryHuey`` / ``huey SqliteHuey`` (a file in a temp dir): an
  in-process consumer, ``huey.create_consumer(workers=4, worker_type="thread")``
  with Huey's default settings (the worker polls an empty queue every 0.1 s,
  growing by 1.15x up to 10 s; the scheduler looks at delayed tasks once a
  second; ``Result.get(blocking=True)`` polls from 50 ms up). We call
  ``Consumer.start()`` (scheduler plus worker threads, as ``huey_consumer``
  does) rather than ``run()``, whose main loop only does health checks and
  signals; the SIGINT/SIGTERM/SIGHUP handlers ``start()`` installs are put back
  at once so Ctrl+C still works. Nothing else is changed.

The task is ``noop()``, which returns ``time.time()`` at its start (it cannot
return None: Huey does not store None results by default).

Measurements (each runner gets a short warm-up first):

- throughput: submit N no-op tasks (5000; 500 with --quick) as fast as the
  submitting thread can, then wait for every result with the runner's own API
  (``r.get()``, ``f.result()``, huey ``r.get(blocking=True)``); N divided by the
  wall time from the first submit to the last result.
- round trip: submit one task, wait for its result, repeat (500 times; 100
  with --quick, and at most ~5 s per runner, so the slow Huey runners give
  fewer samples); p50 and p99 of submit-to-result-returned, in ms.
- delayed-task lateness: schedule 200 tasks at once (50 with --quick) with
  delays spread evenly over 50-500 ms, shuffled; lateness = the task's start
  time minus its intended eta (time just before the schedule call + delay);
  p50 and p99 in ms. Negative means it ran early.
- periodic lateness: a job on every second (cron ``* * * * * *``) on a memory
  and a disk queue, and Huey's finest periodic task (``crontab()``, every
  minute, on a MemoryHuey consumer), all running at once for the same window
  (130 s; 5 s with --quick, which skips Huey: it cannot fire twice in 5 s);
  lateness = when the run started minus the tick it was for.
- progress overhead: one task calling ``nbqueue.progress(i, n)`` n times
  (1,000,000; 200,000 with --quick) with nobody watching, then again with its
  live widget view created (the one updater thread refreshing it); the ratio of
  the two run times and how many times the bar's value was set.
- idle CPU: a memory queue and then a disk queue (4 workers each) run one task,
  then sit idle for 3 s (1 s with --quick) with nothing else running in the
  process; the ``time.process_time()`` delta (all threads) is reported.

Targets (DESIGN.md, "Performance"): memory throughput >= 0.5x
ThreadPoolExecutor's and round-trip p50 < 0.3 ms; disk throughput >= 3x
SqliteHuey's and round-trip p50 < 3 ms; delayed and periodic lateness p99 <
10 ms; an idle queue burns no CPU (taken here as < 1% of one core over the idle
window); a watched progress loop no more than 2x slower than an unwatched one.
Process workers and sidecar: one CPU-bound task in a process worker slows the
kernel's loop by at most 1.1x; sidecar round trip p50 < 5 ms; sidecar
throughput (4 process workers) >= SqliteHuey's.
Scale (the issue): on both stores each of submit, schedule, cancel, claim+finish,
``q.tasks(limit=50)`` and a dashboard refresh within 2x of its cost on a store of
100 records; a store of 100,000 records opens in under a second.
Redis: nbqueue throughput >= 2x RedisHuey's; round trip p50 < 2 ms; round trip
and submit p50 on the loaded store within 2x of the empty one's.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import huey
import nbqueue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402 -- benchmarks/scale.py, beside this file
import crash  # noqa: E402 -- benchmarks/crash.py, beside this file
import sidecar  # noqa: E402 -- benchmarks/sidecar.py, beside this file
import redisbench  # noqa: E402 -- benchmarks/redisbench.py, beside this file

WORKERS = 4


def noop():
    return time.time()


def pct(values, p):
    """Nearest-rank percentile of ``values`` (p in 0..100)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))]


# ---- runners: start, submit() -> handle, wait(handle) -> start time, schedule(delay), close

class NbqueueRunner:
    def __init__(self, label, storage):
        self.label = label
        self.q = nbqueue.Queue(f"bench-{label.split()[-1]}", storage=storage, workers=WORKERS)
        self.fn = self.q.task(noop)

    def submit(self):
        return self.fn()

    def wait(self, r):
        return r.get()

    def schedule(self, delay):
        return self.fn.schedule(delay=delay)

    def close(self):
        self.q.shutdown(wait=True)
        self.q.store.close()


class PoolRunner:
    label = "ThreadPoolExecutor"

    def __init__(self):
        self.pool = ThreadPoolExecutor(WORKERS)
        self.timers = []

    def submit(self):
        return self.pool.submit(noop)

    def wait(self, f):
        return f.result()

    def schedule(self, delay):
        out = Future()

        def fire():
            self.pool.submit(noop).add_done_callback(lambda f: out.set_result(f.result()))

        t = threading.Timer(delay, fire)
        t.start()
        self.timers.append(t)
        return out

    def close(self):
        for t in self.timers:
            t.join()
        self.pool.shutdown(wait=True)


class HueyRunner:
    def __init__(self, label, h):
        self.label = label
        self.huey = h
        self.fn = h.task()(noop)
        sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s]
        saved = {s: signal.getsignal(s) for s in sigs}
        self.consumer = h.create_consumer(workers=WORKERS, worker_type="thread")
        self.consumer.start()
        for s, handler in saved.items():
            signal.signal(s, handler)

    def submit(self):
        return self.fn()

    def wait(self, r):
        return r.get(blocking=True)

    def schedule(self, delay):
        return self.fn.schedule(delay=delay)

    def close(self):
        self.consumer.stop(graceful=True)  # sets the stop flag, joins workers and scheduler
        self.huey.storage.close()


# ---- measurements

def throughput(runner, n):
    t0 = time.perf_counter()
    handles = [runner.submit() for _ in range(n)]
    for h in handles:
        runner.wait(h)
    return n / (time.perf_counter() - t0)


def round_trips(runner, n, budget):
    samples = []
    end = time.perf_counter() + budget
    while len(samples) < n and (len(samples) < 20 or time.perf_counter() < end):
        t0 = time.perf_counter()
        runner.wait(runner.submit())
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def lateness(runner, n):
    delays = [0.05 + 0.45 * i / max(1, n - 1) for i in range(n)]
    random.Random(0).shuffle(delays)
    planned = []
    for d in delays:
        eta = time.time() + d
        planned.append((eta, runner.schedule(d)))
    return [(runner.wait(h) - eta) * 1000 for eta, h in planned]


def measure(make, cfg):
    runner = make()
    try:
        for h in [runner.submit() for _ in range(20)]:  # warm-up
            runner.wait(h)
        row = {"runner": runner.label}
        row["throughput"] = throughput(runner, cfg.tasks)
        rt = round_trips(runner, cfg.round_trips, cfg.rt_budget)
        row.update(rt_n=len(rt), rt_p50=pct(rt, 50), rt_p99=pct(rt, 99))
        late = lateness(runner, cfg.delayed)
        row.update(late_n=len(late), late_p50=pct(late, 50), late_p99=pct(late, 99),
                   late_min=min(late))
    finally:
        runner.close()
    print(f"  {row['runner']}: done", file=sys.stderr, flush=True)
    return row


def idle_cpu(storage, seconds):
    q = nbqueue.Queue(f"bench-idle-{'memory' if storage == 'memory' else 'disk'}",
                      storage=storage, workers=WORKERS)
    try:
        q.task(noop)().get()
        c0 = time.process_time()
        time.sleep(seconds)
        return time.process_time() - c0
    finally:
        q.shutdown(wait=True)
        q.store.close()


def tick():
    return time.time()


HUEY_TICKS = []


def huey_tick():
    HUEY_TICKS.append(time.time())


def periodic_lateness(tmp, seconds, with_huey):
    """{runner: [lateness ms]} of periodic runs, all runners at once for ``seconds``."""
    queues = {"nbqueue memory": nbqueue.Queue("bench-periodic-memory", storage="memory", workers=WORKERS),
              "nbqueue disk": nbqueue.Queue("bench-periodic-disk", storage=os.path.join(tmp, "periodic"),
                                            workers=WORKERS)}
    consumer = None
    if with_huey:
        h = huey.MemoryHuey("bench-periodic")
        h.periodic_task(huey.crontab())(huey_tick)  # every minute: Huey's finest
        sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s]
        saved = {s: signal.getsignal(s) for s in sigs}
        consumer = h.create_consumer(workers=WORKERS, worker_type="thread")
        consumer.start()
        for s, handler in saved.items():
            signal.signal(s, handler)
    try:
        for q in queues.values():
            q.periodic("* * * * * *", name="tick")(tick)
        time.sleep(seconds)
    finally:
        out = {}
        for label, q in queues.items():
            q.shutdown(wait=True)
            late = []
            for r in q.tasks(name="tick", status="succeeded"):
                rec = q.store.get(r.id)
                late.append((r.get() - rec.eta) * 1000)
            q.store.close()
            out[label] = late
        if consumer is not None:
            consumer.stop(graceful=True)
            out["huey MemoryHuey"] = [(t - t // 60 * 60) * 1000 for t in HUEY_TICKS]
    return out


def spin(n):
    t0 = time.perf_counter()
    for i in range(n):
        nbqueue.progress(i + 1, n)
    return time.perf_counter() - t0


def progress_overhead(n):
    """(seconds unwatched, seconds watched, bar value changes while watched)."""
    from nbqueue.ui import widgets
    from nbqueue.ui.updater import Updater
    q = nbqueue.Queue("bench-progress", storage="memory", workers=1)
    try:
        task = q.task(spin)
        plain = task(n).get()
        r = task.schedule(args=(n,), delay=0.2)  # its view exists before it starts
        view = widgets.view_for(r)
        changes = []
        view.bar.observe(changes.append, "value")
        watched = r.get()
        time.sleep(2 * Updater.interval)  # the final refresh
        return plain, watched, len(changes)
    finally:
        q.shutdown(wait=True)


# ---- report

def print_checks(checks):
    """The check table: ``(name, value, target, ok)`` rows."""
    print("\n| check | value | target | result |")
    print("|---|--:|---|---|")
    for name, value, target, ok in checks:
        print(f"| {name} | {fmt(value, 3)} | {target} | {'PASS' if ok else 'FAIL'} |")


def fmt(x, digits=2):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer tasks and repetitions (the same scale sizes): about 45 s")
    ap.add_argument("--scale", action="store_true",
                    help="only the scale benchmark (benchmarks/scale.py)")
    ap.add_argument("--sidecar", action="store_true",
                    help="only the process-worker and sidecar benchmark (benchmarks/sidecar.py)")
    ap.add_argument("--redis", action="store_true",
                    help="only the Redis store benchmark (benchmarks/redisbench.py)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    if args.scale + args.sidecar + args.redis > 1:
        ap.error("--scale, --sidecar and --redis each run one part only: give one of them")
    if args.scale:
        return scale_only(args)
    if args.sidecar:
        return sidecar_only(args)
    if args.redis:
        return redis_only(args, ap)
    cfg = argparse.Namespace(tasks=500, round_trips=100, rt_budget=1.0, delayed=50, idle=1.0,
                             periodic=5.0, progress=200_000) \
        if args.quick else argparse.Namespace(tasks=5000, round_trips=500, rt_budget=5.0,
                                              delayed=200, idle=3.0, periodic=130.0,
                                              progress=1_000_000)

    tmp = tempfile.mkdtemp(prefix="nbqueue-bench-")
    started = time.perf_counter()
    try:
        print("idle CPU...", file=sys.stderr, flush=True)
        idle = {"memory": idle_cpu("memory", cfg.idle),
                "disk": idle_cpu(os.path.join(tmp, "idle-disk"), cfg.idle)}
        print("runners...", file=sys.stderr, flush=True)
        makers = [
            lambda: NbqueueRunner("nbqueue memory", "memory"),
            lambda: NbqueueRunner("nbqueue disk", os.path.join(tmp, "nbqueue-disk")),
            PoolRunner,
            lambda: HueyRunner("huey MemoryHuey", huey.MemoryHuey("bench-mem")),
            lambda: HueyRunner("huey SqliteHuey", huey.SqliteHuey(
                "bench-sqlite", filename=os.path.join(tmp, "huey.db"))),
        ]
        rows = {r["runner"]: r for r in (measure(m, cfg) for m in makers)}
        print(f"progress overhead ({cfg.progress:,} calls)...", file=sys.stderr, flush=True)
        plain, watched, bar_changes = progress_overhead(cfg.progress)
        print(f"periodic lateness ({cfg.periodic:g} s)...", file=sys.stderr, flush=True)
        periodic = periodic_lateness(tmp, cfg.periodic, with_huey=not args.quick)
        side = sidecar.run(tmp, sys.modules[__name__], quick=args.quick)
        print("crash test...", file=sys.stderr, flush=True)
        crashed = crash.run(tmp, quick=args.quick)
        no_redis = redisbench.unavailable()
        if no_redis:
            print(f"redis benchmark skipped: {no_redis}", file=sys.stderr, flush=True)
        redis_result = None if no_redis else redisbench.run(tmp, sys.modules[__name__], args.quick)
        scaled = scale.run(tmp, quick=args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    mem, disk = rows["nbqueue memory"], rows["nbqueue disk"]
    pool, sqlite = rows["ThreadPoolExecutor"], rows["huey SqliteHuey"]
    idle_limit = 0.01 * cfg.idle  # 1% of one core
    mem_ratio, disk_ratio = mem["throughput"] / pool["throughput"], disk["throughput"] / sqlite["throughput"]
    worst, open_ms = scale.summary(scaled)
    checks = [
        ("memory throughput vs ThreadPoolExecutor", mem_ratio, ">= 0.5x", mem_ratio >= 0.5),
        ("disk (SQLite) throughput vs SqliteHuey", disk_ratio, ">= 3x", disk_ratio >= 3),
        ("memory round trip p50 (ms)", mem["rt_p50"], "< 0.3", mem["rt_p50"] < 0.3),
        ("disk round trip p50 (ms)", disk["rt_p50"], "< 3", disk["rt_p50"] < 3),
        ("memory delayed lateness p99 (ms)", mem["late_p99"], "< 10", mem["late_p99"] < 10),
        ("disk delayed lateness p99 (ms)", disk["late_p99"], "< 10", disk["late_p99"] < 10),
        ("memory periodic lateness p99 (ms)", pct(periodic["nbqueue memory"], 99), "< 10",
         pct(periodic["nbqueue memory"], 99) < 10),
        ("disk periodic lateness p99 (ms)", pct(periodic["nbqueue disk"], 99), "< 10",
         pct(periodic["nbqueue disk"], 99) < 10),
        ("progress loop watched / unwatched", watched / plain, "< 2x", watched / plain < 2),
        (f"memory queue idle CPU (s in {cfg.idle:g} s)", idle["memory"], f"< {idle_limit:g}",
         idle["memory"] < idle_limit),
        (f"disk queue idle CPU (s in {cfg.idle:g} s)", idle["disk"], f"< {idle_limit:g}",
         idle["disk"] < idle_limit),
        *((f"scale: {store} worst large/small ratio (issue's operations)", w, "< 2x", w < 2)
          for store, w in worst.items()),
        ("scale: open a 100,000-record SQLite store (ms)", open_ms, "< 1000", open_ms < 1000),
        *sidecar.checks(side),
        *crash.checks(crashed),
        *(redisbench.checks(redis_result) if redis_result else ()),
    ]

    print(f"\nnbqueue benchmark{' (--quick)' if args.quick else ''}: no-op tasks, {WORKERS} workers; "
          f"Python {platform.python_version()}, huey {huey.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.machine()}\n")
    print(f"| runner | throughput (tasks/s, n={cfg.tasks}) | round trip p50 (ms) | p99 (ms) "
          f"| delayed lateness p50 (ms) | p99 (ms) |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in rows.values():
        print(f"| {r['runner']} | {fmt(r['throughput'], 0)} | {fmt(r['rt_p50'], 3)} "
              f"| {fmt(r['rt_p99'], 3)} | {fmt(r['late_p50'])} | {fmt(r['late_p99'])} |")
    print("\nRound trips per runner: " + ", ".join(f"{r['runner']} {r['rt_n']}" for r in rows.values())
          + f"; delayed tasks: {cfg.delayed} (50-500 ms).")
    early = [r["runner"] for r in rows.values() if r["late_min"] < 0]
    if early:
        print("Ran before their eta: " + ", ".join(f"{r} (min {fmt(rows[r]['late_min'])} ms)" for r in early))
    print("\n| periodic runner | runs | lateness p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|--:|--:|--:|--:|")
    for label, late in periodic.items():
        if late:
            print(f"| {label} ({'every minute' if 'huey' in label else 'every second'}) | {len(late)} "
                  f"| {fmt(pct(late, 50))} | {fmt(pct(late, 99))} | {fmt(max(late))} |")
        else:
            print(f"| {label} | 0 | - | - | - |")
    print(f"\nprogress(): {cfg.progress:,} calls in {plain:.2f} s unwatched, {watched:.2f} s with the "
          f"live widget ({watched / plain:.2f}x); the bar's value was set {bar_changes} times.")
    sidecar.report(side)
    crash.report(crashed)
    if redis_result:
        redisbench.report(redis_result)
    else:
        print(f"\nRedis benchmark skipped: {no_redis}.")
    scale.report(scaled)
    print_checks(checks)
    print(f"\nThroughput ratios: memory / ThreadPoolExecutor = {mem_ratio:.2f}x (target >= 0.5x); "
          f"disk (SQLite store) / SqliteHuey = {disk_ratio:.2f}x (target >= 3x).")
    print(f"\nTotal time {elapsed:.1f} s.")

    leftover = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if leftover:
        print(f"Threads still running at exit: {', '.join(leftover)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "config": vars(cfg), "python": platform.python_version(),
                       "huey": huey.__version__, "cpus": os.cpu_count(), "seconds": elapsed,
                       "runners": list(rows.values()), "idle_cpu_seconds": idle,
                       "periodic_lateness_ms": periodic,
                       "progress": {"calls": cfg.progress, "unwatched_s": plain, "watched_s": watched,
                                    "bar_changes": bar_changes},
                       "checks": [{"check": n, "value": v, "target": t, "pass": ok}
                                  for n, v, t, ok in checks],
                       "sidecar": side, "crash": crashed, "redis": redis_result, "scale": scaled},
                      f, indent=2)
    return 0


def scale_only(args):
    started = time.perf_counter()
    result = scale.run(quick=args.quick)
    scale.report(result)
    print(f"\nTotal time {time.perf_counter() - started:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "python": platform.python_version(),
                       "cpus": os.cpu_count(), "scale": result}, f, indent=2)
    return 0


def sidecar_only(args):
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="nbqueue-bench-")
    try:
        result = sidecar.run(tmp, sys.modules[__name__], quick=args.quick)
        crashed = crash.run(tmp, quick=args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nnbqueue process-worker and sidecar benchmark{' (--quick)' if args.quick else ''}; "
          f"Python {platform.python_version()}, huey {huey.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.machine()}")
    sidecar.report(result)
    crash.report(crashed)
    checks = sidecar.checks(result) + crash.checks(crashed)
    print_checks(checks)
    print(f"\nTotal time {time.perf_counter() - started:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "python": platform.python_version(),
                       "huey": huey.__version__, "cpus": os.cpu_count(), "sidecar": result,
                       "crash": crashed,
                       "checks": [{"check": n, "value": v, "target": t, "pass": ok}
                                  for n, v, t, ok in checks]}, f, indent=2)
    return 0


def redis_only(args, ap):
    why = redisbench.unavailable()
    if why:
        ap.error(f"--redis: {why}")
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="nbqueue-bench-")
    try:
        result = redisbench.run(tmp, sys.modules[__name__], quick=args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nnbqueue Redis store benchmark{' (--quick)' if args.quick else ''}; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.machine()}")
    redisbench.report(result)
    checks = redisbench.checks(result)
    print_checks(checks)
    print(f"\nTotal time {time.perf_counter() - started:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "python": platform.python_version(),
                       "cpus": os.cpu_count(), "redis": result,
                       "checks": [{"check": n, "value": v, "target": t, "pass": ok}
                                  for n, v, t, ok in checks]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

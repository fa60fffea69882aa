"""nbqueue scale benchmark: does an operation cost the same on a big store as on a small one?

    python benchmarks/run.py --scale [--quick] [--json PATH]   (or python benchmarks/scale.py)

The issue's target: "On both stores, with 5,000 tasks scheduled and 20,000
finished records present, each of submit, schedule, cancel, claim+finish,
``q.tasks(limit=50)`` and a dashboard refresh costs within 2x of the same
operation on a store with 100. Opening a store with 100,000 records takes
under a second."

For each store (``memory``; ``sqlite``: a store directory in a temp dir) two
queues are built, ``Queue(name, storage, workers=0, start=False, keep=None)``
so nothing but the measured call runs (a memory queue gets
``max_finished=10**9``: its default of 10,000 would not hold 20,000 finished
records):

- small: 80 finished + 20 scheduled an hour ahead (100 records);
- large: 20,000 finished + 5,000 scheduled an hour ahead (25,000 records).

The fill (timed and printed) goes through the store's own operations: batches
of 500 pending records (``store.add``) that are then claimed and finished
(``store.claim`` then ``store.finish_and_claim(..., lease=...)``, which claims
the next one in the same step, as a worker does), then one ``store.add`` of the
scheduled ones. The finished records come first, so they are the older ones.

Operations, timed one call at a time (``perf_counter_ns``), median in us. They
run in rounds of 20, alternating small and large queues, after one warm-up
round; each round puts the store back to its size, so the small store stays
at 100-120 records and both sizes do the same work:

- submit: ``probe()`` (stores a pending record); 20 of them per round;
- claim+finish: ``store.claim(w, lease)`` + ``store.finish_and_claim(id, w,
  "succeeded", None, result=...)`` of those 20 (backlog 20 down to 1);
- schedule: ``probe.schedule(delay=3600)``; cancel: ``r.cancel()`` of those;
  the finished probes are then deleted (``store.trim_runs("probe", 0)``);
- ``q.tasks(limit=50)``, a dashboard refresh (``q.dashboard().text()``: counts,
  one page, the jobs), ``q.counts()``, ``r.status`` and ``r.get()`` of stored
  records (cycling over 50 random ones; ``get`` over finished ones);
- extras: ``q.tasks(status="succeeded", limit=50)`` and the same for one task
  name (``name="base"``, which all 100 / 25,000 records have); a scheduler tick with
  nothing due (``Scheduler.tick``: what the scheduler thread does after every
  schedule or cancel, and every second on a shared store); a retention pass with
  nothing due (``store.retain``, the workers' housekeeping every 2 s).

Also: claim+finish with 5,000 pending tasks waiting (on the large queue, a
batch of pending probes added at once) against the same with a backlog of 20;
and the open time of a SQLite store of 100,000 records (the large store topped
up with scheduled records, then closed): ``Queue(name, storage=dir, workers=0,
start=False)`` timed in 3 fresh subprocesses (after importing nbqueue, its SQLite
store and its dashboard module, whose import time is printed apart) and 3 times
in this process after shutdown, each with its first dashboard refresh.

Nothing here asserts a time: ratios of 2x or more are flagged in the table.
"""

import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import nbqueue
from nbqueue.states import SUCCEEDED

SIZES = (("small", 20, 80), ("large", 5_000, 20_000))  # (label, scheduled, finished)
OPEN_RECORDS = 100_000
BACKLOG = 5_000
HOUR = 3600.0
LEASE = 3600.0
KEEP = 7 * 86400.0   # the queues' default keep, for the retention pass
ROUND = 20           # operations of each kind per round
FILL_BATCH = 500
SAMPLE = 50          # stored records that status/get cycle over
FLAG = 2.0

OPS = ("submit", "schedule", "cancel", "claim+finish", "tasks(limit=50)", "dashboard refresh",
       "counts()", "r.status", "r.get() (finished)", "tasks(status=succeeded, limit=50)",
       "tasks(name=base, status=succeeded, limit=50)", "scheduler tick (nothing due)",
       "retention pass (nothing due)")
ISSUE_OPS = OPS[:6]  # the ones the issue names


def base():
    return 0


def probe():
    return 0


def new_id():
    return os.urandom(16).hex()


class Bench:
    """One queue at one size, and the samples of its operations."""

    def __init__(self, storage, store_label, size_label, scheduled, finished):
        self.store_label, self.size_label = store_label, size_label
        self.q = q = nbqueue.Queue(f"scale-{store_label}-{size_label}", storage=storage, workers=0,
                                   start=False, keep=None,
                                   max_finished=10**9 if storage == "memory" else None)
        self.store = q.store
        self.base = q.task(base, name="base")
        self.probe = q.task(probe, name="probe")
        self.worker = q.worker_id
        self.value = q.state.encode_value(0)
        self.samples = {op: [] for op in OPS}
        t0 = time.perf_counter()
        finished_ids = self.fill_finished(finished)
        scheduled_ids = self.add_copies(self.base, scheduled, eta=time.time() + HOUR)
        self.fill_s = time.perf_counter() - t0
        self.size = scheduled + finished
        rng = random.Random(0)
        self.finished = [q.result(i) for i in rng.sample(finished_ids, min(SAMPLE, finished))]
        self.any = [q.result(i) for i in rng.sample(finished_ids + scheduled_ids,
                                                    min(SAMPLE, self.size))]
        self.check_size()

    # ---- filling ----------------------------------------------------------------
    def copies(self, task, n, eta=None):
        """``n`` new records of ``task``: one built the Queue's way, the rest copies
        of it with their own ids (and etas 1 ms apart)."""
        first = self.q._record(task, (), {}, eta=eta)
        self.q.state.forget(first.id)
        out = []
        for i in range(n):
            rec = first.copy()
            rec.id = new_id()
            if eta is not None:
                rec.eta = eta + i * 1e-3
            out.append(rec)
        return out

    def add_copies(self, task, n, eta=None):
        ids = []
        for start in range(0, n, FILL_BATCH * 10):
            recs = self.copies(task, min(FILL_BATCH * 10, n - start), eta)
            self.store.add(recs)
            ids += [r.id for r in recs]
        return ids

    def fill_finished(self, n):
        store, ids = self.store, []
        for start in range(0, n, FILL_BATCH):
            recs = self.copies(self.base, min(FILL_BATCH, n - start))
            store.add(recs)
            rec = store.claim(self.worker, LEASE)
            while rec is not None:
                ids.append(rec.id)
                _, rec = store.finish_and_claim(rec.id, self.worker, SUCCEEDED, LEASE, result=self.value)
        if len(ids) != n:
            raise RuntimeError(f"fill: {len(ids)} records finished, expected {n}")
        return ids

    def check_size(self):
        counts = self.q.counts()
        if sum(counts.values()) != self.size:
            raise RuntimeError(f"{self.store_label} {self.size_label}: {counts}, expected "
                               f"{self.size} records")

    # ---- one round of every operation ----------------------------------------------
    def round(self, record=True):
        q, store, ns = self.q, self.store, time.perf_counter_ns
        s = self.samples if record else {op: [] for op in OPS}
        for _ in range(ROUND):
            t0 = ns()
            self.probe()
            s["submit"].append(ns() - t0)
        for _ in range(ROUND):
            t0 = ns()
            rec = store.claim(self.worker, LEASE)
            store.finish_and_claim(rec.id, self.worker, SUCCEEDED, None, result=self.value)
            s["claim+finish"].append(ns() - t0)
            if rec.name != "probe":
                raise RuntimeError(f"claimed {rec.name} {rec.id}, not a probe")
            q.state.task_finished(rec.id)  # what the worker does next (not timed)
        later = []
        for _ in range(ROUND):
            t0 = ns()
            r = self.probe.schedule(delay=HOUR)
            s["schedule"].append(ns() - t0)
            later.append(r)
        for r in later:
            t0 = ns()
            r.cancel()
            s["cancel"].append(ns() - t0)
        store.trim_runs("probe", 0)
        reads = (("tasks(limit=50)", lambda i: q.tasks(limit=50)),
                 ("dashboard refresh", lambda i: q.dashboard().text()),
                 ("counts()", lambda i: q.counts()),
                 ("r.status", lambda i: self.any[i % len(self.any)].status),
                 ("r.get() (finished)", lambda i: self.finished[i % len(self.finished)].get()),
                 ("tasks(status=succeeded, limit=50)", lambda i: q.tasks(status=SUCCEEDED, limit=50)),
                 ("tasks(name=base, status=succeeded, limit=50)",
                  lambda i: q.tasks(name="base", status=SUCCEEDED, limit=50)),
                 ("scheduler tick (nothing due)", lambda i: q._scheduler.tick()),
                 ("retention pass (nothing due)", lambda i: store.retain(KEEP, q.state.max_finished)))
        for op, call in reads:
            for i in range(ROUND):
                t0 = ns()
                call(i)
                s[op].append(ns() - t0)

    def backlog(self, pending, reps):
        """Median us of claim+finish with ``pending`` probes waiting (left pending after)."""
        store, ns, out = self.store, time.perf_counter_ns, []
        self.add_copies(self.probe, pending)
        for _ in range(reps):
            t0 = ns()
            rec = store.claim(self.worker, LEASE)
            store.finish_and_claim(rec.id, self.worker, SUCCEEDED, None, result=self.value)
            out.append(ns() - t0)
        store.trim_runs("probe", 0)
        return statistics.median(out) / 1000

    def close(self):
        self.q.shutdown(wait=True)
        self.store.close()


# ---- opening a big SQLite store -----------------------------------------------------------

OPEN_SCRIPT = """
import json, sys, time
t = time.perf_counter()
import nbqueue, nbqueue.storage.sqlite, nbqueue.ui.widgets
t0 = time.perf_counter()
q = nbqueue.Queue(sys.argv[1], storage=sys.argv[2], workers=0, start=False)
t1 = time.perf_counter()
q.dashboard().text()
t2 = time.perf_counter()
n = sum(q.counts().values())
q.shutdown()
q.store.close()
print(json.dumps({"import_ms": (t0 - t) * 1000, "open_ms": (t1 - t0) * 1000,
                  "refresh_ms": (t2 - t1) * 1000, "records": n}))
"""


def open_times(name, directory, runs=3):
    """{"subprocess": [...], "in_process": [...]} of {"open_ms", "refresh_ms", "records"}."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = {"subprocess": [], "in_process": []}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", OPEN_SCRIPT, name, directory], env=env,
                              capture_output=True, text=True, check=True)
        out["subprocess"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for _ in range(runs):
        t0 = time.perf_counter()
        q = nbqueue.Queue(name, storage=directory, workers=0, start=False)
        t1 = time.perf_counter()
        q.dashboard().text()
        t2 = time.perf_counter()
        out["in_process"].append({"open_ms": (t1 - t0) * 1000, "refresh_ms": (t2 - t1) * 1000,
                                  "records": sum(q.counts().values())})
        q.shutdown()
        q.store.close()
    return out


# ---- the run -----------------------------------------------------------------------------

def log(text):
    print(text, file=sys.stderr, flush=True)


def run(tmp=None, quick=False):
    """Measure both stores; returns the results as a dict (see ``report``)."""
    rounds, backlog_reps = (25, 200) if quick else (100, 500)
    own = tmp is None
    tmp = tempfile.mkdtemp(prefix="nbqueue-scale-") if own else tmp
    result = {"rounds": rounds, "per_round": ROUND, "sizes": {}, "fill_s": {}, "ops": {},
              "backlog": {}, "open": None}
    try:
        for store_label in ("memory", "sqlite"):
            benches = {}
            for size_label, scheduled, finished in SIZES:
                storage = "memory" if store_label == "memory" else os.path.join(
                    tmp, f"scale-{size_label}")
                log(f"scale: filling {store_label} {size_label} ({finished:,} finished + "
                    f"{scheduled:,} scheduled)...")
                b = benches[size_label] = Bench(storage, store_label, size_label, scheduled, finished)
                result["sizes"][size_label] = b.size
                result["fill_s"].setdefault(store_label, {})[size_label] = b.fill_s
            small, large = benches["small"], benches["large"]
            try:
                log(f"scale: {store_label}: {rounds} rounds of {ROUND} per operation...")
                small.round(record=False)
                large.round(record=False)
                gc.collect()
                for _ in range(rounds):
                    small.round()
                    large.round()
                small.check_size()
                large.check_size()
                result["ops"][store_label] = {
                    op: {"small_us": statistics.median(small.samples[op]) / 1000,
                         "large_us": statistics.median(large.samples[op]) / 1000,
                         "n": len(small.samples[op])} for op in OPS}
                for row in result["ops"][store_label].values():
                    row["ratio"] = row["large_us"] / row["small_us"]
                log(f"scale: {store_label}: claim+finish with {BACKLOG:,} pending...")
                result["backlog"][store_label] = {
                    "pending": BACKLOG, "reps": backlog_reps,
                    "backlog_us": large.backlog(BACKLOG, backlog_reps),
                    "normal_us": result["ops"][store_label]["claim+finish"]["large_us"]}
                if store_label == "sqlite":
                    more = OPEN_RECORDS - sum(large.q.counts().values())
                    log(f"scale: sqlite: topping the large store up to {OPEN_RECORDS:,} records...")
                    t0 = time.perf_counter()
                    large.add_copies(large.base, more, eta=time.time() + HOUR)
                    top_up = time.perf_counter() - t0
                    name, directory = large.q.name, large.store.directory
            finally:
                small.close()
                large.close()
            if store_label == "sqlite":
                log("scale: sqlite: opening the 100,000-record store...")
                result["open"] = {"records": OPEN_RECORDS, "top_up_s": top_up,
                                  **open_times(name, directory)}
    finally:
        if own:
            shutil.rmtree(tmp, ignore_errors=True)
    result["flagged"] = [f"{store} {op} ({row['ratio']:.2f}x)"
                         for store, ops in result["ops"].items() for op, row in ops.items()
                         if row["ratio"] >= FLAG]
    return result


def summary(result):
    """(worst ratio of the issue's operations per store, median subprocess open ms)."""
    worst = {store: max(ops[op]["ratio"] for op in ISSUE_OPS) for store, ops in result["ops"].items()}
    opened = result["open"]
    open_ms = statistics.median(r["open_ms"] for r in opened["subprocess"]) if opened else None
    return worst, open_ms


def report(result):
    sizes = result["sizes"]
    print(f"\nscale: median us per call ({result['rounds']} rounds x {result['per_round']} calls; "
          f"small = {sizes['small']:,} records: 80 finished + 20 scheduled; large = "
          f"{sizes['large']:,}: 20,000 finished + 5,000 scheduled; workers=0)\n")
    print("| operation | store | small (us) | large (us) | large / small |")
    print("|---|---|--:|--:|--:|")
    for op in OPS:
        for store, ops in result["ops"].items():
            row = ops[op]
            flag = " **>= 2x**" if row["ratio"] >= FLAG else ""
            extra = "" if op in ISSUE_OPS else " (extra)"
            print(f"| {op}{extra} | {store} | {row['small_us']:,.1f} | {row['large_us']:,.1f} "
                  f"| {row['ratio']:.2f}x{flag} |")
    print("\n| fill (store ops) | small | large |")
    print("|---|--:|--:|")
    for store, fill in result["fill_s"].items():
        print(f"| {store} | {fill['small']:.2f} s | {fill['large']:.2f} s |")
    print(f"\n| claim+finish on the large store | backlog 20 (us) | backlog "
          f"{BACKLOG:,} pending (us) | ratio |")
    print("|---|--:|--:|--:|")
    for store, b in result["backlog"].items():
        ratio = b["backlog_us"] / b["normal_us"]
        print(f"| {store} | {b['normal_us']:,.1f} | {b['backlog_us']:,.1f} | {ratio:.2f}x"
              f"{' **>= 2x**' if ratio >= FLAG else ''} |")
    opened = result["open"]
    if opened:
        print(f"\nSQLite store of {opened['records']:,} records (topped up in {opened['top_up_s']:.1f} s):")
        for where, runs in (("a fresh subprocess", opened["subprocess"]),
                            ("the same process, after shutdown", opened["in_process"])):
            print(f"  open in {where}: " + ", ".join(f"{r['open_ms']:.1f}" for r in runs)
                  + " ms; first dashboard refresh: " + ", ".join(f"{r['refresh_ms']:.1f}" for r in runs)
                  + f" ms (records seen: {runs[0]['records']:,})"
                  + ("" if "import_ms" not in runs[0] else "; imports before it: "
                     + ", ".join(f"{r['import_ms']:.0f}" for r in runs) + " ms"))
    worst, open_ms = summary(result)
    print("\nscale targets: " + "; ".join(
        f"{store} worst ratio of the issue's operations {w:.2f}x (target < 2x)"
        for store, w in worst.items())
          + (f"; open of {opened['records']:,} records {open_ms:.1f} ms (target < 1000 ms)"
             if opened else ""))
    if result["flagged"]:
        print("Ratios of 2x or more: " + ", ".join(result["flagged"]))


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, the same sizes")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    result = run(quick=args.quick)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

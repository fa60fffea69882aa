"""nbqueue process workers and sidecar benchmark: is the kernel still responsive
while tasks burn CPU, and how fast is a sidecar on a disk store?

    python benchmarks/run.py --sidecar [--quick] [--json PATH]   (or python benchmarks/sidecar.py)

The default run of ``benchmarks/run.py`` and ``--quick`` run it too (after the
periodic lateness, before the scale benchmark).

1. Kernel responsiveness. The "kernel" is this process's main thread running a
   loop of 1,000 small pure-Python steps (``step``: a sum over ``range(n)``,
   ``n`` calibrated at the start so that one step takes about 0.7 ms on this
   machine); the loop's wall time is measured idle, and while one, then two,
   CPU-bound pure-Python tasks (``burn``: a busy loop calling
   ``nbqueue.check_cancelled()`` about every 0.3 ms, for at most
   ``BURN_LIMIT`` s) run in
   (a) thread workers: ``Queue(name, storage="memory", workers=k)``,
   (b) process workers: ``Queue(name, storage="memory", workers=k,
   worker_type="process")``,
   and, for reference (not with ``--quick``), (c) ``k`` bare ``multiprocessing``
   spawn processes running the same busy loop without nbqueue: what the
   hardware gives (with two CPUs, two busy processes and the loop share two
   cores).

   The loop starts once every task has written its marker (it runs, not just
   claimed); after the loop every task must still be ``running``, then they are
   cancelled. Each loaded loop is compared with the idle loops just before and
   after it; reported: the median ratio over the quiet repeats of 5 (2 with
   ``--quick``): those whose idle loops saw at most ``QUIET_CORES`` CPUs busy
   machine-wide (``/proc/stat``). Also: submit to running, cancel to cancelled.

2. Sidecar round trip. A store directory in a temp dir; in this process a
   submit-only ``Queue(name, storage=DIR, workers=0)``; ``q.start_sidecar(
   workers=4, worker_type="process")`` starts ``python -m nbqueue worker DIR -w 4
   -k process`` (timed until it registered). Warm-up: rounds of 8 ``nap(0.2)``
   tasks until all 4 of its child processes ran one (each returns its pid),
   then 20 no-ops. Then 300 sequential ``fn().get()`` of the no-op (100 with
   ``--quick``): p50 and p99 in ms (``run.round_trips``).

3. Sidecar throughput against SqliteHuey: N no-op tasks (3,000; 500 with
   ``--quick``) submitted, then all awaited (``run.throughput``), through the
   sidecar above, and through a SqliteHuey (a file in the temp dir) with its
   consumer, 4 worker threads in this process (``run.HueyRunner``, as in the main
   table; 20 tasks of warm-up). 3 alternating rounds (1 with ``--quick``); the
   median tasks/s of each and their ratio.

The no-op and ``nap`` are shipped by value (cloudpickle), as functions defined
in a notebook are: the sidecar imports nothing of this file. The sidecar is
stopped at the end (``q.stop_sidecar()``, timed; on error too).

Targets: one CPU-bound task in a process worker slows the loop <= 1.1x; sidecar
round trip p50 < 5 ms; sidecar throughput >= SqliteHuey's.
"""

import multiprocessing
import os
import signal
import statistics
import sys
import time

import cloudpickle

import nbqueue

STEPS = 1000
STEP_S = 0.0007       # the calibrated length of one step, idle
BURN_LIMIT = 120.0    # seconds a burn task runs at most (it is cancelled long before)
BURN_CHUNK = 3000     # iterations of a burn task between two cancel checks (~0.3 ms)
START_TIMEOUT = 60.0  # seconds to wait for a task or process to start running
QUIET_CORES = 1.15    # an idle loop with more CPUs busy machine-wide: something else ran
SIDECAR_WORKERS = 4
COLUMNS = ("thread", "process", "bare process")
ROWS = ((1, "one task"), (2, "two tasks"))


# ---- what runs: the kernel's loop, the CPU-bound task, the no-op -----------------------

def step(n):
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def kernel_loop(n, steps=STEPS):
    """Wall time of ``steps`` steps of ``step(n)`` in this thread."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step(n)
    return time.perf_counter() - t0


def busy_ticks():
    """(busy, total) clock ticks of the whole machine so far (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - fields[4], sum(fields)  # all but idle and iowait


def idle_loop(n, steps=STEPS):
    """``(seconds, cores)``: an idle loop, and how many CPUs the whole machine kept
    busy meanwhile (about 1.0: the loop alone; more: something else ran)."""
    before = busy_ticks()
    seconds = kernel_loop(n, steps)
    after = busy_ticks()
    cores = None
    if before is not None and after is not None and after[1] > before[1]:
        cores = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
    return seconds, cores


def calibrate():
    """``n`` such that ``step(n)`` takes about STEP_S here (median of 21 timings)."""
    probe = 10_000
    step(probe)
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        step(probe)
        times.append(time.perf_counter() - t0)
    return max(100, int(probe * STEP_S / statistics.median(times)))


def burn(marker, limit=BURN_LIMIT):
    """A CPU-bound task: says it runs (creates ``marker``), then spins in pure
    Python until cancelled (at most ``limit`` s). Returns how many chunks it ran."""
    open(marker, "w").close()
    end = time.monotonic() + limit
    chunks = 0
    while time.monotonic() < end:
        x = 0
        for i in range(BURN_CHUNK):
            x += i * i % 7
        nbqueue.check_cancelled()
        chunks += 1
    return chunks


def bare_spin(marker):
    """The reference: the same busy loop in a bare process, until terminated."""
    open(marker, "w").close()
    while True:
        x = 0
        for i in range(BURN_CHUNK):
            x += i * i % 7


def noop():
    return time.time()


def nap(seconds):
    """Warm-up: keeps a sidecar worker busy long enough that the others take the
    next tasks; returns the pid of the process it ran in."""
    time.sleep(seconds)
    return os.getpid()


if __name__ != "__main__":
    # Ship this module's functions by value, like a notebook's: neither a sidecar nor
    # a process worker's child has to import this file.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def log(text):
    print(text, file=sys.stderr, flush=True)


def wait_for_markers(markers, what, results=()):
    deadline = time.monotonic() + START_TIMEOUT
    while not all(os.path.exists(m) for m in markers):
        for r in results:
            if r.done():
                r.get()  # raises what the task raised
                raise RuntimeError(f"{what}: task {r.id} ended before the loop started")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not running after {START_TIMEOUT:g} s")
        time.sleep(0.001)


# ---- 1. kernel responsiveness ----------------------------------------------------------

class QueueBurners:
    """``tasks`` burn tasks on a memory queue of ``tasks`` workers of ``kind``."""

    def __init__(self, kind, tasks, tmp):
        self.what = f"{tasks} burn task(s) in {kind} workers"
        self.tmp, self.tasks = tmp, tasks
        self.q = nbqueue.Queue(f"bench-responsive-{kind}-{tasks}", storage="memory",
                               workers=tasks, worker_type=kind)
        self.fn = self.q.task(burn)
        self.results = []
        self.runs = 0

    def start(self):
        self.runs += 1
        markers = [os.path.join(self.tmp, f"{self.q.name}-{self.runs}-{i}") for i in range(self.tasks)]
        self.results = [self.fn(m) for m in markers]
        wait_for_markers(markers, self.what, self.results)

    def check_running(self):
        states = [r.status for r in self.results]
        if any(s != "running" for s in states):
            raise RuntimeError(f"{self.what}: not all running at the end of the loop: {states}")

    def stop(self):
        for r in self.results:
            r.cancel()
        for r in self.results:
            if not r.wait(30):
                raise RuntimeError(f"{self.what}: task {r.id} still {r.status} 30 s after cancel")
            if r.status != "cancelled":
                raise RuntimeError(f"{self.what}: task {r.id} ended {r.status}, not cancelled")

    def close(self):
        self.q.shutdown(wait=True)


class BareBurners:
    """``tasks`` bare spawn processes running the same busy loop (no nbqueue)."""

    def __init__(self, kind, tasks, tmp):
        self.what = f"{tasks} bare busy process(es)"
        self.tmp, self.tasks = tmp, tasks
        self.context = multiprocessing.get_context("spawn")
        self.processes = []
        self.runs = 0

    def start(self):
        self.runs += 1
        markers = [os.path.join(self.tmp, f"bare-{self.tasks}-{self.runs}-{i}") for i in range(self.tasks)]
        self.processes = [self.context.Process(target=bare_spin, args=(m,), daemon=True) for m in markers]
        for p in self.processes:
            p.start()
        wait_for_markers(markers, self.what)

    def check_running(self):
        if not all(p.is_alive() for p in self.processes):
            raise RuntimeError(f"{self.what}: one exited during the loop")

    def stop(self):
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.join(10)

    def close(self):
        self.stop()


def responsiveness(tmp, repeats, columns=COLUMNS, steps=STEPS):
    """Loop times idle and loaded, per row and column; each loaded loop is
    compared with the mean of the idle loops just before and just after it."""
    n = calibrate()
    log(f"sidecar: kernel responsiveness ({steps} steps of step({n}), {repeats} repeats, "
        f"{', '.join(columns)})...")
    out = {row: {} for _, row in ROWS}
    idle, cores = [], []

    def idle_run():
        seconds, busy = idle_loop(n, steps)
        idle.append(seconds)
        cores.append(busy)

    idle_run()
    for column in columns:
        for tasks, row in ROWS:
            burners = (BareBurners if column == "bare process" else QueueBurners)(column, tasks, tmp)
            cell = out[row][column] = {"loop_s": [], "ratios": [], "quiet": [], "start_s": [],
                                       "stop_s": []}
            try:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    burners.start()
                    cell["start_s"].append(time.perf_counter() - t0)
                    loaded = kernel_loop(n, steps)
                    burners.check_running()
                    t0 = time.perf_counter()
                    burners.stop()
                    cell["stop_s"].append(time.perf_counter() - t0)
                    idle_run()
                    cell["loop_s"].append(loaded)
                    cell["ratios"].append(loaded / ((idle[-2] + idle[-1]) / 2))
                    cell["quiet"].append(all(c is None or c <= QUIET_CORES for c in cores[-2:]))
            finally:
                burners.close()
            summarize(cell)
    idle_s = statistics.median(idle)
    known = [c for c in cores if c is not None]
    return {"steps": steps, "step_n": n, "repeats": repeats, "columns": list(columns),
            "idle_s": idle, "idle_median_s": idle_s, "step_ms": idle_s / steps * 1000,
            "idle_busy_cores": cores, "idle_busy_cores_median": statistics.median(known) if known else None,
            "rows": out}


def summarize(cell):
    """The cell's ratio and loop time: medians over its quiet repeats (the idle loops
    around them saw no other load on the machine), or over all if none was quiet."""
    picked = [i for i, q in enumerate(cell["quiet"]) if q] or range(len(cell["ratios"]))
    cell["quiet_n"] = sum(cell["quiet"])
    cell["ratio"] = statistics.median(cell["ratios"][i] for i in picked)
    cell["median_s"] = statistics.median(cell["loop_s"][i] for i in picked)
    cell["ratio_all"] = statistics.median(cell["ratios"])


# ---- 2 and 3. the sidecar ----------------------------------------------------------------

class SidecarRunner:
    """A submit-only queue on a store directory and its sidecar: ``submit()`` /
    ``wait(handle)`` like run.py's runners."""

    label = f"nbqueue sidecar ({SIDECAR_WORKERS} process workers)"

    def __init__(self, directory):
        self.q = nbqueue.Queue("bench-sidecar", storage=directory, workers=0)
        self.fn = self.q.task(noop)
        self.naps = self.q.task(nap)
        self.info, self.stop_s = None, None
        try:
            t0 = time.perf_counter()
            self.info = self.q.start_sidecar(workers=SIDECAR_WORKERS, worker_type="process")
            self.start_s = time.perf_counter() - t0
            if self.info.get("starting") or self.info.get("workers") != SIDECAR_WORKERS \
                    or self.info.get("kind") != "process":
                raise RuntimeError(f"unexpected sidecar: {self.info}")
        except BaseException:
            self.close()
            raise

    def submit(self):
        return self.fn()

    def wait(self, r):
        return r.get(timeout=60)

    def warm_up(self):
        """Until every worker's child process ran a task; returns their pids."""
        pids = set()
        for _ in range(5):
            pids.update(r.get(timeout=60) for r in [self.naps(0.2) for _ in range(2 * SIDECAR_WORKERS)])
            if len(pids) >= SIDECAR_WORKERS:
                break
        for h in [self.submit() for _ in range(20)]:
            self.wait(h)
        return sorted(pids)

    def close(self):
        """Stop the sidecar (on error too), then the submitting queue."""
        try:
            if self.info is not None:
                t0 = time.perf_counter()
                try:
                    stopped = self.q.stop_sidecar(timeout=30)
                except TimeoutError:
                    stopped = self.q.stop_sidecar(now=True, timeout=10)
                self.stop_s = time.perf_counter() - t0
                pid = self.info.get("pid")
                if not stopped and isinstance(pid, int):  # never registered: end it by its pid
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        finally:
            self.q.shutdown(wait=True)


def sidecar_runs(tmp, bench, round_trips, tasks, rounds):
    out = {"workers": SIDECAR_WORKERS, "tasks": tasks, "rounds": rounds,
           "throughput": {"nbqueue sidecar": [], "huey SqliteHuey": []}}
    log(f"sidecar: starting a sidecar ({SIDECAR_WORKERS} process workers) on a disk store...")
    runner = SidecarRunner(os.path.join(tmp, "sidecar-store"))
    huey_runner = None
    try:
        out["start_s"] = runner.start_s
        out["children"] = len(runner.warm_up())
        log(f"sidecar: {round_trips} round trips...")
        rt = bench.round_trips(runner, round_trips, budget=120.0)
        out.update(rt_n=len(rt), rt_p50=bench.pct(rt, 50), rt_p99=bench.pct(rt, 99), rt_max=max(rt))
        import huey
        huey_runner = bench.HueyRunner("huey SqliteHuey", huey.SqliteHuey(
            "bench-sidecar-sqlite", filename=os.path.join(tmp, "huey-sidecar.db")))
        for h in [huey_runner.submit() for _ in range(20)]:  # warm-up, as run.measure does
            huey_runner.wait(h)
        for i in range(rounds):
            log(f"sidecar: throughput, round {i + 1} of {rounds} ({tasks} tasks each)...")
            out["throughput"]["nbqueue sidecar"].append(bench.throughput(runner, tasks))
            out["throughput"]["huey SqliteHuey"].append(bench.throughput(huey_runner, tasks))
    finally:
        try:
            runner.close()
        finally:
            if huey_runner is not None:
                huey_runner.close()
    out["stop_s"] = runner.stop_s
    med = {k: statistics.median(v) for k, v in out["throughput"].items()}
    out["throughput_median"] = med
    out["ratio"] = med["nbqueue sidecar"] / med["huey SqliteHuey"]
    return out


# ---- the run -------------------------------------------------------------------------------

def run(tmp, bench, quick=False):
    """Both parts; ``bench`` is run.py's module (its HueyRunner, throughput,
    round_trips and pct). Returns the results as a dict (see ``report``)."""
    repeats, columns, round_trips, tasks, rounds = (2, COLUMNS[:2], 100, 500, 1) if quick \
        else (5, COLUMNS, 300, 3000, 3)
    directory = os.path.join(tmp, "sidecar")
    os.makedirs(directory, exist_ok=True)
    return {"responsiveness": responsiveness(directory, repeats, columns),
            "sidecar": sidecar_runs(directory, bench, round_trips, tasks, rounds)}


def checks(result):
    """``(name, value, target, ok)`` rows for run.py's check table."""
    rows = result["responsiveness"]["rows"]
    one = rows["one task"]["process"]["ratio"]
    sc = result["sidecar"]
    return [
        ("kernel loop slowdown, one CPU-bound task in a process worker", one, "<= 1.1x", one <= 1.1),
        ("sidecar round trip p50 (ms)", sc["rt_p50"], "< 5", sc["rt_p50"] < 5),
        ("sidecar (4 process workers) throughput vs SqliteHuey", sc["ratio"], ">= 1x", sc["ratio"] >= 1),
    ]


def report(result):
    resp = result["responsiveness"]
    rows, columns = resp["rows"], resp["columns"]
    print(f"\nKernel responsiveness: a main-thread loop of {resp['steps']:,} pure-Python steps "
          f"({resp['step_ms']:.2f} ms each idle; idle loop median {resp['idle_median_s']:.3f} s over "
          f"{len(resp['idle_s'])} runs) while CPU-bound pure-Python tasks run: its time as a ratio "
          f"to the idle loops around it, median over the quiet ones of {resp['repeats']} repeats "
          f"(median loop seconds in brackets)\n")
    names = {"thread": "thread workers", "process": "process workers",
             "bare process": "bare processes (reference, no nbqueue)"}
    print("| busy | " + " | ".join(names[c] for c in columns) + " |")
    print("|---|" + "--:|" * len(columns))
    def shown(cell):
        text = f"{cell['ratio']:.2f}x ({cell['median_s']:.3f} s)"
        n = len(cell["ratios"])
        if cell["quiet_n"] < n:
            text += (f", {cell['quiet_n']} of {n} repeats quiet (all {n}: {cell['ratio_all']:.2f}x)"
                     if cell["quiet_n"] else f", none of {n} repeats quiet")
        return text

    for _, row in ROWS:
        print(f"| {row} | " + " | ".join(shown(rows[row][c]) for c in columns) + " |")
    firsts = {c: [rows[row][c]["start_s"][0] for _, row in ROWS] for c in columns}
    laters = {c: [s for _, row in ROWS for s in rows[row][c]["start_s"][1:]] for c in columns}
    stops = {c: [s for _, row in ROWS for s in rows[row][c]["stop_s"]] for c in columns if c != "bare process"}
    print("\nSubmit to running (ms; the first run of each queue starts its process workers' "
          "children; a bare process is started every time): " + "; ".join(
              f"{c}: first {', '.join(f'{s * 1000:.0f}' for s in firsts[c])}"
              + (f", later median {statistics.median(laters[c]) * 1000:.1f}" if laters[c] else "")
              for c in columns) + ".")
    print("Cancel to cancelled (ms): " + "; ".join(
        f"{c}: median {statistics.median(stops[c]) * 1000:.1f}, max {max(stops[c]) * 1000:.1f}"
        for c in stops) + ".")
    busy = [c for c in resp["idle_busy_cores"] if c is not None]
    if busy:
        loud = sum(c > QUIET_CORES for c in busy)
        print(f"CPUs busy machine-wide during the idle loops (/proc/stat; 1.0: the loop alone): median "
              f"{statistics.median(busy):.2f} of {os.cpu_count()}, max {max(busy):.2f}; "
              + (f"{loud} of {len(busy)} idle loops saw other load (over {QUIET_CORES:g}): a repeat "
                 "next to one is left out of the medians above when its cell has a quiet one."
                 if loud else "no other load seen."))
    sc = result["sidecar"]
    med = sc["throughput_median"]
    print(f"\nSidecar: start_sidecar(workers={sc['workers']}, worker_type='process') on a disk store "
          f"took {sc['start_s'] * 1000:.0f} ms (until registered; {sc['children']} child processes "
          f"seen in the warm-up); stop_sidecar() took "
          f"{'-' if sc['stop_s'] is None else format(sc['stop_s'] * 1000, '.0f')} ms.\n")
    print("| sidecar, submit-only queue (workers=0) in this process | value |")
    print("|---|--:|")
    print(f"| round trip p50 (ms, n={sc['rt_n']}) | {sc['rt_p50']:.3f} |")
    print(f"| round trip p99 (ms) | {sc['rt_p99']:.3f} |")
    print(f"| round trip max (ms) | {sc['rt_max']:.3f} |")
    print(f"\n| throughput, {sc['tasks']:,} no-op tasks (median of {sc['rounds']}) | tasks/s | rounds |")
    print("|---|--:|---|")
    for label, values in sc["throughput"].items():
        shown = ("nbqueue sidecar (4 process workers, another process)" if label == "nbqueue sidecar"
                 else "huey SqliteHuey (consumer: 4 threads in this process)")
        print(f"| {shown} | {med[label]:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    print(f"\nSidecar throughput / SqliteHuey = {sc['ratio']:.2f}x (target >= 1x); one CPU-bound task: "
          f"process worker {rows['one task']['process']['ratio']:.2f}x (target <= 1.1x), thread worker "
          f"{rows['one task']['thread']['ratio']:.2f}x.")


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run as bench  # benchmarks/run.py: it owns the command line and the Huey helper
    return bench.main(["--sidecar", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

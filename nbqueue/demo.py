"""``nbqueue demo``: a terminal tour of the queue on its default durable store.

It submits a few tasks to ``Queue("demo")`` (a store directory, ``./.nbqueue/demo``):
one reporting progress, one that fails twice and is retried, one cancelled
while it runs, one delayed, and prints live status lines until all are done.
Then it fetches every result back by id, as a later cell or process would,
shows a memoized call, and runs two tasks in a sidecar (``nbqueue worker``
beside it, tasks in processes of their own): one to its end, one that never
checks for a cancel, stopped by terminating its process.
"""

import os
import random
import sys
import time

import nbqueue

BAR = 20


def crunch(n):
    """Sum of squares, slowly, with progress."""
    total = 0
    for i in range(n):
        time.sleep(0.04)
        total += i * i
        nbqueue.progress(i + 1, n, f"step {i + 1}")
    return total


def flaky(path):
    """Fails on its first two attempts, as a flaky network call would."""
    attempt = nbqueue.current_task().attempt
    print(f"attempt {attempt}: fetching {path}")
    if attempt < 3:
        raise ConnectionError(f"{path}: connection reset (attempt {attempt})")
    return f"{path}: 200 OK after {attempt} attempts"


def endless():
    """Runs until cancelled."""
    i = 0
    while True:
        i += 1
        nbqueue.progress(i, None, "waiting to be cancelled")  # raises TaskCancelled on cancel
        time.sleep(0.05)


def greet(name):
    return f"hello, {name} (ran at {time.strftime('%H:%M:%S')})"


def slow_square(x):
    time.sleep(0.3)  # stands for an expensive call worth remembering
    return x * x


def _line(r):
    rec = r.queue.store.get(r.id)
    prog = ""
    if rec.progress_total:
        filled = int(BAR * min(1.0, rec.progress_done / rec.progress_total))
        prog = f" [{'#' * filled}{'.' * (BAR - filled)}] {rec.progress_done:g}/{rec.progress_total:g}"
    elif rec.progress_done:
        prog = f" {rec.progress_done:g} ticks"
    note = f" ({rec.message})" if rec.message and rec.status in ("retrying", "cancelled") else ""
    return f"  {rec.name.split('.')[-1]:<8} {rec.status:<10} attempts={rec.attempts}{prog}{note}"


def sleeper():
    """Sleeps in a C call for a minute and never checks for a cancel."""
    time.sleep(60)


def _sidecar_tour(storage, out):
    q = nbqueue.Queue("demo", storage=storage, workers=0)  # this process only submits now
    info = q.start_sidecar(workers=2, worker_type="process")
    out.write(f"\na sidecar: pid {info['pid']}, {info['workers']} {info['kind']} workers "
              f"(this process: {os.getpid()}); it outlives whoever started it\n")
    try:
        busy, stuck = q.task(crunch)(10), q.task(sleeper)()
        while stuck.status != "running":
            time.sleep(0.02)
        t = time.monotonic()
        stuck.cancel()
        stuck.wait(timeout=10)
        out.write(f"  sleeper  {stuck.status} {time.monotonic() - t:.2f}s after cancel(), in the "
                  "middle of time.sleep(60): its process was terminated\n")
        out.write(f"  crunch   {busy.get(timeout=30)} (ran in the sidecar)\n")
    finally:
        q.stop_sidecar()
    out.write("  sidecar stopped\n")
    q.shutdown()


def main(storage=None, out=sys.stdout):
    q = nbqueue.Queue("demo", storage=storage, workers=4)
    tasks = {
        "crunch": q.task(crunch),
        "flaky": q.task(flaky, retries=3, retry_delay=0.3, retry_backoff=2.0,
                        retry_on=(ConnectionError,)),
        "endless": q.task(endless),
        "greet": q.task(greet),
    }
    out.write(f"nbqueue demo: queue {q.name!r} on {q.store.directory}\n\n")
    results = [
        tasks["crunch"](40),
        tasks["flaky"]("https://example.invalid/data.csv"),
        tasks["endless"](),
        tasks["greet"].schedule(args=(random.choice(["Ada", "Grace", "Linus"]),), delay=1.5),
    ]
    for r in results:
        out.write(f"submitted {r.name.split('.')[-1]:<8} id={r.id} status={r.status}\n")
    out.write("\n")
    start = time.monotonic()
    cancelled = False
    while True:
        if not cancelled and time.monotonic() - start > 1.0:
            results[2].cancel()
            cancelled = True
            out.write(f"  -- cancelling endless ({results[2].id})\n")
        out.write(f"t={time.monotonic() - start:4.1f}s\n" + "\n".join(_line(r) for r in results) + "\n")
        out.flush()
        if all(r.done() for r in results):
            break
        time.sleep(0.5)
    ids = [r.id for r in results]
    q.shutdown()

    out.write("\nresults fetched back by id (from a new handle on the store):\n")
    again = nbqueue.Queue("demo", storage=storage, workers=1)
    for task_id in ids:
        r = again.result(task_id)
        try:
            value = r.get(timeout=5)
            shown = repr(value)
        except nbqueue.TaskCancelled as exc:
            shown = f"cancelled: {exc}"
        except nbqueue.TaskException as exc:
            shown = f"failed: {exc}"
        out.write(f"  {task_id}  {r.name.split('.')[-1]:<8} {r.status:<10} {shown}\n")
        if r.output:
            out.write("".join(f"      | {line}\n" for line in r.output.splitlines()))
    square = again.task(slow_square, cache=True)
    out.write("\nmemoized: @q.task(cache=True) remembers a value by code and arguments, "
              "also across restarts:\n")
    for _ in range(2):
        t = time.monotonic()
        r = square(12)
        out.write(f"  slow_square(12) = {r.get(timeout=5)}  in {time.monotonic() - t:.2f}s"
                  f"  cached={r.cached}\n")
    counts = again.counts()
    out.write("\nthe store now holds: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
              + " (finished records are kept 7 days: Queue(keep=...))\n")
    again.shutdown()
    _sidecar_tour(storage, out)
    directory = again.store.directory
    out.write(f"\nfetch one later with:  nbqueue result {directory} {ids[0]}\n")
    return ids

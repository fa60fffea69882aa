"""Process workers, the ``nbqueue worker`` command and sidecars, with real
processes on real stores: values, output and pipelines through child processes,
hard timeouts and cancels of tasks stuck in a sleep or in a C call that holds
the GIL, children that die, SIGINT/SIGTERM, a sidecar killed mid-task,
exactly-once under two producers and two consumers, a producer killed mid-submit,
and no child outliving its worker.

Task functions a subprocess must import live at module level here (the
subprocesses get this directory on PYTHONPATH) or in small modules written to
``tmp_path``. Every process a test starts is killed at teardown (``procs``),
its children too, so the suite leaves nothing behind. Linux only (``/proc``).
"""

import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from conftest import append_line, read_lines, unique_name, wait_until

import nbqueue
from nbqueue import serializer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")

# Catastrophic backtracking: about 2**40 steps in one call of the C regex engine,
# which never lets go of the GIL (hours, not seconds).
PATHOLOGICAL = re.compile(r"(a+)+$")
STUCK_SUBJECT = "a" * 40 + "b"


# ---- task functions (module level: a child or another process imports them) ----
def _touch(path):
    if path:
        open(path, "w").close()


def _write_atomically(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _wait_for(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.02)


def square(x):
    """(x*x, the pid that ran it, its parent's pid)."""
    return x * x, os.getpid(), os.getppid()


def add(a, b):
    return a + b


def mul(k, value):
    return k * value


def boom():
    raise ValueError("bad input 42")


def report():
    print("hello from the child")
    print("and from its stderr", file=sys.stderr)
    nbqueue.progress(2, 5, "two of five")
    return "reported"


def chatty(release):
    """Print and report progress at once, then block until ``release`` exists."""
    print("hello from the child")
    nbqueue.progress(2, 5, "two of five")
    _wait_for(release, 30)
    return "released"


def nap(seconds, started=None):
    _touch(started)
    time.sleep(seconds)
    return "woke"


def hog(started=None):
    """Hold the GIL in one C call for far longer than any test runs."""
    _touch(started)
    PATHOLOGICAL.match(STUCK_SUBJECT)
    return "matched"


def _die(how):
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    import ctypes
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    ctypes.string_at(0)  # SIGSEGV


def die_once(marker, how):
    """Die on the first attempt (the marker does not exist yet), succeed after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        _die(how)
    return f"survived on attempt {nbqueue.current_task().attempt}"


def die_always(how):
    _die(how)


def pid_then_sleep(pidfile, seconds):
    _write_atomically(pidfile, str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def long_first_run(marker):
    """First run: note the child's pid and sleep a minute; later runs: finish."""
    if not os.path.exists(marker):
        _write_atomically(marker, str(os.getpid()))
        time.sleep(60)
        return "the first run finished (it should have been handed back)"
    return f"finished on attempt {nbqueue.current_task().attempt}"


def ledgered(ledger):
    """Append one line per run start and per run end; the first attempt never ends."""
    attempt = nbqueue.current_task().attempt
    append_line(ledger, f"start {attempt} {os.getpid()}")
    if attempt == 1:
        time.sleep(60)
    append_line(ledger, f"end {attempt} {os.getpid()}")
    return f"done on attempt {attempt}"


# ---- processes, seen through /proc ----------------------------------------------
def _stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def alive(pid):
    """True if ``pid`` runs (a zombie has ended)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def parent_of(pid):
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def descendants(pid):
    """Every live process below ``pid``."""
    children = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and fields[0] not in (b"Z", b"X"):
                children[int(fields[1])].append(int(name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pids_mentioning(text):
    """Live processes (not this one) whose command line holds ``text``."""
    needle, found = text.encode(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
            if needle in f.read():
                found.append(int(name))
    return found


class Processes:
    """Starts a test's subprocesses (each in a session of its own, its stderr in a
    log file) and SIGKILLs whatever is left of them and their children at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.popens = []
        self.logs = {}
        self.pids = set()  # other processes to kill (sidecars)

    def pythonpath(self, *paths):
        parts = [ROOT, TESTS, *map(str, paths)]
        if os.environ.get("PYTHONPATH"):
            parts.append(os.environ["PYTHONPATH"])
        return os.pathsep.join(parts)

    def start(self, argv, paths=(), cwd=None, stdout=False, env=None):
        """``argv`` in a session of its own; ``env``: variables added to ours."""
        log = self.tmp_path / f"process-{len(self.popens)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else err, stderr=err, text=True,
                env=dict(os.environ, PYTHONPATH=self.pythonpath(*paths), **(env or {})),
                cwd=cwd or ROOT, start_new_session=True)
        self.popens.append(proc)
        self.logs[proc.pid] = log
        return proc

    def worker(self, target, *options, **kwargs):
        """``python -m nbqueue worker TARGET OPTIONS...``"""
        return self.start([sys.executable, "-m", "nbqueue", "worker", target, *options], **kwargs)

    def python(self, code, *args, **kwargs):
        return self.start([sys.executable, "-c", textwrap.dedent(code), *args], **kwargs)

    def log(self, proc):
        return self.logs[proc.pid].read_text()

    def track(self, pid):
        self.pids.add(pid)

    def cleanup(self):
        # Our processes and sidecars lead sessions (so process groups) of their own:
        # killing the group also reaches children orphaned by a dead leader.
        leaders = {p.pid for p in self.popens} | self.pids
        roots = leaders | set(_pids_mentioning(str(self.tmp_path)))
        doomed = set()
        for pid in roots:
            if alive(pid):
                doomed |= {pid} | descendants(pid)
        for pgid in leaders:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in doomed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.popens:
            if proc.stdout is not None:
                proc.stdout.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        wait_until(lambda: not any(alive(pid) for pid in doomed), timeout=10)


@pytest.fixture
def procs(tmp_path):
    processes = Processes(tmp_path)
    yield processes
    processes.cleanup()


@pytest.fixture
def queues(tmp_path):
    """``queues(storage, **kwargs)``: a Queue on "memory", on a new store directory
    ("disk") or on a given directory; all shut down at teardown (running tasks
    cancelled first, so a failed test never waits for a stuck task)."""
    made = []

    def make(storage="disk", name=None, **kwargs):
        name = name or unique_name("sc")
        if storage == "disk":
            storage = str(tmp_path / f"store-{name}")
        q = nbqueue.Queue(name, storage=storage, **kwargs)
        made.append(q)
        return q

    make.made = made
    yield make
    for q in reversed(made):
        with contextlib.suppress(Exception):  # best effort: the test may have closed it
            for rec in q.store.page(status="running", limit=None):
                q.cancel(rec.id)
        q.shutdown(wait=True, cancel_pending=True)


def _registered(q, pid):
    """The store's registration of the worker process ``pid``, or None."""
    for worker, info in q.store.registered_workers().items():
        if info.get("pid") == pid:
            return dict(info, worker=worker)
    return None


def _write_module(directory, name, code):
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(code))
    return directory


# =============================================================================
# 1. Process workers in this process: values, output, pipelines, closures
# =============================================================================
def test_process_workers_return_values_output_pipelines_and_closures(store_kind, queues):
    q = queues(store_kind, workers=2, worker_type="process")

    value, pid, _ = q.task(square)(7).get(timeout=30)
    assert value == 49 and pid != os.getpid()  # it ran in a child process

    r = q.task(report)()
    assert r.get(timeout=30) == "reported"
    assert "hello from the child" in r.output and "and from its stderr" in r.output
    assert tuple(r.progress) == (2, 5, "two of five")
    assert r.status == "succeeded" and r.attempts == 1

    steps = q.enqueue(q.task(add).s(1, 2).then(q.task(mul), 10))
    assert steps.get(timeout=30) == [3, 30]

    offset = 100

    @q.task
    def shifted(x):  # a closure over a local: shipped by value (cloudpickle)
        return x + offset, os.getpid()

    triple = q.task(lambda x: x * 3, name="triple")
    (shifted_value, shifted_pid), tripled = shifted(1).get(timeout=30), triple(5).get(timeout=30)
    assert shifted_value == 101 and shifted_pid != os.getpid()
    assert tripled == 15


def test_functions_defined_in_main_are_shipped_to_process_workers(tmp_path, procs):
    # A notebook's functions live in __main__; a process worker's child has another
    # __main__, so they must travel by value, on a memory store and on a directory.
    # A script without an ``if __name__ == "__main__"`` guard must not run again in
    # the children either (as multiprocessing's spawn would).
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, sys, nbqueue
        BASE = 1000
        def in_main(x):
            return x + BASE, os.getpid()
        out = []
        for n, storage in enumerate(("memory", sys.argv[1])):
            q = nbqueue.Queue("main-%d" % n, storage=storage, workers=1, worker_type="process")
            value, pid = q.task(in_main)(1).get(timeout=30)
            doubled = q.task(lambda x: x * 2, name="double")(21).get(timeout=30)
            out.append((value, pid != os.getpid(), doubled))
            q.shutdown()
        print(out)
    """))
    p = procs.start([sys.executable, script, tmp_path / "store"], stdout=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, procs.log(p)
    assert out.strip().splitlines() == ["[(1001, True, 42), (1001, True, 42)]"], out


def test_prints_and_progress_reach_the_record_while_the_task_runs(store_kind, queues, tmp_path):
    q = queues(store_kind, workers=1, worker_type="process")
    release = tmp_path / "release"
    r = q.task(chatty)(str(release))
    try:
        assert wait_until(lambda: r.status == "running", timeout=30)
        live = wait_until(lambda: "hello from the child" in r.output and r.progress.done == 2,
                          timeout=3)
        seen = (r.status, r.output, tuple(r.progress))
    finally:
        release.touch()
    assert r.get(timeout=30) == "released"
    assert "hello from the child" in r.output and tuple(r.progress) == (2, 5, "two of five")
    assert live, (
        "output and progress a task in a child process writes within its first 0.1 s "
        "(then goes quiet) never reach the record while it runs: the child has no "
        f"periodic flush (status, output, progress seen: {seen!r})")


# =============================================================================
# 2. Hard timeouts, 3. cancel of a running task
# =============================================================================
def test_timeout_terminates_a_task_stuck_in_sleep_or_in_a_gil_holding_c_call(store_kind, queues):
    q = queues(store_kind, workers=3, worker_type="process")
    sleeper = q.task(timeout=0.5, retries=1, name="sleeper")(nap)
    hogger = q.task(timeout=0.5, retries=1, name="hogger")(hog)
    hog_once = q.task(timeout=0.5, name="hog_once")(hog)
    t0 = time.monotonic()
    runs = {"sleeper": sleeper(30), "hogger": hogger(), "hog_once": hog_once()}
    for name, r in runs.items():
        exc = r.exception(timeout=30)
        assert isinstance(exc, nbqueue.TaskTimeout), (name, exc)
    took = time.monotonic() - t0
    # far sooner than the 30 s sleep (the regex would run for hours)
    assert took < 15, f"the timed-out tasks took {took:.1f} s to end"
    for name, attempts, used in (("sleeper", 2, 1), ("hogger", 2, 1), ("hog_once", 1, 0)):
        rec = q.store.get(runs[name].id)
        assert (rec.status, rec.attempts, rec.retries_used) == ("failed", attempts, used), name
        assert "terminated" in rec.error["message"], rec.error
    # the pool replaced the terminated children
    assert q.task(square)(3).get(timeout=30)[0] == 9


def test_cancel_terminates_a_running_sleep_and_a_gil_holding_c_call(store_kind, queues, tmp_path):
    q = queues(store_kind, workers=2, worker_type="process")
    a, b = tmp_path / "sleep-started", tmp_path / "hog-started"
    runs = [q.task(nap)(60, str(a)), q.task(hog)(str(b))]
    assert wait_until(lambda: a.exists() and b.exists(), timeout=30)
    assert all(r.status == "running" for r in runs)
    t0 = time.monotonic()
    assert all(r.cancel() for r in runs)
    assert wait_until(lambda: all(r.status == "cancelled" for r in runs), timeout=10), \
        [r.status for r in runs]
    took = time.monotonic() - t0
    assert took < 5, f"the cancels took {took:.1f} s"
    for r in runs:
        with pytest.raises(nbqueue.TaskCancelled):
            r.get(timeout=1)
    assert q.task(square)(4).get(timeout=30)[0] == 16  # the workers go on, in new children


# =============================================================================
# 4. A child that dies
# =============================================================================
@pytest.mark.parametrize("how, says", [("exit", "exit code 3"), ("segfault", "killed by SIGSEGV"),
                                       ("sigkill", "killed by SIGKILL")],
                         ids=["os_exit", "segfault", "sigkill"])
def test_a_dying_child_fails_the_attempt_with_worker_lost_and_is_replaced(
        store_kind, how, says, queues, tmp_path):
    q = queues(store_kind, workers=1, worker_type="process")
    where = q.task(square)
    _, first_child, _ = where(1).get(timeout=30)

    r = q.task(retries=1, name="die_once")(die_once)(str(tmp_path / "died"), how)
    assert r.get(timeout=30) == "survived on attempt 2"
    rec = q.store.get(r.id)
    assert (rec.status, rec.attempts, rec.retries_used) == ("succeeded", 2, 1)

    lost = q.task(die_always)(how)
    exc = lost.exception(timeout=30)
    assert isinstance(exc, nbqueue.WorkerLost), exc
    assert says in str(exc) and lost.attempts == 1

    value, child, _ = where(2).get(timeout=30)
    assert value == 4 and child != first_child and not alive(first_child)


# =============================================================================
# 5. Unpicklable arguments on a memory process queue
# =============================================================================
def test_unpicklable_arguments_are_refused_at_submit_on_a_memory_process_queue(queues, tmp_path):
    q = queues("memory", workers=1, worker_type="process")
    task = q.task(square)
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 0 \(lock\) of .*square"):
        task(lock)
    with open(tmp_path / "open-file", "w") as fh, \
            pytest.raises(TypeError, match=r"argument 0 \(TextIOWrapper\)"):
        task(fh)
    with pytest.raises(TypeError, match="argument 0"):
        task.map([1, 2, lock])  # all or nothing: 1 and 2 are not stored either
    with pytest.raises(TypeError, match="cannot be pickled"):
        q.task(lambda: lock.locked(), name="holds_a_lock")()  # a closure over a lock
    assert q.tasks() == [] and sum(q.counts().values()) == 0
    # a thread queue on memory keeps arguments by reference: the same call is fine there
    tq = queues("memory", workers=1)
    assert tq.task(id)(lock).get(timeout=10) == id(lock)


# =============================================================================
# 6. The ``nbqueue worker`` command
# =============================================================================
def test_worker_command_runs_and_logs_tasks_and_stops_after_max_tasks(queues, procs):
    q = queues("disk", workers=0)  # this process only submits
    broken = q.task(boom)()
    squares = [q.task(square)(i) for i in range(4)]
    w = procs.worker(q.store.directory, "-w", "2", "-k", "process", "--max-tasks", "3")
    assert w.wait(timeout=60) == 0, procs.log(w)
    log = procs.log(w)
    ran, left = squares[:2], squares[2:]  # FIFO: boom, then the first two squares
    for i, r in enumerate(ran):
        value, pid, ppid = r.get(timeout=5)
        assert value == i * i and ppid == w.pid and pid != w.pid  # in a child of the worker
        assert f"{r.id} started (attempt 1)" in log and f"{r.id} succeeded in" in log
    assert broken.status == "failed"
    assert f"{broken.id} failed" in log and "ValueError: bad input 42" in log
    assert [r.status for r in left] == ["pending", "pending"]  # exited after 3 tasks
    assert _registered(q, w.pid) is None  # it unregistered


@pytest.mark.parametrize("how", ["pid", "terminal"])
def test_sigint_lets_the_running_task_finish_then_exits_0(how, queues, procs, tmp_path):
    q = queues("disk", workers=0)
    w = procs.worker(q.store.directory, "-w", "1", "-k", "process")
    started = tmp_path / "started"
    r = q.task(nap)(1.5, str(started))
    assert wait_until(started.exists, timeout=30), procs.log(w)
    info = _registered(q, w.pid)
    assert info is not None and info["kind"] == "process" and info["workers"] == 1, info
    if how == "pid":
        os.kill(w.pid, signal.SIGINT)
    else:  # Ctrl-C in a terminal: SIGINT to the worker's whole process group
        os.killpg(w.pid, signal.SIGINT)
    assert w.wait(timeout=30) == 0, procs.log(w)
    assert "SIGINT" in procs.log(w)
    rec = q.store.get(r.id)
    assert rec.status == "succeeded", (
        f"after SIGINT to the {'process group' if how == 'terminal' else 'worker'} the "
        f"running task ended {rec.status} ({rec.error and rec.error['message']}): SIGINT must "
        "let it finish (a child that does not ignore SIGINT dies of a Ctrl-C)")
    assert r.get(timeout=1) == "woke" and rec.attempts == 1
    assert _registered(q, w.pid) is None


def test_sigterm_hands_the_running_task_back_and_another_worker_runs_it(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    first = procs.worker(q.store.directory, "-w", "1", "-k", "process")
    marker = tmp_path / "first-run"
    r = q.task(long_first_run)(str(marker))
    assert wait_until(marker.exists, timeout=30), procs.log(first)
    child = int(marker.read_text())
    assert parent_of(child) == first.pid
    os.kill(first.pid, signal.SIGTERM)
    assert first.wait(timeout=15) == 0, procs.log(first)
    rec = q.store.get(r.id)
    assert rec.status == "pending" and rec.attempts == 1, rec
    assert "handed back" in (rec.message or "")
    assert f"handed 1 running task back: {r.id}" in procs.log(first)
    assert wait_until(lambda: not alive(child), timeout=5)  # its child was terminated
    assert _registered(q, first.pid) is None

    second = procs.worker(q.store.directory, "-w", "1", "--max-tasks", "1")
    assert r.get(timeout=30) == "finished on attempt 2"
    assert second.wait(timeout=30) == 0, procs.log(second)
    rec = q.store.get(r.id)
    assert (rec.status, rec.attempts) == ("succeeded", 2)


JOBS_MODULE = """
    import os
    import nbqueue

    HERE = os.path.dirname(os.path.abspath(__file__))
    q = nbqueue.Queue("{queue}", storage=os.path.join(HERE, "store"), workers=2)

    @q.task
    def add(a, b):
        return a + b, os.getppid()

    @q.periodic(every=0.2)
    def tick():
        fd = os.open(os.path.join(HERE, "ticks"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, ("%d\\n" % os.getppid()).encode())
        os.close(fd)
"""


def test_worker_command_on_module_var_runs_its_tasks_and_periodic_jobs(
        queues, procs, tmp_path, monkeypatch):
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    mods = _write_module(tmp_path / "mods", name, JOBS_MODULE.format(queue=name))
    w = procs.worker(f"{name}:q", "-w", "1", "-k", "process", cwd=mods)
    ticks = mods / "ticks"
    # nothing else runs on this store: the worker's scheduler fires the job
    assert wait_until(lambda: len(read_lines(ticks)) >= 3, timeout=30), procs.log(w)
    assert set(read_lines(ticks)) == {str(w.pid)}  # run by the worker's children
    assert alive(w.pid)

    # submit from here: the module imported without starting workers (as the command does)
    monkeypatch.setattr(nbqueue.registry, "autostart", False)
    monkeypatch.syspath_prepend(str(mods))
    try:
        module = __import__(name)
        queues.made.append(module.q)
        assert module.add(2, 3).get(timeout=30) == (5, w.pid)
    finally:
        sys.modules.pop(name, None)
    log = procs.log(w)
    assert f"on queue '{name}'" in log and f"{name}.tick" in log and "started (attempt 1)" in log
    os.kill(w.pid, signal.SIGINT)
    assert w.wait(timeout=30) == 0, procs.log(w)


HELPER_MODULE = """
    import os, threading
    import nbqueue

    HERE = os.path.dirname(os.path.abspath(__file__))
    q = nbqueue.Queue("{queue}", storage=os.path.join(HERE, "store"), workers=2)

    def nbqueue_threads():  # not a task: a child that unpickles `where` imports this module
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("nbqueue-{queue}-"))

    @q.task
    def where():
        return os.getpid(), threading.current_thread().name, nbqueue_threads()
"""


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_worker_that_imports_a_tasks_module_starts_no_second_queue(
        kind, queues, procs, tmp_path, monkeypatch):
    name = f"helpers_{uuid.uuid4().hex[:8]}"
    mods = _write_module(tmp_path / "mods", name, HELPER_MODULE.format(queue=name))
    monkeypatch.setattr(nbqueue.registry, "autostart", False)
    monkeypatch.syspath_prepend(str(mods))
    try:
        module = __import__(name)
        queues.made.append(module.q)
        if kind == "process":  # module:var; each child imports the module again
            procs.worker(f"{name}:q", "-w", "1", "-k", "process", cwd=mods)
        else:  # a store directory: the worker imports the module at the first task
            procs.worker(mods / "store", "-w", "1", "-k", "thread", paths=[mods])
        runs = [module.where() for _ in range(6)]
        seen = [r.get(timeout=30) for r in runs]
    finally:
        sys.modules.pop(name, None)
    where = "a child of the worker" if kind == "process" else "the worker process"
    extra = [threads for _, _, threads in seen
             if threads != ([] if kind == "process" else
                            [f"nbqueue-{name}-heartbeat", f"nbqueue-{name}-scheduler",
                             f"nbqueue-{name}-worker-0"])]
    assert not extra, (
        f"importing the task's module in {where} "
        f"started the module's Queue there (registry.autostart is True): nbqueue threads seen "
        f"{extra[0]} (tasks ran in threads {sorted({t for _, t, _ in seen})})")


def test_worker_command_refuses_bad_arguments_with_a_clear_message(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    mem = _write_module(tmp_path / "mods", "memq", """
        import nbqueue
        q = nbqueue.Queue("memq", storage="memory")
        not_a_queue = 42
    """)
    cases = [
        ((q.store.directory, "-w", "0"), "-w=0: give a whole number >= 1"),
        ((q.store.directory, "--max-tasks", "0"), "--max-tasks=0"),
        ((q.store.directory, "--lease", "nan"), "--lease"),
        ((tmp_path / "missing",), "is not an nbqueue store"),
        (("memq:q",), "memory store"),
        (("memq:not_a_queue",), "not an nbqueue Queue"),
    ]
    for argv, words in cases:
        out = subprocess.run([sys.executable, "-m", "nbqueue", "worker", *map(str, argv)],
                             check=False, capture_output=True, text=True, cwd=mem, timeout=60,
                             env=dict(os.environ, PYTHONPATH=procs.pythonpath()))
        assert out.returncode != 0, (argv, out.stderr)
        assert out.stderr.startswith("nbqueue: ") and words in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr, (argv, out.stderr)
    bad_kind = subprocess.run([sys.executable, "-m", "nbqueue", "worker", q.store.directory,
                               "-k", "fiber"], check=False, capture_output=True, text=True, timeout=60)
    assert bad_kind.returncode == 2 and "invalid choice: 'fiber'" in bad_kind.stderr


def test_worker_command_on_a_module_that_does_not_exist_says_so(tmp_path, procs):
    out = subprocess.run([sys.executable, "-m", "nbqueue", "worker", "nosuchmodule_xyz:q"],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env=dict(os.environ, PYTHONPATH=procs.pythonpath()))
    assert out.returncode != 0
    assert "nosuchmodule_xyz" in out.stderr
    assert out.stderr.startswith("nbqueue: ") and "Traceback" not in out.stderr, (
        "`nbqueue worker nosuchmodule:q` dies with a raw ModuleNotFoundError traceback "
        "instead of one 'nbqueue: ...' line like the other bad arguments:\n" + out.stderr)


# =============================================================================
# 7. Sidecars
# =============================================================================
def test_sidecar_starts_is_found_reused_and_stopped(queues, procs, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", procs.pythonpath())  # it imports this file's tasks
    with pytest.raises(nbqueue.NbqueueError, match="store directory"):
        queues("memory", workers=0).start_sidecar()
    q = queues("disk", workers=0)
    assert q.sidecar_status() is None
    status = q.start_sidecar(workers=1)
    procs.track(status["pid"])
    assert alive(status["pid"]) and status["pid"] != os.getpid()
    assert (status["kind"], status["workers"], status["host"]) == ("process", 1, os.uname().nodename)
    assert q.sidecar_status()["pid"] == status["pid"]
    board = q.dashboard().text()  # the dashboard shows it: pid, workers, busy, heartbeat
    assert f"sidecar pid {status['pid']} on {status['host']}: 1 process workers, 0 busy" in board
    assert "last heartbeat" in board
    again = q.start_sidecar(workers=3)
    assert again["pid"] == status["pid"] and again["workers"] == 1  # the live one, reused

    value, _, ppid = q.task(square)(6).get(timeout=30)
    assert value == 36 and ppid == status["pid"]  # run in a child of the sidecar

    assert q.stop_sidecar() is True
    assert wait_until(lambda: not alive(status["pid"]), timeout=10)
    assert q.sidecar_status() is None and q.stop_sidecar() is False
    with open(os.path.join(q.store.directory, "sidecar.log")) as f:
        log = f.read()
    assert "succeeded" in log and "stopped" in log


def test_a_sidecar_holds_its_claims_with_the_lease_of_its_queue(queues, procs, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", procs.pythonpath())
    q = queues("disk", workers=0, lease=1.0)
    procs.track(q.start_sidecar(workers=1)["pid"])
    started = tmp_path / "started"
    r = q.task(nap)(1.0, str(started))
    assert wait_until(started.exists, timeout=30)
    rec = q.store.get(r.id)
    held_for = rec.lease_until - time.time()
    assert r.get(timeout=30) == "woke"
    assert q.stop_sidecar() is True
    assert held_for <= q.lease + 0.5, (
        f"the sidecar started by Queue(lease={q.lease}) claims tasks for {held_for:.1f} s: "
        "start_sidecar does not pass the queue's lease on (nbqueue worker has no --lease), so a "
        "killed sidecar's task waits out the default 10 s lease")


def test_a_sidecar_killed_mid_task_loses_it_to_the_next_one_which_runs_it_once(
        queues, procs, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", procs.pythonpath())
    q = queues("disk", workers=0, lease=1.0)  # this process reaps expired leases too
    ledger = tmp_path / "ledger"
    first = q.start_sidecar(workers=1)
    procs.track(first["pid"])
    r = q.task(ledgered)(str(ledger))
    assert wait_until(lambda: len(read_lines(ledger)) == 1, timeout=30)
    child = int(read_lines(ledger)[0].split()[2])
    assert parent_of(child) == first["pid"]
    # while its sidecar lives, nobody else runs the task, past any lease
    time.sleep(2.5 * q.lease)
    assert [line.split()[:2] for line in read_lines(ledger)] == [["start", "1"]]
    assert (r.status, r.attempts) == ("running", 1)

    os.kill(first["pid"], signal.SIGKILL)
    # gone from /proc: reaped by start_sidecar's reaper thread (a zombie is still taken
    # for alive, see test_a_killed_worker_not_yet_reaped_is_not_taken_for_alive)
    assert wait_until(lambda: _stat(first["pid"]) is None and not alive(child), timeout=10)
    second = q.start_sidecar(workers=1)
    procs.track(second["pid"])
    assert second["pid"] != first["pid"]
    assert r.get(timeout=40) == "done on attempt 2"
    rec = q.store.get(r.id, load=("result",))
    assert (rec.status, rec.attempts, rec.recoveries, rec.retries_used) == ("succeeded", 2, 1, 0)
    assert [line.split()[:2] for line in read_lines(ledger)] == [["start", "1"], ["start", "2"],
                                                              ["end", "2"]]
    assert q.stop_sidecar() is True


def test_a_killed_worker_not_yet_reaped_is_not_taken_for_alive(queues, procs):
    # A process killed by SIGKILL stays in /proc as a zombie until its parent waits
    # for it (here: never, the test holds the Popen). It runs nothing any more.
    q = queues("disk", workers=0)
    w = procs.worker(q.store.directory, "--sidecar", "-w", "1")
    assert wait_until(lambda: q.sidecar_status() is not None, timeout=30), procs.log(w)
    assert q.sidecar_status()["pid"] == w.pid
    os.kill(w.pid, signal.SIGKILL)
    assert wait_until(lambda: (_stat(w.pid) or [b"?"])[0] == b"Z", timeout=10)
    status = q.sidecar_status()
    assert status is None, (
        "a killed worker that its parent has not reaped yet (a zombie) is taken for "
        "alive (liveness.holder_alive only compares start times): sidecar_status() reports "
        f"it, start_sidecar() would reuse it and its claims are renewed for ever: {status}")


# =============================================================================
# 8. Exactly once: producers and consumers in separate processes
# =============================================================================
LEDGER_MODULE = """
    import os

    def append_line(path, key, blob=None):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, ("%s %d\\n" % (key, os.getppid())).encode())
        finally:
            os.close(fd)
        return key if blob is None else len(blob)
"""

PRODUCER = """
    import os, sys, time, nbqueue, ledger_tasks
    store, name, ledger, prefix, count, mine, theirs = sys.argv[1:8]
    q = nbqueue.Queue(name, storage=store, workers=0)
    task = q.task(ledger_tasks.append_line)
    ids = [task(ledger, "%s-%d" % (prefix, i)).id for i in range(int(count))]
    with open(mine + ".tmp", "w") as f:
        f.write(" ".join(ids))
    os.rename(mine + ".tmp", mine)
    while not os.path.exists(theirs):
        time.sleep(0.05)
    # every result, its own and the other kernel's, read from this one
    other = open(theirs).read().split()
    values = [q.result(i).get(timeout=120) for i in ids + other]
    assert values[:len(ids)] == ["%s-%d" % (prefix, i) for i in range(int(count))], values[:3]
    assert len(set(values)) == len(ids) + len(other)
    q.shutdown()
    print(" ".join(ids))
"""


def test_two_kernels_and_two_sidecars_run_2000_tasks_exactly_once(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    store = q.store.directory
    mods = _write_module(tmp_path / "mods", "ledger_tasks", LEDGER_MODULE)
    ledger = tmp_path / "ledger"
    consumers = [procs.worker(store, "-k", "process", "-w", "2", paths=[mods]) for _ in range(2)]
    assert wait_until(lambda: all(_registered(q, c.pid) for c in consumers), timeout=30)
    # two kernels (producers), 1,000 tasks each; each reads all 2,000 results at the end
    producers = [procs.python(PRODUCER, store, q.name, ledger, f"p{n}", 1000,
                              tmp_path / f"ids{n}", tmp_path / f"ids{1 - n}", paths=[mods],
                              stdout=True) for n in range(2)]
    ids = []
    for p in producers:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, procs.log(p)
        ids += out.split()
    assert len(ids) == len(set(ids)) == 2000
    assert q.counts()["succeeded"] == 2000, q.counts()
    lines = read_lines(ledger)
    runs = collections.Counter(line.split()[0] for line in lines)
    assert set(runs) == {f"p{n}-{i}" for n in range(2) for i in range(1000)}
    assert [key for key, n in runs.items() if n != 1] == []  # each ran exactly once
    assert {line.split()[1] for line in lines} == {str(c.pid) for c in consumers}  # both worked
    assert {rec.attempts for rec in q.store.page(limit=None)} == {1}
    for c in consumers:
        c.send_signal(signal.SIGINT)
    for c in consumers:
        assert c.wait(timeout=30) == 0, procs.log(c)


ENDLESS_PRODUCER = """
    import sys, nbqueue, ledger_tasks
    store, name, ledger = sys.argv[1:4]
    q = nbqueue.Queue(name, storage=store, workers=0)
    task = q.task(ledger_tasks.append_line)
    big = b"x" * (1024 * 1024 + 7)   # stored as a file beside the database
    i = 0
    while True:
        task(ledger, "k%d" % i, big if i % 10 == 0 else None)
        i += 1
        print(i, flush=True)
"""


def test_a_producer_killed_mid_submit_leaves_only_whole_tasks(queues, procs, tmp_path, monkeypatch,
                                                              request):
    q = queues("disk", workers=0)
    store = q.store.directory
    mods = _write_module(tmp_path / "mods", "ledger_tasks", LEDGER_MODULE)
    monkeypatch.syspath_prepend(str(mods))  # to unpickle the stored calls here
    request.addfinalizer(lambda: sys.modules.pop("ledger_tasks", None))
    ledger = tmp_path / "ledger"
    p = procs.python(ENDLESS_PRODUCER, store, q.name, ledger, paths=[mods], stdout=True)
    acknowledged = 0
    while acknowledged < 150:
        line = p.stdout.readline()
        assert line, procs.log(p)
        acknowledged = int(line)
    p.kill()
    p.wait(timeout=10)

    recs = q.store.page(limit=None)
    assert len(recs) >= acknowledged
    keys = []
    for rec in recs:
        full = q.store.get(rec.id, load=("payload",))
        assert full is not None and full.status == "pending"
        args = serializer.decode_call(full.payload)[1]
        keys.append(args[1])
        if int(args[1][1:]) % 10 == 0:
            assert args[2] == b"x" * (1024 * 1024 + 7)
    assert sorted(keys, key=lambda k: int(k[1:])) == [f"k{i}" for i in range(len(recs))]

    w = procs.worker(store, "-w", "2", "--max-tasks", str(len(recs)), paths=[mods])
    assert w.wait(timeout=60) == 0, procs.log(w)
    assert q.counts()["succeeded"] == len(recs)
    runs = collections.Counter(line.split()[0] for line in read_lines(ledger))
    assert runs == collections.Counter(keys)  # every stored task ran, exactly once


# =============================================================================
# 9. A worker's children never outlive it
# =============================================================================
def test_a_killed_workers_children_do_not_outlive_it(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    w = procs.worker(q.store.directory, "-k", "process", "-w", "2")
    pidfile = tmp_path / "child.pid"
    q.task(pid_then_sleep)(str(pidfile), 60)
    assert wait_until(pidfile.exists, timeout=30), procs.log(w)
    child = int(pidfile.read_text())
    assert parent_of(child) == w.pid and alive(child)
    family = descendants(w.pid)
    assert child in family
    os.kill(w.pid, signal.SIGKILL)
    w.wait(timeout=10)
    assert wait_until(lambda: not any(alive(pid) for pid in family), timeout=10), \
        {pid: _stat(pid) for pid in family if alive(pid)}


# =============================================================================
# 10. What a review found: each case once broken, here so it stays fixed
# =============================================================================
def fail_plainly():
    raise ValueError("plain failure")


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_failed_tasks_traceback_starts_at_the_users_code(queues, worker_type):
    q = queues("disk", workers=1, worker_type=worker_type)
    with pytest.raises(nbqueue.TaskException) as info:
        q.task(fail_plainly)().get(timeout=30)
    frames = [line for line in info.value.traceback.splitlines()
              if line.strip().startswith("File ")]
    assert len(frames) == 1 and frames[0].endswith("in fail_plainly"), info.value.traceback


def stdout_facts():
    sys.stdout.writelines(["a\n", "b\n"])
    logging.basicConfig(format="%(levelname)s %(message)s")  # a handler made in the task
    logging.getLogger("from-the-task").warning("logged")
    return sys.stdout.encoding, sys.stderr.fileno() >= 0


def test_a_process_tasks_stdout_answers_like_a_stream_and_its_logging_is_captured(queues):
    q = queues("memory", workers=1, worker_type="process")
    r = q.task(stdout_facts)()
    encoding, fileno = r.get(timeout=30)
    assert encoding and fileno and r.output == "a\nb\nWARNING logged\n"


def test_modules_named_like_the_standard_library_beside_the_notebook_break_no_child(
        queues, tmp_path, monkeypatch):
    for name in ("queue", "struct", "signal", "socket"):
        (tmp_path / f"{name}.py").write_text("raise RuntimeError('a user module was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a notebook's directory is on its sys.path
    q = queues("memory", workers=1, worker_type="process")
    assert q.task(square)(3).get(timeout=30)[0] == 9


def test_a_process_tasks_timeout_counts_from_when_its_call_was_loaded(queues, tmp_path, monkeypatch):
    mods = _write_module(tmp_path / "mods", "slow_to_import",
                         "import time\ntime.sleep(1.0)\n\n\ndef quick():\n    return 'quick'\n")
    monkeypatch.syspath_prepend(str(mods))
    slow_to_import = __import__("slow_to_import")
    q = queues("memory", workers=1, worker_type="process")
    r = q.task(slow_to_import.quick, timeout=0.8)()  # its import alone takes 1 s in the child
    assert r.get(timeout=30) == "quick" and r.attempts == 1


def test_retry_works_on_a_memory_process_queue(queues):
    q = queues("memory", workers=1, worker_type="process")
    r = q.task(boom)()
    with pytest.raises(nbqueue.TaskException):
        r.get(timeout=30)
    again = r.retry()
    with pytest.raises(nbqueue.TaskException, match="bad input 42"):
        again.get(timeout=30)
    assert q.store.get(again.id).message == f"retry of {r.id}"


def test_an_argument_refused_by_a_memory_process_queue_points_to_thread_workers(queues):
    q = queues("memory", workers=0, worker_type="process")
    with pytest.raises(TypeError, match="worker_type='thread'") as info:
        q.task(square)(threading.Lock())
    assert "storage='memory')" not in str(info.value)  # it is on memory already


def test_a_task_cancelled_while_its_worker_finishes_up_is_cancelled(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    w = procs.worker(q.store.directory, "-w", "1", "-k", "process")
    started = tmp_path / "started"
    r = q.task(nap)(30, str(started))
    assert wait_until(started.exists, timeout=30), procs.log(w)
    w.send_signal(signal.SIGINT)  # finish the running tasks, then exit...
    assert wait_until(lambda: "finishing the running tasks" in procs.log(w), timeout=10)
    r.cancel()  # ...but a cancel still reaches them meanwhile
    assert wait_until(lambda: r.status == "cancelled", timeout=10), r.status
    assert w.wait(timeout=15) == 0, procs.log(w)


def test_sigterm_to_the_whole_process_group_hands_every_task_back(queues, procs, tmp_path):
    q = queues("disk", workers=0)
    w = procs.worker(q.store.directory, "-w", "2", "-k", "process")
    marks = [tmp_path / f"started-{i}" for i in range(2)]
    rs = [q.task(nap)(30, str(m)) for m in marks]
    assert wait_until(lambda: all(m.exists() for m in marks), timeout=30), procs.log(w)
    os.killpg(w.pid, signal.SIGTERM)  # systemd's KillMode=control-group, kill -TERM -PGID
    assert w.wait(timeout=15) == 0, procs.log(w)
    for r in rs:
        rec = q.store.get(r.id)
        assert rec.status == "pending" and "handed back" in rec.message, rec


def test_a_sidecar_that_is_stopping_is_not_reused(queues, procs, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", procs.pythonpath())  # it imports this file's tasks
    q = queues("disk", workers=0)
    first = q.start_sidecar(workers=1)
    procs.track(first["pid"])
    started = tmp_path / "started"
    r = q.task(nap)(3, str(started))
    assert wait_until(started.exists, timeout=30)
    with pytest.raises(TimeoutError, match=r"stop_sidecar\(now=True\)"):
        q.stop_sidecar(timeout=0.5)  # it finishes its task first
    second = q.start_sidecar(workers=1)
    procs.track(second["pid"])
    assert second["pid"] != first["pid"]
    assert q.task(square)(4).get(timeout=30)[2] == second["pid"]  # new work goes to the new one
    assert r.get(timeout=30) == "woke"  # and the first one finished its task, not handed back
    assert wait_until(lambda: not alive(first["pid"]), timeout=10)
    assert q.stop_sidecar() is True


def test_a_shipped_cell_whose_last_expression_cannot_be_pickled_says_so(queues):
    from nbqueue.cellrun import run_shipped_cell
    q = queues("memory", workers=1, worker_type="process")
    r = q.task(run_shipped_cell)("x = 1\n(i for i in range(3))", "<cell>", {}, {"x"})
    with pytest.raises(nbqueue.TaskException, match="last expression is a generator"):
        r.get(timeout=30)

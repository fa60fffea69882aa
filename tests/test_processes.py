"""Real processes on one disk store: results read by a second process, a worker
killed with SIGKILL whose task is run again, and claims that never overlap."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import nbqueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(code, *args, wait=True, timeout=60):
    """Run ``code`` in a fresh Python; its functions live in its own __main__."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def test_results_survive_the_process_that_made_them(tmp_path):
    store = str(tmp_path / "store")
    out = run_script("""
        import sys, nbqueue
        q = nbqueue.Queue("shared", storage=sys.argv[1])
        @q.task
        def square(x):              # defined in __main__: shipped by value
            print("squaring", x)
            return {"x": x, "square": x * x}
        @q.task
        def broken():
            raise ValueError("bad input 42")
        ok, bad = square(7), broken()
        ok.wait(30); bad.wait(30)
        q.shutdown()
        print(ok.id, bad.id)
    """, store)
    ok_id, bad_id = out.split()[-2:]
    q = nbqueue.Queue("shared", storage=store, workers=0)
    try:
        r = q.result(ok_id)
        assert r.get(timeout=5) == {"x": 7, "square": 49}
        assert r.get() == {"x": 7, "square": 49}  # reads are not destructive
        assert r.output == "squaring 7\n" and r.status == "succeeded" and r.attempts == 1
        with pytest.raises(nbqueue.TaskException) as info:
            nbqueue.Result(bad_id, q).get(timeout=5)
        assert info.value.exc_type == "ValueError" and "bad input 42" in str(info.value)
        assert "broken" in info.value.traceback
        assert isinstance(info.value.exc, ValueError)
        with pytest.raises(nbqueue.TaskNotFound):
            q.result(uuid.uuid4().hex)
    finally:
        q.shutdown()


def test_a_second_process_runs_tasks_submitted_here(tmp_path):
    store = str(tmp_path / "store")
    q = nbqueue.Queue("sidecar", storage=store, workers=0)   # submit only
    try:
        @q.task
        def where(tag):
            import os
            return (tag, os.getpid())

        rs = where.map(["a", "b", "c"])
        worker = run_script("""
            import sys, nbqueue
            q = nbqueue.Queue("sidecar", storage=sys.argv[1], workers=2)
            while len(q.tasks(status="succeeded")) < 3:
                q.tasks()[0].wait(0.2)
            q.shutdown()
        """, store, wait=False)
        values = rs.get(timeout=60)
        worker.communicate(timeout=30)
        assert [v[0] for v in values] == ["a", "b", "c"]
        assert {v[1] for v in values} == {worker.pid}
    finally:
        q.shutdown()


@pytest.mark.slow
def test_task_of_a_killed_worker_is_run_again(tmp_path):
    store, marker = str(tmp_path / "store"), tmp_path / "started"
    proc = run_script("""
        import sys, time, nbqueue
        q = nbqueue.Queue("crash", storage=sys.argv[1], lease=1.0)
        @q.task
        def long_job(marker):
            if nbqueue.current_task().attempt == 1:
                open(marker, "w").close()
                time.sleep(120)       # killed here
            return "finished on attempt %d" % nbqueue.current_task().attempt
        r = long_job(sys.argv[2])
        print(r.id, flush=True)
        time.sleep(120)
    """, store, marker, wait=False)
    task_id = proc.stdout.readline().strip()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    q = nbqueue.Queue("crash", storage=store, lease=1.0)  # this process reaps the lease
    try:
        r = q.result(task_id)
        assert r.get(timeout=30) == "finished on attempt 2"
        rec = q.store.get(task_id)
        assert (rec.attempts, rec.recoveries, rec.retries_used) == (2, 1, 0)
    finally:
        q.shutdown()


def test_processes_never_claim_the_same_task(tmp_path):
    store = str(tmp_path / "store")
    q = nbqueue.Queue("race", storage=store, workers=0)
    try:
        @q.task
        def noop(i):
            return i

        rs = noop.map(range(300))
        code = """
            import sys, nbqueue
            from nbqueue.storage.sqlite import SqliteStorage
            s = SqliteStorage(sys.argv[1], "race")
            got = []
            while True:
                rec = s.claim(sys.argv[2], 30)
                if rec is None:
                    break
                got.append(rec.id)
            print(" ".join(got))
        """
        procs = [run_script(code, store, f"p{i}", wait=False) for i in range(3)]
        claimed = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            claimed += out.split()
        assert sorted(claimed) == sorted(r.id for r in rs)
    finally:
        q.shutdown()

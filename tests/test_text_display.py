"""Displays outside a kernel: every handle shows as text that says its state and
progress, through ``repr``, IPython's pretty printer and ``_repr_mimebundle_``,
and never raises. And ``import nbqueue`` loads neither IPython nor ipywidgets.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest

import nbqueue
from nbqueue.runtime.context import FLUSH_INTERVAL
from nbqueue.ui.widgets import Dashboard, mimebundle, widgets_available

from conftest import gate, new_gate_key

pretty = pytest.importorskip("IPython.lib.pretty").pretty

WAIT = 5


# ---- task functions (module level: the disk store pickles them) ----------------
def value(x):
    return x


def fail():
    raise ValueError("bad input")


def halfway(key, started):
    nbqueue.progress(3, 10, "three of ten")
    time.sleep(FLUSH_INTERVAL * 1.5)
    nbqueue.check_cancelled()  # past the flush interval: writes the progress to the store now
    gate(started).set()
    gate(key).wait(WAIT)
    return "done"


def tick():
    return "tick"


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def text_forms(obj):
    """repr, pretty and the mimebundle of ``obj``; checks they agree and are text only."""
    text = repr(obj)
    assert isinstance(text, str) and text
    assert pretty(obj) == text
    bundle = obj._repr_mimebundle_()
    assert bundle == {"text/plain": text}
    assert obj._repr_mimebundle_(include=["text/plain"], exclude=["text/html"]) == bundle
    return text


def running_with_progress(q):
    """A task on ``q`` that is running and has reported 3 of 10 (and stays there)."""
    key, started = new_gate_key(), new_gate_key()
    r = q.task(halfway)(key, started)
    assert gate(started).wait(WAIT)
    assert wait_until(lambda: r.progress.done == 3)  # else the heartbeat writes it within ~1 s
    return r, key


# ---- the environment ---------------------------------------------------------------
def test_no_kernel_here_so_no_widgets():
    assert widgets_available() is False
    assert mimebundle(object(), "just text") == {"text/plain": "just text"}


def _run_python(code, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(nbqueue.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_nbqueue_loads_neither_ipython_nor_ipywidgets(tmp_path):
    out = _run_python("import nbqueue, sys; print('IPython' in sys.modules, 'ipywidgets' in sys.modules)",
                      tmp_path)
    assert out.strip() == "False False"


def test_text_displays_in_a_plain_process_load_neither(tmp_path):
    code = textwrap.dedent("""
        import sys
        import nbqueue

        def value(x):
            return x

        def fail():
            raise ValueError("bad input")

        q = nbqueue.Queue("plain", storage="memory", workers=2)
        ok = q.task(value)(1)
        bad = q.task(fail)()
        group = q.task(value).map([1, 2, 3])
        job = q.periodic(every=3600, name="hourly")(lambda: None)
        ok.wait(5); bad.wait(5); group.wait(5)
        for obj in (ok, bad, group, job, q.dashboard()):
            text = repr(obj)
            assert obj._repr_mimebundle_() == {"text/plain": text}, obj
            print(text)
        q.shutdown()
        print('IPython' in sys.modules, 'ipywidgets' in sys.modules)
    """)
    out = _run_python(code, tmp_path).splitlines()
    assert out[-1] == "False False"
    text = "\n".join(out)
    assert "status=succeeded" in text
    assert "status=failed error=ValueError" in text
    assert "<ResultGroup 3 tasks: 3 succeeded>" in text
    assert "<PeriodicJob hourly" in text
    assert "queue 'plain': 5 tasks" in text


# ---- Result ----------------------------------------------------------------------------
def test_pending_result(make_queue):
    q = make_queue(workers=0)
    r = q.task(value)(1)
    text = text_forms(r)
    assert text == f"<Result {r.name} id={r.id} status=pending>"
    assert "value" in r.name


def test_scheduled_result(make_queue):
    q = make_queue(workers=1)
    r = q.task(value).schedule(args=(1,), delay=60)
    assert "status=scheduled" in text_forms(r)


def test_running_result_shows_its_progress(make_queue):
    q = make_queue(workers=1)
    r, key = running_with_progress(q)
    text = text_forms(r)
    assert "status=running" in text
    assert "progress=3/10" in text
    assert str(r.progress) == "3/10 three of ten"
    gate(key).set()
    assert r.get(timeout=WAIT) == "done"
    text = text_forms(r)
    assert "status=succeeded" in text
    assert "progress" not in text


def test_succeeded_result(make_queue):
    q = make_queue(workers=1)
    r = q.task(value)(41)
    assert r.get(timeout=WAIT) == 41
    assert text_forms(r) == f"<Result {r.name} id={r.id} status=succeeded>"


def test_failed_result_says_its_error(make_queue):
    q = make_queue(workers=1)
    r = q.task(fail)()
    assert r.wait(WAIT)
    text = text_forms(r)
    assert "status=failed" in text
    assert "error=ValueError" in text
    assert "raise ValueError" in r.traceback  # the traceback is kept for the reader
    assert "bad input" in r.traceback


def test_cancelled_result(make_queue):
    q = make_queue(workers=0)
    r = q.task(value)(1)
    assert r.cancel()
    assert "status=cancelled" in text_forms(r)


def test_purged_result_still_displays(make_queue):
    q = make_queue(workers=1)
    r = q.task(value)(1)
    r.wait(WAIT)
    assert q.purge() == 1
    assert text_forms(r) == f"<Result {r.id} (purged)>"


def test_results_display_after_their_queue_shut_down(make_queue):
    q = make_queue(workers=1)
    r = q.task(value)(1)
    r.wait(WAIT)
    q.shutdown(wait=True)
    assert "status=succeeded" in text_forms(r)
    assert "1 succeeded" in text_forms(q.dashboard())


def test_pretty_prints_results_inside_containers(make_queue):
    q = make_queue(workers=1)
    rs = [q.task(value)(i) for i in range(2)]
    for r in rs:
        r.wait(WAIT)
    text = pretty({"runs": rs})
    assert text.count("status=succeeded") == 2


# ---- ResultGroup ----------------------------------------------------------------------------
def test_result_group_counts_its_states(make_queue):
    q = make_queue(workers=2)
    group = q.task(value).map([1, 2, 3])
    group.wait(WAIT)
    assert text_forms(group) == "<ResultGroup 3 tasks: 3 succeeded>"

    mixed = nbqueue.ResultGroup(list(group) + [q.task(fail)()])
    mixed.wait(WAIT)
    assert text_forms(mixed) == "<ResultGroup 4 tasks: 3 succeeded, 1 failed>"


def test_waiting_and_running_result_groups(make_queue):
    idle = make_queue(workers=0)
    assert text_forms(idle.task(value).map([1, 2])) == "<ResultGroup 2 tasks: 2 pending>"

    q = make_queue(workers=1)
    r, key = running_with_progress(q)
    queued = q.task(value)(2)
    group = nbqueue.ResultGroup([r, queued])
    assert text_forms(group) == "<ResultGroup 2 tasks: 1 pending, 1 running>"
    gate(key).set()
    assert group.get(timeout=WAIT) == ["done", 2]
    assert text_forms(group) == "<ResultGroup 2 tasks: 2 succeeded>"


def test_empty_result_group():
    text = text_forms(nbqueue.ResultGroup([]))
    assert text.startswith("<ResultGroup 0 tasks")


def test_result_group_with_a_purged_member_still_displays(make_queue):
    q = make_queue(workers=1)
    group = q.task(value).map([1, 2])
    group.wait(WAIT)
    q.purge()
    assert "2 tasks" in repr(group) and "2 purged" in repr(group)


# ---- PeriodicJob --------------------------------------------------------------------------------
def test_periodic_job_shows_schedule_runs_and_last_state(make_queue):
    q = make_queue(workers=1)
    job = q.periodic(every=3600, name="hourly-sync")(tick)
    text = text_forms(job)
    assert text.startswith("<PeriodicJob hourly-sync 'every 3600s' next=")
    assert "runs=0" in text

    assert job.run_now().get(timeout=WAIT) == "tick"
    text = text_forms(job)
    assert "runs=1" in text
    assert "last=succeeded" in text

    job.pause()
    assert "paused" in text_forms(job)
    job.resume()
    assert "next=" in text_forms(job)

    cron = q.periodic("*/5 * * * *", name="five-minutely")(tick)
    assert "'*/5 * * * *'" in text_forms(cron)

    assert job.remove()
    assert text_forms(job) == "<PeriodicJob hourly-sync (removed)>"


# ---- the dashboard ------------------------------------------------------------------------------
def test_dashboard_text_says_states_and_progress(make_queue):
    q = make_queue(workers=1)
    ok = q.task(value)(1)
    bad = q.task(fail)()
    assert ok.wait(WAIT) and bad.wait(WAIT)
    running, key = running_with_progress(q)
    waiting = q.task(value)(2)  # the one worker is busy: this one stays pending
    q.periodic(every=3600, name="hourly-sync")(tick)

    board = q.dashboard()
    assert isinstance(board, Dashboard)
    text = board.text()
    assert text_forms(board) == text
    lines = text.splitlines()
    assert lines[0] == (f"queue {q.name!r}: 4 tasks, 1 pending, 1 running, 1 succeeded, 1 failed")
    body = "\n".join(lines[1:])
    for r, state in ((ok, "succeeded"), (bad, "failed"), (running, "running"), (waiting, "pending")):
        line = next(line for line in lines if r.id[:8] in line)
        assert state in line
    assert "3/10" in next(line for line in lines if running.id[:8] in line)
    assert "job hourly-sync 'every 3600s'" in body

    limited = board.text(limit=2).splitlines()
    task_lines = [line for line in limited[1:] if not line.strip().startswith("job ")]
    assert len(task_lines) == 2
    assert waiting.id[:8] in task_lines[0]  # newest first

    gate(key).set()
    assert running.get(timeout=WAIT) == "done"
    assert waiting.get(timeout=WAIT) == 2
    assert "3 succeeded, 1 failed" in q.dashboard().text()


def test_dashboard_of_an_empty_queue(make_queue):
    q = make_queue(workers=0)
    assert text_forms(q.dashboard()) == f"queue {q.name!r}: 0 tasks"

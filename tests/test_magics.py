"""The ``%%background`` and ``%nbqueue`` magics, run in a real IPython
``InteractiveShell`` (no kernel, no mocks).

One shell serves the whole module (it is a singleton); each test uses its own
variable names and its own queues, and every queue is shut down afterwards.
The default ``%%background`` queue is shut down when the module ends.
"""

import os
import re
import sys
import threading
import time

import pytest

IPython = pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

import nbqueue  # noqa: E402
from nbqueue.ui import magics  # noqa: E402
from nbqueue.ui.widgets import Dashboard  # noqa: E402

from conftest import gate, new_gate_key, release_all_gates, unique_name, wait_until  # noqa: E402

WAIT = 5  # seconds; every wait in this file is bounded by it


# ---- task functions for queues created by the tests --------------------------
def value(x):
    return x


def fail(message="broken"):
    raise ValueError(message)


def chatty():
    print("line one")
    print("line two")
    return "said"


def blocked(key, started=None):
    if started is not None:
        gate(started).set()
    gate(key).wait(WAIT)
    return "unblocked"


def hourly():
    return "tick"


# ---- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A real InteractiveShell with ``%load_ext nbqueue`` done; history in memory and
    IPYTHONDIR in a temporary directory, so nothing is written to the home directory."""
    saved_dir = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    saved_hooks = sys.displayhook, sys.excepthook
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance(config=config)
    try:
        res = ip.run_cell("%load_ext nbqueue")
        assert res.success, res
        yield ip
    finally:
        release_all_gates()
        for kind, q in list(magics._background.items()):
            if kind == "sidecar":
                q.stop_sidecar(now=True)
            q.shutdown(wait=True, cancel_pending=True)
        magics._background.clear()
        InteractiveShell.clear_instance()
        sys.displayhook, sys.excepthook = saved_hooks
        if saved_dir is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = saved_dir


@pytest.fixture
def make_q(shell):
    """``make_q(workers=2)`` -> (queue, var): a memory queue stored in the shell's
    namespace as ``var``. All are shut down (gates opened first) at teardown."""
    created = []

    def make(workers=2):
        q = nbqueue.Queue(unique_name("magic"), storage="memory", workers=workers)
        var = f"q_{q.name.replace('-', '_')}"
        shell.user_ns[var] = q
        created.append((q, var))
        return q, var

    yield make
    release_all_gates()
    for q, var in reversed(created):
        q.shutdown(wait=True, cancel_pending=True)
        shell.user_ns.pop(var, None)


def run(shell, code):
    """Run a cell; fail the test if the cell itself failed. Returns the ExecutionResult."""
    res = shell.run_cell(code)
    assert res.error_before_exec is None, res.error_before_exec
    assert res.error_in_exec is None, repr(res.error_in_exec)
    return res


def background(shell, body, options=""):
    """Run ``%%background OPTIONS`` over ``body`` as a cell; returns the task's Result."""
    res = run(shell, f"%%background {options}\n{body}")
    assert res.result is None  # the magic shows its Result with display(), returns nothing
    return shell.user_ns["_bg"]


def background_count():
    return len(magics.background_queue().tasks())


# ---- %load_ext -----------------------------------------------------------------
def test_load_ext_registers_both_magics_and_loading_twice_is_harmless(shell):
    assert "nbqueue" in shell.extension_manager.loaded
    assert shell.find_cell_magic("background") is not None
    assert shell.find_line_magic("nbqueue") is not None

    res = run(shell, "%load_ext nbqueue")  # "already loaded": no error, nothing changes
    assert res.success
    nbqueue.load_ipython_extension(shell)  # registering again directly is harmless too
    run(shell, "%reload_ext nbqueue")
    assert shell.find_cell_magic("background") is not None
    assert shell.find_line_magic("nbqueue") is not None

    before = background_count()
    r = background(shell, "'once'")
    assert r.get(timeout=WAIT) == "once"
    assert background_count() == before + 1  # one cell, one task


# ---- %%background ----------------------------------------------------------------
def test_background_runs_in_a_worker_thread_against_the_namespace(shell):
    shell.user_ns["bg_seed"] = 20
    r = background(shell, (
        "import threading\n"
        "bg_tid = threading.get_ident()\n"
        "bg_thread_name = threading.current_thread().name\n"
        "bg_total = bg_seed + 1\n"
        "bg_total * 2"
    ))
    assert r.get(timeout=WAIT) == 42  # the last expression is the task's result
    ns = shell.user_ns
    assert ns["bg_tid"] != threading.get_ident()
    assert ns["bg_tid"] != threading.main_thread().ident
    assert ns["bg_thread_name"].startswith("nbqueue-background-worker")
    assert ns["bg_total"] == 21  # names the cell assigns land in the notebook's namespace
    assert r.name == "background"
    assert r.status == "succeeded"


def test_background_result_is_none_without_a_last_expression(shell):
    r = background(shell, "bg_assigned = [1, 2]\nbg_assigned.append(3)\nbg_last = len(bg_assigned)\n")
    assert r.get(timeout=WAIT) is None
    assert shell.user_ns["bg_last"] == 3


def test_background_output_option_stores_the_result(shell):
    r = background(shell, "6 * 7", "-o bg_out_result")
    assert shell.user_ns["bg_out_result"] is r  # also in _bg
    assert isinstance(r, nbqueue.Result)
    assert r.get(timeout=WAIT) == 42
    r2 = background(shell, "'long form'", "--output bg_out_long")
    assert shell.user_ns["bg_out_long"] is r2
    assert r2.get(timeout=WAIT) == "long form"


def test_background_name_option_names_the_task(shell):
    r = background(shell, "1", "-n loader")
    assert r.name == "loader"
    r.get(timeout=WAIT)
    r2 = background(shell, "2", "--name csv-import")
    assert r2.name == "csv-import"
    assert r2.get(timeout=WAIT) == 2
    r3 = background(shell, "3", "-n 'csv import' -o \"bg_quoted\"")  # quotes are not kept
    assert r3.name == "csv import" and shell.user_ns["bg_quoted"] is r3
    assert r3.get(timeout=WAIT) == 3


def test_background_retries_option_runs_the_cell_again(shell):
    body = ("import nbqueue\n"
            "bg_attempts_seen = globals().get('bg_attempts_seen', 0) + 1\n"
            "if nbqueue.current_task().attempt <= 2:\n"
            "    raise ConnectionError('flaky')\n"
            "'third time lucky'")
    r = background(shell, body, "--retries 2")
    assert r.get(timeout=WAIT) == "third time lucky"
    assert r.attempts == 3
    assert shell.user_ns["bg_attempts_seen"] == 3

    shell.user_ns.pop("bg_attempts_seen")
    r = background(shell, body, "--retries 1")  # not enough retries: fails on the second run
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == "ConnectionError"
    assert r.attempts == 2


def test_background_timeout_option_stops_a_looping_cell(shell):
    body = ("import time, nbqueue\n"
            "for bg_i in range(2000):\n"  # bounded: 10 s at most even if the timeout were lost
            "    nbqueue.check_cancelled()\n"
            "    time.sleep(0.005)\n"
            "'ran to the end'")
    r = background(shell, body, "--timeout 0.3")
    assert r.wait(WAIT)
    assert r.status == "failed"
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert isinstance(info.value.exc, nbqueue.TaskTimeout)  # memory store keeps the object
    assert shell.user_ns["bg_i"] < 1999


@pytest.mark.parametrize("options, message", [
    ("--retries -1", "--retries -1"),
    ("--retries two", "invalid int value"),
    ("--timeout 0", "--timeout 0"),
    ("--timeout -2", "--timeout -2"),
    ("--timeout soon", "invalid float value"),
    ("--timeout nan", "timeout=nan"),
    ("--timeout inf", "timeout=inf"),
    ("-o 1abc", "-o 1abc"),
    ("--retrys 2", "unrecognized arguments: --retrys 2"),
    ("-x", "unrecognized arguments: -x"),
])
def test_background_bad_options_raise_usage_error_and_enqueue_nothing(shell, options, message):
    shell.user_ns.pop("bg_should_not_run", None)
    previous = shell.user_ns.get("_bg")
    before = background_count()
    with pytest.raises(UsageError, match=re.escape(message)):
        shell.run_cell_magic("background", options, "bg_should_not_run = True\n1\n")
    # As a cell: the error is the cell's (shown as one line), not the kernel's.
    res = shell.run_cell(f"%%background {options}\nbg_should_not_run = True\n1\n")
    assert isinstance(res.error_in_exec, UsageError)
    assert background_count() == before
    assert shell.user_ns.get("_bg") is previous
    assert "bg_should_not_run" not in shell.user_ns
    assert run(shell, "1 + 1").result == 2  # the shell goes on


def test_background_empty_cell_is_a_usage_error(shell):
    before = background_count()
    with pytest.raises(UsageError, match="needs some code"):
        shell.run_cell_magic("background", "", "  \n\n")
    assert background_count() == before


def test_background_queue_option_uses_a_queue_from_the_namespace(shell, make_q):
    q, var = make_q(workers=2)
    before = background_count()
    r = background(shell, "import threading\nbg_q_thread = threading.current_thread().name\n'on q'",
                   f"-q {var}")
    assert r.queue is q
    assert r.get(timeout=WAIT) == "on q"
    assert [t.id for t in q.tasks()] == [r.id]
    assert background_count() == before  # not on the default queue
    assert q.name in shell.user_ns["bg_q_thread"]

    r2 = background(shell, "'long form'", f"--queue {var} -n named")
    assert r2.queue is q and r2.name == "named"
    assert r2.get(timeout=WAIT) == "long form"


def test_background_queue_option_with_a_missing_or_wrong_variable(shell):
    shell.user_ns["bg_not_a_queue"] = 5
    shell.user_ns.pop("bg_no_such_var", None)
    before = background_count()
    with pytest.raises(UsageError, match=r"-q bg_no_such_var: no Queue named 'bg_no_such_var'"):
        shell.run_cell_magic("background", "-q bg_no_such_var", "1\n")
    with pytest.raises(UsageError, match=r"no Queue named 'bg_not_a_queue'.*\(got int\)"):
        shell.run_cell_magic("background", "-q bg_not_a_queue", "1\n")
    assert background_count() == before


def test_background_exception_fails_the_task_not_the_shell(shell):
    res = shell.run_cell("%%background\nbg_before_error = 'ran'\n1 / 0\nbg_after_error = 'ran'\n")
    assert res.error_in_exec is None  # the cell that submitted it succeeded
    r = shell.user_ns["_bg"]
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    err = info.value
    assert err.exc_type == "ZeroDivisionError"
    assert isinstance(err.exc, ZeroDivisionError)
    assert "<background cell" in err.traceback
    assert "1 / 0" in err.traceback  # the cell's source line is in the traceback
    assert r.status == "failed"
    assert "status=failed error=ZeroDivisionError" in repr(r)
    assert shell.user_ns["bg_before_error"] == "ran"
    assert "bg_after_error" not in shell.user_ns
    assert run(shell, "40 + 2").result == 42  # the shell is fine


def test_background_syntax_error_is_caught_before_anything_runs(shell):
    """A cell that does not parse raises UsageError at once and enqueues nothing (the
    magic checks with ast.parse); an error only the compiler finds (``return`` at top
    level) fails the task instead. Either way the shell goes on."""
    previous = shell.user_ns.get("_bg")
    before = background_count()
    with pytest.raises(UsageError, match="syntax error, nothing was started"):
        shell.run_cell_magic("background", "", "bg_syntax = (\n")
    res = shell.run_cell("%%background\nbg_syntax = (\n")
    assert isinstance(res.error_in_exec, UsageError)
    assert background_count() == before
    assert shell.user_ns.get("_bg") is previous

    r = background(shell, "bg_compiled = 1\nreturn bg_compiled\n")
    with pytest.raises(nbqueue.TaskException) as info:
        r.get(timeout=WAIT)
    assert info.value.exc_type == "SyntaxError"
    assert "'return' outside function" in info.value.message
    assert "bg_compiled" not in shell.user_ns
    assert run(shell, "2 * 21").result == 42


def test_background_prints_go_to_the_task_output_not_the_shell(shell, capsys):
    capsys.readouterr()
    r = background(shell, ("import sys\n"
                           "print('bg-marker-out 1')\n"
                           "print('bg-marker-out 2')\n"
                           "print('bg-marker-err', file=sys.stderr)\n"
                           "'printed'"))
    assert r.get(timeout=WAIT) == "printed"
    out, err = capsys.readouterr()
    assert "bg-marker" not in out
    assert "bg-marker" not in err
    assert "bg-marker-out 1\nbg-marker-out 2\n" in r.output
    assert "bg-marker-err\n" in r.output
    print("main-thread-print")  # the main thread's prints still reach the shell's stdout
    assert "main-thread-print" in capsys.readouterr().out


def test_background_top_level_await(shell):
    r = background(shell, ("import asyncio, threading\n"
                           "await asyncio.sleep(0.01)\n"
                           "bg_async_tid = threading.get_ident()\n"
                           "bg_async_value = 5\n"
                           "await asyncio.sleep(0, result=bg_async_value * 2)"))
    assert r.get(timeout=WAIT) == 10
    assert shell.user_ns["bg_async_value"] == 5
    assert shell.user_ns["bg_async_tid"] != threading.get_ident()

    r = background(shell, "import asyncio\nawait asyncio.sleep(0)\nbg_async_done = True\n")
    assert r.get(timeout=WAIT) is None
    assert shell.user_ns["bg_async_done"] is True


def test_default_background_queue_is_created_once_and_reused(shell):
    r1 = background(shell, "1")
    r2 = background(shell, "2", "-n second")
    assert r1.queue is r2.queue
    bq = r1.queue
    assert bq is magics.background_queue() is magics.background_queue()
    assert bq.name == "background"
    assert [r1.get(timeout=WAIT), r2.get(timeout=WAIT)] == [1, 2]
    ids = [t.id for t in bq.tasks()]
    assert r1.id in ids and r2.id in ids

    # Once shut down, the next cell gets a fresh queue (and old handles still read).
    bq.shutdown(wait=True)
    r3 = background(shell, "3")
    assert r3.queue is not bq
    assert r3.queue is magics.background_queue()
    assert r3.get(timeout=WAIT) == 3
    assert r1.get(timeout=WAIT) == 1


# ---- %nbqueue --------------------------------------------------------------------
def test_nbqueue_list_and_status(shell, make_q, capsys):
    q, var = make_q(workers=2)
    ok = [q.task(value)(i) for i in range(2)]
    bad = q.task(fail)()
    for r in ok + [bad]:
        assert r.wait(WAIT)
    q.periodic(every=3600, name="hourly-report")(hourly)
    capsys.readouterr()

    assert shell.run_line_magic("nbqueue", f"-q {var} list") is None
    out = capsys.readouterr().out
    assert f"queue {q.name!r}: 3 tasks" in out
    assert "2 succeeded" in out and "1 failed" in out
    for r in ok + [bad]:
        assert r.id[:8] in out
    assert "hourly-report" in out

    assert shell.run_line_magic("nbqueue", f"--queue {var} status") is None
    out = capsys.readouterr().out
    assert f"queue {q.name!r}" in out
    assert "2 workers" in out
    assert "2 succeeded" in out and "1 failed" in out
    assert "<PeriodicJob hourly-report" in out

    res = run(shell, f"%nbqueue -q {var} list")  # as a cell: printed, no Out value
    assert res.result is None
    assert bad.id[:8] in capsys.readouterr().out


def test_nbqueue_status_of_an_empty_queue(shell, make_q, capsys):
    q, var = make_q(workers=1)
    capsys.readouterr()
    shell.run_line_magic("nbqueue", f"-q {var} status")
    assert "1 workers; no tasks" in capsys.readouterr().out


def test_nbqueue_defaults_to_the_latest_queue(shell, make_q, capsys):
    q, _ = make_q(workers=1)
    assert q.task(value)(7).get(timeout=WAIT) == 7
    capsys.readouterr()
    shell.run_line_magic("nbqueue", "status")
    assert f"queue {q.name!r}" in capsys.readouterr().out


def test_nbqueue_without_a_command_returns_the_dashboard(shell, make_q):
    q, var = make_q(workers=1)
    r = q.task(value)(1)
    r.wait(WAIT)
    board = shell.run_line_magic("nbqueue", f"-q {var}")
    assert isinstance(board, Dashboard)
    assert board.queue is q
    text = board.text()
    assert q.name in text and r.id[:8] in text and "succeeded" in text
    res = run(shell, f"%nbqueue -q {var}")
    assert isinstance(res.result, Dashboard)  # the cell's Out value


def test_nbqueue_cancel_by_id_and_by_prefix(shell, make_q, capsys):
    q, var = make_q(workers=0)  # nothing runs: every task stays pending
    a, b, c = (q.task(value)(i) for i in range(3))
    capsys.readouterr()

    shell.run_line_magic("nbqueue", f"-q {var} cancel {a.id}")
    assert f"{a.id}: cancel asked" in capsys.readouterr().out
    assert a.status == "cancelled"

    shell.run_line_magic("nbqueue", f"-q {var} cancel {b.id[:8]}")  # a unique prefix is enough
    assert f"{b.id}: cancel asked" in capsys.readouterr().out
    assert b.status == "cancelled"

    shell.run_line_magic("nbqueue", f"-q {var} cancel {c.id[:10].upper()}")  # ids are hex
    assert c.status == "cancelled"
    capsys.readouterr()

    shell.run_line_magic("nbqueue", f"-q {var} cancel {a.id[:8]}")
    assert f"{a.id}: already cancelled" in capsys.readouterr().out


def test_nbqueue_cancel_with_an_ambiguous_prefix(shell, make_q):
    q, var = make_q(workers=0)
    results = [q.task(value)(i) for i in range(17)]  # 17 ids, 16 hex digits: two share one
    firsts = [r.id[0] for r in results]
    shared = next(ch for ch in firsts if firsts.count(ch) > 1)
    with pytest.raises(UsageError, match=rf"several tasks start with '{shared}'; give more of the id"):
        shell.run_line_magic("nbqueue", f"-q {var} cancel {shared}")
    assert all(r.status == "pending" for r in results)


def test_nbqueue_result(shell, make_q, capsys):
    q, var = make_q(workers=2)
    ok = q.task(value)({"answer": 42})
    bad = q.task(fail)("kaputt")
    assert ok.wait(WAIT) and bad.wait(WAIT)

    assert shell.run_line_magic("nbqueue", f"-q {var} result {ok.id}") == {"answer": 42}
    res = run(shell, f"%nbqueue -q {var} result {ok.id[:8]}")
    assert res.result == {"answer": 42}  # the value is the cell's Out

    with pytest.raises(nbqueue.TaskException, match="kaputt"):
        shell.run_line_magic("nbqueue", f"-q {var} result {bad.id[:8]}")
    res = shell.run_cell(f"%nbqueue -q {var} result {bad.id[:8]}")
    assert isinstance(res.error_in_exec, nbqueue.TaskException)

    idle, idle_var = make_q(workers=0)
    waiting = idle.task(value)(1)
    capsys.readouterr()
    assert shell.run_line_magic("nbqueue", f"-q {idle_var} result {waiting.id[:8]}") is None
    out = capsys.readouterr().out
    assert f"{waiting.id} is pending" in out
    assert f"%nbqueue wait {waiting.id[:8]}" in out


def test_nbqueue_output(shell, make_q, capsys):
    q, var = make_q(workers=1)
    r = q.task(chatty)()
    assert r.get(timeout=WAIT) == "said"
    capsys.readouterr()
    shell.run_line_magic("nbqueue", f"-q {var} output {r.id[:8]}")
    assert capsys.readouterr().out == "line one\nline two\n"


def nbqueue_while_gate_opens(shell, capsys, line, key, delay=0.2):
    """Run ``%nbqueue LINE`` while a timer opens gate ``key`` after ``delay``; returns its stdout."""
    timer = threading.Timer(delay, gate(key).set)
    timer.start()
    try:
        capsys.readouterr()
        shell.run_line_magic("nbqueue", line)
    finally:
        timer.join()
    return capsys.readouterr().out


def test_nbqueue_wait_for_one_task(shell, make_q, capsys):
    q, var = make_q(workers=2)
    key, started = new_gate_key(), new_gate_key()
    r = q.task(blocked)(key, started)
    assert gate(started).wait(WAIT)
    out = nbqueue_while_gate_opens(shell, capsys, f"-q {var} wait {r.id[:8]}", key)
    assert "1 task(s) finished" in out
    assert r.status == "succeeded"


def test_nbqueue_wait_for_every_unfinished_task(shell, make_q, capsys):
    q, var = make_q(workers=3)
    done = q.task(value)(0)
    assert done.wait(WAIT)
    key = new_gate_key()
    pending = [q.task(blocked)(key) for _ in range(2)]
    out = nbqueue_while_gate_opens(shell, capsys, f"-q {var} wait", key)
    assert re.search(r"^[0-2] task\(s\) finished$", out, re.M), out  # the finished one is not waited for
    assert all(r.status == "succeeded" for r in pending)


def test_nbqueue_purge(shell, make_q, capsys):
    q, var = make_q(workers=2)
    finished = [q.task(value)(1), q.task(fail)()]
    for r in finished:
        assert r.wait(WAIT)
    key, started = new_gate_key(), new_gate_key()
    running = q.task(blocked)(key, started)
    assert gate(started).wait(WAIT)
    capsys.readouterr()
    shell.run_line_magic("nbqueue", f"-q {var} purge")
    assert "purged 2 finished tasks" in capsys.readouterr().out
    assert [r.id for r in q.tasks()] == [running.id]  # the running task is kept
    gate(key).set()
    assert running.get(timeout=WAIT) == "unblocked"


def test_nbqueue_workers(shell, make_q, capsys):
    q, var = make_q(workers=1)
    capsys.readouterr()
    shell.run_line_magic("nbqueue", f"-q {var} workers 3")
    assert q.workers == 3
    assert f"queue {q.name!r}: 3 workers" in capsys.readouterr().out
    assert q.task(value)(5).get(timeout=WAIT) == 5
    shell.run_line_magic("nbqueue", f"-q {var} workers 0")
    assert q.workers == 0


@pytest.mark.parametrize("args, message", [
    ("frobnicate", "unknown command 'frobnicate'; use one of: list, status, cancel, result, "
                   "output, wait, purge, workers"),
    ("cancel", "usage: %nbqueue cancel ID"),
    ("result", "usage: %nbqueue result ID"),
    ("output", "usage: %nbqueue output ID"),
    ("workers", "usage: %nbqueue workers N"),
    ("cancel a b", "usage: %nbqueue cancel ID"),
    ("wait a b", "usage: %nbqueue wait [ID]"),
    ("list everything", "usage: %nbqueue list"),
    ("cancel nosuchtask", "no task 'nosuchtask' in queue"),
    ("result nosuchtask", "no task 'nosuchtask' in queue"),
    ("output nosuchtask", "no task 'nosuchtask' in queue"),
    ("wait nosuchtask", "no task 'nosuchtask' in queue"),
    ("workers -1", "%nbqueue workers -1: give a whole number >= 0"),
    ("workers abc", "%nbqueue workers abc: give a whole number >= 0"),
    ("workers 2.5", "%nbqueue workers 2.5: give a whole number >= 0"),
    ('cancel "unclosed', "No closing quotation"),
    ("--frob list", "unrecognized arguments: --frob"),
])
def test_nbqueue_bad_usage_raises_usage_error(shell, make_q, args, message):
    q, var = make_q(workers=1)
    q.task(value)(1).wait(WAIT)
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("nbqueue", f"-q {var} {args}")
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one line, no traceback
    assert q.workers == 1
    assert len(q.tasks()) == 1
    res = shell.run_cell(f"%nbqueue -q {var} {args}")
    assert isinstance(res.error_in_exec, UsageError)
    assert run(shell, "1 + 1").result == 2


def test_nbqueue_with_a_missing_or_wrong_queue_variable(shell):
    shell.user_ns["nbq_not_a_queue"] = "nope"
    shell.user_ns.pop("nbq_no_such_var", None)
    with pytest.raises(UsageError, match="no Queue named 'nbq_no_such_var'"):
        shell.run_line_magic("nbqueue", "-q nbq_no_such_var list")
    with pytest.raises(UsageError, match=r"no Queue named 'nbq_not_a_queue' .*\(got str\)"):
        shell.run_line_magic("nbqueue", "-q nbq_not_a_queue status")


def test_nbqueue_says_when_the_latest_queue_is_shut_down(shell):
    q = nbqueue.Queue(unique_name("nbq-closed"), storage="memory", workers=0)
    q.shutdown()
    with pytest.raises(UsageError, match=f"the latest queue, {q.name!r}, is shut down"):
        shell.run_line_magic("nbqueue", "status")


def test_help_texts(shell, capsys):
    doc = shell.find_line_magic("nbqueue").__doc__
    assert doc and doc.strip()
    for sub in ("list", "status", "cancel ID", "result ID", "output ID", "wait [ID]", "purge",
                "workers N"):
        assert f"%nbqueue {sub}" in doc
    assert "-q QUEUE" in doc

    bg_doc = shell.find_cell_magic("background").__doc__
    assert bg_doc and "worker thread" in bg_doc
    for option in ("--name", "--queue", "--retries", "--timeout", "--output"):
        assert option in bg_doc

    capsys.readouterr()
    run(shell, "%nbqueue?")  # no pager here: the help is printed
    out = capsys.readouterr().out
    assert "wait [ID]" in out and "workers N" in out


# ---- -k process and --sidecar: the cell runs in another process ----------------------
def _wait_for_name(shell, name, timeout=20):
    assert wait_until(lambda: name in shell.user_ns, timeout=timeout), f"{name} never came back"
    return shell.user_ns[name]


def test_background_process_ships_what_it_reads_and_brings_back_what_it_assigns(shell):
    shell.run_cell("import os\nbase = 21\nfactor = {'k': 2}")
    res = shell.run_cell("%%background -k process\nimport os\nchild_pid = os.getpid()\n"
                         "doubled = base * factor['k']\ndoubled + 1")
    assert res.success, res
    r = shell.user_ns["_bg"]
    assert r.get(timeout=30) == 43                 # the last expression is the value
    assert _wait_for_name(shell, "doubled") == 42  # assigned names come back
    assert shell.user_ns["child_pid"] != os.getpid()  # it ran in another process


def test_background_process_names_a_variable_it_cannot_ship(shell):
    shell.run_cell("import threading\nguard = threading.Lock()")
    res = shell.run_cell("%%background -k process\nwith guard:\n    done = 1")
    assert not res.success and isinstance(res.error_in_exec, UsageError)
    assert "'guard'" in str(res.error_in_exec) and "lock" in str(res.error_in_exec)


def test_background_process_fails_naming_an_assigned_name_that_cannot_come_back(shell):
    res = shell.run_cell("%%background -k process\nimport socket\nsock = socket.socket()\nok = 1")
    assert res.success, res
    with pytest.raises(nbqueue.TaskException) as info:
        shell.user_ns["_bg"].get(timeout=30)
    assert "'sock'" in str(info.value) and "del sock" in str(info.value)
    assert "ok" not in shell.user_ns  # a failed cell brings nothing back


def test_background_process_timeout_is_hard(shell):
    res = shell.run_cell("%%background -k process --timeout 1\nimport time\ntime.sleep(30)")
    assert res.success, res
    started = time.monotonic()
    with pytest.raises(nbqueue.TaskException) as info:
        shell.user_ns["_bg"].get(timeout=30)
    assert info.value.exc_type.endswith("TaskTimeout")
    assert time.monotonic() - started < 15  # not the 30 s the sleep would take


def test_background_bad_kind_is_a_usage_error(shell):
    res = shell.run_cell("%%background -k procss\nx = 1")
    assert isinstance(res.error_in_exec, UsageError) and "-k procss" in str(res.error_in_exec)


def test_background_sidecar_runs_the_cell_in_the_stores_sidecar(shell, tmp_path):
    shell.run_cell(f"import nbqueue\nsq = nbqueue.Queue('cells', storage={str(tmp_path / 's')!r}, "
                   "workers=0)\nseed = 5")
    res = shell.run_cell("%%background --sidecar -q sq\nimport os\nfrom_sidecar = seed + 1\n"
                         "os.getpid()")
    assert res.success, res
    try:
        pid = shell.user_ns["_bg"].get(timeout=60)
        status = shell.user_ns["sq"].sidecar_status()
        assert status is not None and status["pid"] != os.getpid()
        assert _wait_for_name(shell, "from_sidecar") == 6
        assert pid != os.getpid()
    finally:
        shell.user_ns["sq"].stop_sidecar(now=True)

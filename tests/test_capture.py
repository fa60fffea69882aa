"""What a task writes, logs and displays goes to the task (its record, its widget),
never to a cell; other threads' output is untouched.

Plain-Python tests (real threads, real logging handlers) run first; then one
real Jupyter kernel (jupyter_client) serves the kernel tests of this module,
which read every iopub message it sends, so "in no cell" means: no stream or
display message of any cell, the ones sent while no cell ran included.
"""

import base64
import io
import json
import logging
import os
import sys
import textwrap
import threading
import time

import pytest

import nbqueue
from nbqueue.runtime import logcapture

from conftest import gate, iopub_until_idle, new_gate_key, unique_name, wait_until

WAIT = 10


@pytest.fixture
def q():
    queue = nbqueue.Queue(unique_name("capture"), storage="memory", workers=4)
    yield queue
    queue.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def logger():
    """A logger of its own (not propagating), its handlers removed afterwards."""
    log = logging.getLogger(unique_name("nbqueue-test"))
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


@pytest.fixture
def notebook_stderr(monkeypatch):
    """``use()`` makes sys.stderr a stream object of its own, as a notebook's is, and
    returns it. Call it in the test's body: pytest puts its own sys.stderr back
    between a fixture's setup and the test."""
    def use():
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream
    return use


def log_lines(log, who, n, pause=0.0):
    for i in range(n):
        log.info("%s line %d", who, i)
        time.sleep(pause)
    return who


# ---- logging, plain Python -------------------------------------------------------
def test_handler_made_before_the_queue_sends_task_records_to_the_task(q, logger, notebook_stderr):
    """The basicConfig case: the handler holds the stream object, not sys.stderr. Tasks
    and a plain thread log at the same time; each task's lines go to its own output,
    the thread's stay on the stream."""
    stderr = notebook_stderr()
    logger.addHandler(logging.StreamHandler())  # takes sys.stderr now: the stream itself
    task = q.task(log_lines)
    results = [task(logger, f"task{k}", 20, 0.001) for k in range(3)]
    outsider = threading.Thread(target=log_lines, args=(logger, "thread", 20, 0.001))
    outsider.start()
    logger.info("main line")
    outsider.join()
    for k, r in enumerate(results):
        assert r.get(timeout=WAIT) == f"task{k}"
        assert r.output == "".join(f"task{k} line {i}\n" for i in range(20))
    written = stderr.getvalue()
    assert "task" not in written
    assert written.count("thread line") == 20 and "main line\n" in written


def test_handler_made_after_the_queue_and_basic_format(q, logger, notebook_stderr):
    stderr = notebook_stderr()
    q.task(log_lines)(logger, "warm-up", 1).get(timeout=WAIT)  # the proxy is on sys.stderr now
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    logger.addHandler(handler)

    def warn():
        logger.warning("careful")

    r = q.task(warn)()
    r.get(timeout=WAIT)
    assert r.output == f"WARNING:{logger.name}:careful\n"
    assert "careful" not in stderr.getvalue()


def test_handler_added_later_to_an_existing_logger_is_caught(q, logger, notebook_stderr):
    stderr = notebook_stderr()
    q.task(log_lines)(logger, "warm-up", 1).get(timeout=WAIT)
    logger.addHandler(logging.StreamHandler(stderr))  # the stream object, not the proxy
    time.sleep(logcapture.RESCAN_EVERY + 0.05)  # no logger was added: the periodic look finds it
    r = q.task(log_lines)(logger, "late", 2)
    r.get(timeout=WAIT)
    assert r.output == "late line 0\nlate line 1\n"
    assert "late" not in stderr.getvalue()


def test_handler_on_another_stream_is_left_alone(q, logger, notebook_stderr):
    stderr = notebook_stderr()
    elsewhere = io.StringIO()
    logger.addHandler(logging.StreamHandler(elsewhere))
    r = q.task(log_lines)(logger, "filed", 2)
    r.get(timeout=WAIT)
    assert r.output == "" and stderr.getvalue() == ""
    assert elsewhere.getvalue() == "filed line 0\nfiled line 1\n"


# ---- nbqueue.tqdm: the outermost open bar drives the task's progress --------------
def nested(outer, inner, pause_at=None, paused=None, resume=None):
    for epoch in nbqueue.tqdm(range(outer), desc="epochs", mininterval=0):
        for batch in nbqueue.tqdm(range(inner), desc="batches", mininterval=0, leave=False):
            if (epoch, batch) == pause_at:
                gate(paused).set()
                gate(resume).wait(WAIT)
    return True


def one_after_another():
    for _ in nbqueue.tqdm(range(4), desc="first", mininterval=0):
        pass
    for _ in nbqueue.tqdm(range(7), desc="second", mininterval=0):
        pass


def test_nested_bars_report_the_outer_one(q):
    paused, resume = new_gate_key(), new_gate_key()
    r = q.task(nested)(3, 50, (1, 25), paused, resume)
    try:
        assert gate(paused).wait(WAIT)
        # the inner bar is at 25/50 now; the task shows the outer one's 1 of 3
        assert wait_until(lambda: tuple(r.progress) == (1, 3, "epochs"), WAIT), tuple(r.progress)
    finally:
        gate(resume).set()
    r.get(timeout=WAIT)
    assert tuple(r.progress) == (3, 3, "epochs")
    r = q.task(one_after_another)()
    r.get(timeout=WAIT)
    assert tuple(r.progress) == (7, 7, "second")


# ---- display() outside a kernel: as before ------------------------------------------
def test_display_outside_a_kernel_prints_into_the_task_output(q):
    pytest.importorskip("IPython")

    def show():
        from IPython.display import display
        display({"a": 1})

    r = q.task(show)()
    r.get(timeout=WAIT)
    assert r.output == "{'a': 1}\n"


# ---- in a real kernel -----------------------------------------------------------
@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel for this module's kernel tests: ``run(code)`` executes a cell and
    returns ``(msg_id, its iopub messages)``; ``seen`` holds every iopub message."""
    pytest.importorskip("ipykernel")
    jupyter_client = pytest.importorskip("jupyter_client")
    from jupyter_client.kernelspec import KernelSpecManager
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "nbqueue-capture"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nbqueue capture test", "language": "python"}))
    env = dict(os.environ, IPYTHONDIR=str(root / "ipython"))
    ksm = KernelSpecManager(kernel_dirs=[str(root / "kernels")])
    km = jupyter_client.KernelManager(kernel_name="nbqueue-capture", kernel_spec_manager=ksm)
    km.start_kernel(env=env, cwd=str(root))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    seen = []

    def run(*parts):
        msg_id = kc.execute("\n".join(textwrap.dedent(part) for part in parts))
        msgs = iopub_until_idle(kc, msg_id, timeout=60)
        seen.extend(msgs)
        reply = kc.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=60)
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", "\n".join(
            "\n".join(e["traceback"]) for e in errors) or reply["content"]
        return msg_id, msgs

    run.seen = seen
    run("""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    """)
    try:
        yield run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def report(msgs):
    """The value a cell printed with ``report(...)`` (defined in the kernel)."""
    for m in msgs:
        # one stream message may carry several prints (the kernel batches what is
        # written within its flush interval): look at each line
        for line in m["content"]["text"].splitlines() if m["msg_type"] == "stream" else ():
            if line.startswith("REPORT "):
                return json.loads(base64.b64decode(line.split()[1]))
    raise AssertionError("the cell reported nothing")


REPORT = """
    import base64, json
    def report(value):
        print("REPORT", base64.b64encode(json.dumps(value).encode()).decode())
"""


def shown(msgs, text):
    """The cells (parent msg ids) of stream and display messages that contain ``text``."""
    found = []
    for m in msgs:
        if m["msg_type"] == "stream":
            body = m["content"]["text"]
        elif m["msg_type"] in ("display_data", "update_display_data", "execute_result"):
            body = json.dumps(m["content"]["data"])
        else:
            continue
        if text in body:
            found.append(m["parent_header"].get("msg_id"))
    return found


def test_kernel_task_logging_goes_to_its_output_not_to_a_cell(kernel):
    """basicConfig ran first (the fixture); a task logs while its cell runs and after
    it ended (while the next cell runs, and while none runs); a main-thread record
    in the same cell shows in that cell."""
    first, msgs1 = kernel(REPORT, """
        import time, nbqueue
        log = logging.getLogger("tutorial")
        q = nbqueue.Queue("logging", storage="memory")

        @q.task
        def fetch(n):
            log.info("fetching %d", n)
            time.sleep(0.4)
            log.warning("slow fetch %d", n)
            time.sleep(0.6)
            log.info("fetched %d", n)
            return n

        r = fetch(7)
        log.info("submitted from the cell")
    """)
    time.sleep(1.2)  # "slow fetch" while the next cell runs, "fetched" while none does
    _, msgs2 = kernel("""
        time.sleep(0.5)
        report({"value": r.get(timeout=30), "output": r.output})
    """)
    done = report(msgs2)
    assert done == {"value": 7, "output": "INFO fetching 7\nWARNING slow fetch 7\nINFO fetched 7\n"}
    for text in ("fetching 7", "slow fetch 7", "fetched 7"):
        assert shown(kernel.seen, text) == [], f"{text!r} leaked into a cell"
    assert shown(msgs1, "INFO submitted from the cell") == [first]


def test_kernel_tqdm_auto_and_notebook_drive_the_task_progress(kernel):
    """tqdm.auto (in a kernel: tqdm.notebook) in a task: its progress follows the
    outermost bar and no bar is displayed anywhere."""
    _, msgs1 = kernel(REPORT, """
        import nbqueue, time
        from tqdm.auto import tqdm as auto_tqdm
        from tqdm.notebook import tqdm as nb_tqdm
        q2 = nbqueue.Queue("bars", storage="memory")

        @q2.task
        def train(epochs, batches):
            for _ in auto_tqdm(range(epochs), desc="epochs", mininterval=0):
                for _ in nb_tqdm(range(batches), desc="batches", mininterval=0, leave=False):
                    time.sleep(0.001)
            return "trained"

        @q2.task
        def manual(total):
            bar = nb_tqdm(total=total, desc="manual", mininterval=0)
            for _ in range(total):
                bar.update()
            bar.close()
            return total

        r1 = train(3, 20)
        r2 = manual(40)
        for _ in auto_tqdm(range(3), desc="in the cell"):  # the main thread's bar is shown
            pass
        report({"train": r1.get(timeout=30), "manual": r2.get(timeout=30),
                "p1": list(r1.progress), "p2": list(r2.progress),
                "o1": r1.output, "o2": r2.output})
    """)
    done = report(msgs1)
    assert done["train"] == "trained" and done["manual"] == 40
    assert done["p1"] == [3, 3, "epochs"]
    assert done["p2"][:2] == [40, 40] and done["p2"][2] == "manual"
    assert done["o1"] == "" and done["o2"] == ""
    # the tasks ended before the cell did: all their messages are in msgs1
    shown_views = [m for m in msgs1 if m["msg_type"] in ("display_data", "update_display_data")]
    assert len(shown_views) == 1, "a task's tqdm bar was displayed in a cell"
    assert "in the cell" in shown_views[0]["content"]["data"]["text/plain"]


ROUTED = """
    import threading, time
    from IPython.display import display, HTML, update_display, clear_output
    from nbqueue.runtime import capture

    def in_a_task_thread(body, displays, task_id, after=None):
        # what the worker does around a task, in a thread of its own; ``after``
        # runs in the same thread once the task is over (pool threads are reused)
        def run():
            routed = capture.route_to(capture_parent, displays=displays, task_id=task_id)
            try:
                body()
            finally:
                capture.unroute(routed)
            if after is not None:
                after()
        t = threading.Thread(target=run)
        t.start()
        t.join()

    capture_parent = capture.submit_parent()
"""


def test_kernel_display_from_a_task_thread_is_kept_not_shown(kernel):
    """route_to(..., displays=, task_id=) in a kernel: display(), update_display() and
    clear_output() of that thread go to the list, in order; the main thread's
    display in the same cell, and a display id a cell showed, still go to cells."""
    cell, msgs = kernel(REPORT, ROUTED, """
        displays = {}
        h = display(HTML("<i>cell display</i>"), display_id=True)

        def body():
            display(HTML("<b>one</b>"))
            display(HTML("<b>two</b>"), display_id="t-two")
            update_display(HTML("<b>two, updated</b>"), display_id="t-two")
            h.update(HTML("<i>cell display, updated by the task</i>"))
            print("a print")  # not a display: the stream proxy's business
            clear_output(wait=True)
            display(HTML("<b>three</b>"))

        in_a_task_thread(body, displays, "T1")
        in_a_task_thread(lambda: display(HTML("<b>other</b>")), displays, "T2",
                         after=lambda: display(HTML("<b>same thread, task over</b>")))
        threading.Thread(target=lambda: display(HTML("<b>plain thread</b>"))).start()
        time.sleep(0.2)
        report(displays)
    """)
    displays = report(msgs)
    assert displays == {
        "T1": [{"output_type": "display_data", "metadata": {},
                "data": {"text/html": "<b>three</b>", "text/plain": "<IPython.core.display.HTML object>"}}],
        "T2": [{"output_type": "display_data", "metadata": {},
                "data": {"text/html": "<b>other</b>", "text/plain": "<IPython.core.display.HTML object>"}}],
    }
    for text in ("<b>one</b>", "<b>two", "<b>three</b>", "<b>other</b>"):
        assert shown(kernel.seen, text) == [], f"{text!r} was shown in a cell"
    assert shown(msgs, "<i>cell display</i>") == [cell]
    assert shown(msgs, "updated by the task") == [cell]
    assert shown(msgs, "plain thread") == [cell]
    assert shown(msgs, "same thread, task over") == [cell]


def test_kernel_display_updates_replace_the_kept_output(kernel):
    _, msgs = kernel(REPORT, ROUTED, """
        kept = {}

        def body():
            display(HTML("<b>a</b>"))
            display(HTML("<b>b</b>"), display_id="b")
            display(HTML("<b>c</b>"))
            update_display(HTML("<b>b2</b>"), display_id="b")

        in_a_task_thread(body, kept, "U")
        report([o["data"]["text/html"] for o in kept["U"]])
    """)
    assert report(msgs) == ["<b>a</b>", "<b>b2</b>", "<b>c</b>"]


def test_kernel_display_from_a_task_lands_in_state_displays(kernel):
    kernel(REPORT, """
        import nbqueue, time
        from IPython.display import display, HTML
        q3 = nbqueue.Queue("displays", storage="memory")

        @q3.task
        def chart():
            display(HTML("<b>early</b>"))
            time.sleep(0.8)           # the submitting cell has ended by now
            display(HTML("<b>late</b>"))
            return "drawn"

        r3 = chart()
    """)
    time.sleep(1.0)
    _, msgs2 = kernel("""
        report({"value": r3.get(timeout=30),
                "shown": [o["data"]["text/html"] for o in q3.state.displays[r3.id]]})
    """)
    assert report(msgs2) == {"value": "drawn", "shown": ["<b>early</b>", "<b>late</b>"]}
    assert shown(kernel.seen, "<b>early</b>") == [] and shown(kernel.seen, "<b>late</b>") == []


def test_kernel_await_and_gather_in_a_cell(kernel):
    """Top-level await in a Jupyter cell: a Result, asyncio.gather of two, a group."""
    _, msgs = kernel(REPORT, """
        import asyncio, nbqueue
        qa = nbqueue.Queue("awaits", storage="memory")

        @qa.task
        def double(x):
            return 2 * x

        one = await double(21)
        both = await asyncio.gather(double(1), double(2))
        group = await double.map([3, 4])
        report([one, both, group])
    """)
    assert report(msgs) == [42, [2, 4], [6, 8]]

"""The notebooks in notebooks/, executed in a real Jupyter kernel with nbclient, and the
widget updater's message rate measured on a real kernel's iopub channel.

nbclient saves the widget state (``store_widget_state=True``) the frontend would
hold at the end; the assertions read the task widgets from it.
"""

import json
import os
import pathlib
import re
import shutil
import sys
import textwrap
import time

import pytest

from conftest import iopub_until_idle

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter (the one that has nbqueue installed), found
    through JUPYTER_PATH so nothing is written outside the test's temp dir."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "nbqueue-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nbqueue test", "language": "python"}))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "IPYTHONDIR")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), saved["JUPYTER_PATH"]]))
    os.environ["IPYTHONDIR"] = str(root / "ipython")  # the kernels' history stays out of ~/.ipython
    yield "nbqueue-test"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def execute(name, tmp_path, kernel_name):
    """Run notebooks/<name> in a fresh kernel whose working directory is ``tmp_path``."""
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(tmp_path)}},
                                     store_widget_state=True)
    client.execute()
    nbformat.write(nb, tmp_path / f"executed-{name}")  # left for a person to look at
    return nb


class Widgets:
    """The saved widget state of an executed notebook, navigable from a view's model id."""

    def __init__(self, nb):
        self.state = nb.metadata["widgets"][WIDGET_STATE]["state"]

    def tree(self, model_id):
        """Every model under ``model_id`` (itself included), depth first."""
        model = self.state[model_id]
        found = [model]
        for child in model["state"].get("children") or []:
            found += self.tree(child.removeprefix("IPY_MODEL_"))
        return found

    def of(self, tree, name):
        return [m["state"] for m in tree if m["model_name"] == name]

    def html(self, tree):
        return " ".join(s.get("value", "") for s in self.of(tree, "HTMLModel"))

    def log(self, tree):
        return "".join(o.get("text", "") for s in self.of(tree, "OutputModel") for o in s["outputs"])

    def bar(self, tree):
        """The first progress bar under the tree: (percent filled, kind), percent None
        for an indeterminate (striped) bar. The bars are HTML (nbqueue.ui.look.bar)."""
        for value in (s.get("value", "") for s in self.of(tree, "HTMLModel")):
            m = re.search(r'class="nbqueue-fill nbqueue-fill-(\w+)( nbqueue-striped)?" style="width:([\d.]+)%', value)
            if m:
                return (None if m.group(2) else float(m.group(3))), m.group(1)
        raise AssertionError("no progress bar in this widget")

    def buttons(self, tree):
        """The descriptions of the buttons a reader sees (a hidden one has a layout
        with display none or visibility hidden)."""
        seen = []
        for s in self.of(tree, "ButtonModel"):
            layout = self.state[s["layout"].removeprefix("IPY_MODEL_")]["state"]
            if layout.get("display") != "none" and layout.get("visibility") != "hidden":
                seen.append(s["description"])
        return seen

    def titles(self, tree):
        return [t for s in self.of(tree, "AccordionModel") for t in s["titles"]]


def cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def view_id(c):
    views = [o["data"][WIDGET_VIEW]["model_id"] for o in c.outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 1, f"cell {c.id} should show one widget, it shows {len(views)}: {c.outputs}"
    return views[0]


def text_of(c):
    parts = []
    for o in c.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o["data"].get("text/plain", ""))
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "".join(parts)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, kernel_name):
    return execute("quickstart.ipynb", tmp_path_factory.mktemp("quickstart"), kernel_name)


def test_quickstart_runs_without_errors(quickstart):
    errors = [(c.id, o.ename, o.evalue) for c in quickstart.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == []


def test_task_widget_under_submitting_cell_holds_final_state(quickstart):
    w = Widgets(quickstart)
    tree = w.tree(view_id(cell(quickstart, "submit")))
    assert w.bar(tree) == (100.0, "success")
    html = w.html(tree)
    assert "crunch" in html and "nbqueue-succeeded" in html
    assert "100/100" in html and "step 100 of 100" in html
    assert w.buttons(tree) == []  # no Cancel once finished, no Retry after a success
    # the log's title counts its lines (crunch printed 5) and what it displayed
    assert w.titles(tree) == ["Log (5 lines, 1 display)"]


def test_task_prints_stay_in_its_widget_log(quickstart):
    w = Widgets(quickstart)
    log = w.log(w.tree(view_id(cell(quickstart, "submit"))))
    assert "crunch: step 0\n" in log and "crunch: step 80\n" in log
    # crunch printed while the cells after it ran; none of it may land there
    for c in quickstart.cells:
        if c.cell_type == "code":
            assert "crunch: step" not in text_of(c), f"a task's print leaked into cell {c.id}"
    assert text_of(cell(quickstart, "meanwhile")) == "this cell ran while crunch was working\n"


def test_task_display_is_saved_in_its_widget_not_in_a_cell(quickstart):
    w = Widgets(quickstart)
    tree = w.tree(view_id(cell(quickstart, "submit")))
    shown = [o for s in w.of(tree, "OutputModel") for o in s["outputs"]
             if o.get("output_type") == "display_data"]
    assert [o["data"]["text/markdown"] for o in shown] == ["crunch of 100 steps: **328350**"]
    for c in quickstart.cells:
        if c.cell_type == "code":
            assert "crunch of 100 steps" not in json.dumps(c.get("outputs", [])), c.id


def test_failed_task_widget_shows_error_and_traceback(quickstart):
    w = Widgets(quickstart)
    tree = w.tree(view_id(cell(quickstart, "failing")))
    html = w.html(tree)
    assert "nbqueue-failed" in html
    assert "ValueError" in html and "bad input: expected a positive number" in html
    assert "Traceback" in html
    assert w.bar(tree)[1] == "danger"
    assert "about to fail" in w.log(tree)
    assert w.titles(tree) == ["Log (1 line)"]
    assert w.buttons(tree) == ["Retry"]


def test_retry_and_cancel_widgets_end_in_their_states(quickstart):
    w = Widgets(quickstart)
    retried = w.html(w.tree(view_id(cell(quickstart, "retry"))))
    assert "nbqueue-succeeded" in retried and "attempt 3" in retried.replace("attempts 3", "attempt 3")
    cancelled = w.tree(view_id(cell(quickstart, "cancel")))
    assert "nbqueue-cancelled" in w.html(cancelled)
    assert w.buttons(cancelled) == ["Retry"]
    assert "slow: cancelled" in text_of(cell(quickstart, "by-id"))


def test_group_widget_counts_every_task(quickstart):
    w = Widgets(quickstart)
    tree = w.tree(view_id(cell(quickstart, "group")))
    assert w.bar(tree) == (100.0, "success")
    assert "3/3" in w.html(tree) or "3 of 3" in w.html(tree)


def test_background_cell_shows_widget_and_result_is_readable_later(quickstart):
    w = Widgets(quickstart)
    tree = w.tree(view_id(cell(quickstart, "background")))
    assert "summing" in w.html(tree) and "nbqueue-succeeded" in w.html(tree)
    assert "summing in the background" in w.log(tree)
    assert "summing in the background" not in text_of(cell(quickstart, "background"))
    assert text_of(cell(quickstart, "bg-result")) == \
        "background result: 333283335000 answer = 333283335000\n"


def test_results_by_id_and_dashboard(quickstart):
    out = text_of(cell(quickstart, "by-id"))
    assert "succeeded 328350" in out
    assert "flaky: third time lucky after 3 attempts" in out
    assert "boom failed with ValueError - bad input" in out
    w = Widgets(quickstart)
    dashboard = w.html(w.tree(view_id(cell(quickstart, "dashboard"))))
    for name in ("crunch", "flaky", "boom", "forever"):
        assert name in dashboard
    assert "nbqueue-running" not in dashboard  # %nbqueue wait left it up to date


# Measured on this repo (quickstart: 7 tasks, a group of 3, %%background, the dashboard):
# before the lean widgets 338 models / 275 KB of widget state; after, 127 models / 96 KB
# (a task view is 10 models on shared layouts and styles; the dashboard keeps 25 rows).
MAX_WIDGET_STATE = 150_000
MAX_MODELS = 150


def test_quickstart_saves_lean_widget_state(quickstart):
    """The saved widget state stays small: views share their layouts and styles and
    the dashboard reuses its row models instead of making new ones."""
    state = quickstart.metadata["widgets"][WIDGET_STATE]
    size = len(json.dumps(state))
    models = state["state"]
    counts = {}
    for m in models.values():
        counts[m["model_name"]] = counts.get(m["model_name"], 0) + 1
    print(f"\nquickstart widget state: {len(models)} models, {size} bytes: {counts}")
    assert size < MAX_WIDGET_STATE, (size, counts)
    assert len(models) <= MAX_MODELS, counts
    assert counts.get("LayoutModel", 0) <= 12, counts  # shared, not one per widget
    # every saved model is part of a displayed widget or shared by them: nothing left over
    w = Widgets(quickstart)
    shown = set()
    for c in quickstart.cells:
        for o in c.get("outputs", ()):
            if WIDGET_VIEW in o.get("data", {}):
                shown.update(_reachable(w.state, o["data"][WIDGET_VIEW]["model_id"]))
    assert set(models) == shown, f"{len(set(models) - shown)} saved models belong to no widget"


def _reachable(state, model_id, seen=None):
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return seen
    seen.add(model_id)
    for ref in re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[model_id]["state"])):
        _reachable(state, ref, seen)
    return seen


def test_periodic_notebook(tmp_path, kernel_name):
    nb = execute("periodic.ipynb", tmp_path, kernel_name)
    errors = [(c.id, o.evalue) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert "['every-second', 'heartbeat']" in text_of(cell(nb, "redefine"))  # replaced, not doubled
    watch = text_of(cell(nb, "watch"))
    runs = {line.split()[0]: int(line.split()[2]) for line in watch.splitlines()}
    assert 2 <= runs["heartbeat"] <= 4 and 4 <= runs["every-second"] <= 7, watch
    w = Widgets(nb)
    job = w.html(w.tree(view_id(cell(nb, "define"))))
    assert "heartbeat" in job and "*/2 * * * * *" in job
    assert "[('heartbeat', True)]" in text_of(cell(nb, "pause"))


@pytest.fixture
def kernel(kernel_name):
    """A live kernel and a ``run(code) -> (msg_id, iopub messages until idle)``."""
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name=kernel_name)

    def run(code, until_idle=True):
        msg_id = kc.execute(textwrap.dedent(code))
        return msg_id, iopub_until_idle(kc, msg_id) if until_idle else []

    try:
        yield run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_task_display_and_print_go_to_the_task_not_to_a_cell(kernel):
    """A task's display() is kept for its own widget (``q.state.displays``), even while
    another cell runs; its print()s go to its record only: no cell shows either."""
    first, msgs1 = kernel("""
        import time, nbqueue
        from IPython.display import display, HTML
        q = nbqueue.Queue("routing", storage="memory")

        @q.task
        def report():
            time.sleep(0.3)
            print("task print")
            display(HTML("<b>report ready</b>"))
            return "done"

        r = report()
    """)
    second, msgs2 = kernel("""
        time.sleep(1.0)   # the task displays while this cell runs
        print("second cell:", r.get(timeout=30), repr(r.output),
              [o["data"]["text/html"] for o in q.state.displays[r.id]])
    """)
    msgs = msgs1 + msgs2
    shown = [m for m in msgs if m["msg_type"] == "display_data"
             and "report ready" in m["content"]["data"].get("text/html", "")]
    assert shown == []
    streams = [(m["parent_header"]["msg_id"], m["content"]["text"]) for m in msgs
               if m["msg_type"] == "stream"]
    assert streams == [(second, "second cell: done 'task print\\n' ['<b>report ready</b>']\n")]


def test_wait_resends_an_end_state_sent_while_no_cell_ran(kernel):
    """A task that ends between cells has its last widget update stamped with an ended
    cell, which nbclient drops; ``%nbqueue wait`` sends the end state again."""
    kernel("""
        import time, nbqueue
        q = nbqueue.Queue("gap", storage="memory")

        @q.task
        def nap():
            time.sleep(0.5)

        r = nap()
        r
    """)
    time.sleep(1.5)  # nap ends and its widget updates while no cell runs
    second, msgs = kernel("%load_ext nbqueue\n%nbqueue wait")
    assert any(m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == second
               and "nbqueue-succeeded" in str(m["content"]["data"].get("state", {})) for m in msgs)


def test_progress_flood_is_throttled_on_the_wire(kernel):
    """1,000,000 progress() calls reach the frontend as a few updates a second."""
    kernel("""
        import time, nbqueue
        from IPython.display import display
        q = nbqueue.Queue("flood", storage="memory")

        @q.task
        def flood(n):
            t0 = time.perf_counter()
            for i in range(n):
                nbqueue.progress(i + 1, n)
            return time.perf_counter() - t0
    """)
    _, msgs = kernel("""
        t0 = time.perf_counter()
        r = flood.schedule(args=(1_000_000,), delay=0.3)
        display(r)
        r.wait(60)
        time.sleep(0.6)
        wall = time.perf_counter() - t0
        print(r.status, r.progress.done, round(wall, 2))
    """)
    updates = [m for m in msgs if m["msg_type"] == "comm_msg"
               and m["content"]["data"].get("method") == "update"]
    printed = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    status, done, wall = printed.split()
    assert (status, float(done)) == ("succeeded", 1_000_000)
    # ~6 models change per refresh, at most 4 refreshes a second (plus the final one)
    budget = 6 * (float(wall) / 0.25 + 2)
    print(f"\n{len(updates)} widget updates for 1,000,000 progress() calls in {wall} s")
    assert 0 < len(updates) <= budget, f"{len(updates)} widget updates in {wall}s"

"""The views and ``Queue.retry``, without a kernel.

ipywidgets builds widgets outside a kernel too (their comms go nowhere), so the
views are built and refreshed here directly, reading real queues. What a browser
shows of them is in test_browser.py; the state a notebook saves, in
test_notebooks.py.
"""

import collections
import re
import threading
import types

import pytest
from conftest import new_gate_key, wait_gate, wait_until

import nbqueue
from nbqueue.exceptions import InvalidStateError, TaskNotFound
from nbqueue.ui import look  # these load ipywidgets only when a view is built
from nbqueue.ui.dashboard import DashboardView
from nbqueue.ui.updater import Updater
from nbqueue.ui.widgets import GroupView, TaskView, view_for

pytest.importorskip("ipywidgets")

_calls = collections.Counter()
_calls_lock = threading.Lock()


def fail_first(key, value="ok", times=1):
    """Fails on its first ``times`` calls for ``key``, then returns ``value``."""
    with _calls_lock:
        _calls[key] += 1
        n = _calls[key]
    print(f"call {n}")
    if n <= times:
        raise ConnectionError(f"call {n} fails")
    return value


def add(a, b):
    return a + b


def blocked(key):
    return wait_gate(key)


def counted(key, n):
    for i in range(n):
        nbqueue.progress(i + 1, n)
    return wait_gate(key)


def text(html):
    return re.sub(r"<[^>]+>", "", html)


def finished(r):
    assert r.wait(10), f"{r} did not finish"
    return r


# ---- the task view ------------------------------------------------------------------
def test_no_total_shows_moving_stripes_and_no_fraction(queue, gates):
    key = gates.new()
    r = queue.task(blocked)(key)
    assert wait_until(lambda: r.status == "running")
    view = TaskView(r)
    assert "nbqueue-striped" in view.bar.value and "animation:nbqueue-stripes" in view.bar.value
    assert "@keyframes nbqueue-stripes" in view.bar.value  # its own CSS: also in an HTML export
    assert "aria-valuenow" not in view.bar.value  # indeterminate, as ARIA has it
    assert "/" not in text(view.counts.value) and "%" not in text(view.counts.value)
    assert look.shared()["button"] is view.cancel_button.layout  # Cancel shown
    assert view.retry_button.layout is look.shared()["hidden"]
    gates[key].set()
    finished(r)
    view.refresh()
    assert "nbqueue-striped" not in view.bar.value and "width:100%" in view.bar.value
    assert "nbqueue-fill-success" in view.bar.value


def test_a_total_shows_the_fraction(queue, gates):
    key = gates.new()
    r = queue.task(counted)(key, 4)
    assert wait_until(lambda: r.progress.done == 4)
    view = TaskView(r)
    assert 'style="width:100%' in view.bar.value and "nbqueue-striped" not in view.bar.value
    assert "4/4" in view.counts.value


def test_cancel_asked_of_a_running_task_shows_cancelling(queue, gates):
    key = gates.new()
    r = queue.task(blocked)(key)
    assert wait_until(lambda: r.status == "running")
    view = TaskView(r)
    assert "nbqueue-running" in view.title.value and not view.cancel_button.disabled
    r.cancel()  # the task waits in a C call: it is still running for a while
    view.refresh()
    assert r.status == "running"
    assert "nbqueue-cancelling" in view.title.value and ">cancelling<" in view.title.value
    assert view.cancel_button.disabled and view.cancel_button.layout is look.shared()["button"]
    assert "nbqueue-fill-warning" in view.bar.value
    gates[key].set()
    finished(r)


def test_finished_tasks_show_no_cancel_and_retry_only_after_failing(memory_queue):
    ok = finished(memory_queue.task(add)(1, 2))
    bad = finished(memory_queue.task(fail_first)(new_gate_key()))
    hidden, shown = look.shared()["hidden"], look.shared()["button"]
    good_view, bad_view = TaskView(ok), TaskView(bad)
    assert good_view.cancel_button.layout is hidden and good_view.retry_button.layout is hidden
    assert bad_view.cancel_button.layout is hidden and bad_view.retry_button.layout is shown
    assert "ConnectionError" in bad_view.detail.value and "nbqueue-fill-danger" in bad_view.bar.value


def test_log_title_counts_lines_and_follows_the_output(memory_queue):
    bad = finished(memory_queue.task(fail_first)(new_gate_key()))
    view = TaskView(bad)
    assert view.log_box.titles == ("Log (1 line)",)
    assert [o["text"] for o in view.log.outputs] == ["call 1\n"]
    assert look.log_title("") == "Log"
    assert look.log_title("a") == "Log (1 line)"
    assert look.log_title("a\nb\n") == "Log (2 lines)"
    assert look.log_title("a\nb") == "Log (2 lines)"
    assert look.log_title("a\n", 2) == "Log (1 line, 2 displays)"
    assert look.log_title("", 1) == "Log (1 display)"


def test_displays_show_after_the_prints_in_the_log(memory_queue):
    r = finished(memory_queue.task(fail_first)(new_gate_key()))
    shown = {"output_type": "display_data", "data": {"text/html": "<b>chart</b>", "text/plain": "chart"},
             "metadata": {}}
    memory_queue.state.displays[r.id] = [shown]  # what the display capture fills in
    view = TaskView(r)
    assert view.log.outputs == ({"output_type": "stream", "name": "stdout", "text": "call 1\n"}, shown)
    assert view.log_box.titles == ("Log (1 line, 1 display)",)
    # update_display() replaces an output, clear_output() empties the list
    updated = dict(shown, data={"text/plain": "chart, updated"})
    memory_queue.state.displays[r.id][0] = updated
    view.refresh()
    assert view.log.outputs[1] is updated
    memory_queue.state.displays[r.id].clear()
    view.refresh()
    assert len(view.log.outputs) == 1 and view.log_box.titles == ("Log (1 line)",)


def test_views_share_their_layouts_and_styles(memory_queue):
    a = finished(memory_queue.task(add)(1, 2))
    b = finished(memory_queue.task(add)(3, 4))
    va, vb = TaskView(a), TaskView(b)
    assert va.title.layout is vb.title.layout and va.title.style is vb.title.style
    assert va.box.layout is vb.box.layout
    own = {w.model_id for w in va._widgets}
    assert len(own) <= 10  # title, bar, counts, detail, 2 buttons, row, log, accordion, box
    shared = {m.model_id for m in look.shared().values()}
    va.close()
    assert va.box.comm is None and va.log.comm is None
    assert all(m.comm is not None for m in look.shared().values())  # shared ones stay
    assert {m.model_id for m in look.shared().values()} == shared


def test_group_view_uses_the_html_bar(memory_queue):
    group = nbqueue.ResultGroup([memory_queue.task(add)(1, 2), memory_queue.task(add)(3, 4)])
    group.wait(10)
    view = GroupView(group)
    assert "width:100%" in view.bar.value and "nbqueue-fill-success" in view.bar.value
    assert "2 of 2 done" in view.counts.value


def test_a_purged_task_shows_purged(memory_queue):
    r = finished(memory_queue.task(add)(1, 2))
    view = TaskView(r)
    memory_queue.purge()
    assert view.refresh() is False
    assert "nbqueue-purged" in view.title.value


# ---- Retry ----------------------------------------------------------------------------
def test_retry_button_submits_the_call_again_and_shows_the_new_task_inside(memory_queue):
    key = new_gate_key()
    bad = finished(memory_queue.task(fail_first)(key, value="second time"))
    view = view_for(bad)
    view._on_retry(None)  # what a click on Retry runs (in the main thread)
    new = view.retried
    assert new is not None and new.id != bad.id
    assert new.get(timeout=10) == "second time"
    view._on_retry(None)  # a second click does nothing more
    assert view.retried is new
    view.refresh()
    assert view.retried_view.box in view.box.children
    assert f"retried as <code>{new.id[:12]}</code>" in view.detail.value
    assert view.retry_button.layout is look.shared()["hidden"]
    view.retried_view.refresh()
    assert f"retry of <code>{bad.id[:12]}</code>" in view.retried_view.detail.value
    assert "nbqueue-succeeded" in view.retried_view.title.value


def test_retry_from_code_links_the_old_widget_when_the_new_one_shows(memory_queue):
    bad = finished(memory_queue.task(fail_first)(new_gate_key()))
    old = view_for(bad)
    new = memory_queue.retry(bad.id)
    view_for(new)  # displaying the new Result: its view tells the old one
    assert old.retried == new
    old.refresh()
    assert "retried as" in old.detail.value and old.retried_view is None


def test_a_failed_retry_shows_in_the_widget(memory_queue):
    ok = finished(memory_queue.task(add)(1, 2))
    view = TaskView(ok)
    view._on_retry(None)
    view.refresh()
    assert view.retried is None and "retry failed: InvalidStateError" in view.detail.value


@pytest.mark.parametrize("store_kind", ["memory", "disk"])
def test_queue_retry_submits_the_same_call_as_a_new_task(queue):
    fn = queue.task(retries=2, retry_delay=0.01, priority=5, timeout=30)(fail_first)
    # fails on every attempt of the first task (3 calls), then succeeds
    bad = finished(fn(new_gate_key(), value="again", times=3))
    assert bad.status == "failed"
    new = queue.retry(bad.id)
    assert new.get(timeout=10) == "again"
    old_rec, rec = queue.store.get(bad.id), queue.store.get(new.id)
    assert rec.name == old_rec.name == fn.name
    assert (rec.priority, rec.retries, rec.retry_delay, rec.timeout) == (5, 2, 0.01, 30)
    assert rec.message == f"retry of {bad.id}"
    assert old_rec.status == "failed"  # the old record is left as it was
    again = bad.retry()  # the same through the handle
    assert again.get(timeout=10) == "again" and again.id not in (bad.id, new.id)


@pytest.mark.parametrize("store_kind", ["memory", "disk"])
def test_retry_refuses_unknown_and_unfinished_tasks(queue, gates):
    with pytest.raises(TaskNotFound):
        queue.retry("0" * 32)
    ok = finished(queue.task(add)(1, 2))
    with pytest.raises(InvalidStateError, match="only a failed or cancelled task"):
        queue.retry(ok.id)
    key = gates.new()
    running = queue.task(blocked)(key)
    assert wait_until(lambda: running.status == "running")
    with pytest.raises(InvalidStateError, match="cancel it first"):
        queue.retry(running.id)
    gates[key].set()
    finished(running)


def test_retry_of_a_task_cancelled_before_it_ran(make_queue):
    q = make_queue(start=False)
    r = q.task(add)(2, 3)
    r.cancel()
    assert r.status == "cancelled"
    new = q.retry(r.id)
    q.start()
    assert new.get(timeout=10) == 5


def test_retry_runs_the_task_as_registered_now(memory_queue):
    """Fix the function, re-run the cell that defines it, Retry: the fixed code runs."""
    def job(x):
        raise ValueError("bug")

    bad = finished(memory_queue.task(job)(20))

    def job(x):  # the re-run cell
        return x + 1

    memory_queue.task(job)
    assert memory_queue.retry(bad.id).get(timeout=10) == 21


def test_retry_of_a_pipeline_step_gets_the_value_it_was_given(memory_queue):
    key = new_gate_key()
    first = memory_queue.task(add)
    second = memory_queue.task(fail_first)
    group = memory_queue.enqueue(first.s(1, 2).then(second, key))  # second(key, 3)
    group.wait(10)
    assert [r.status for r in group] == ["succeeded", "failed"]
    assert memory_queue.retry(group[1].id).get(timeout=10) == 3


# ---- the dashboard --------------------------------------------------------------------
class SmallDashboard(DashboardView):
    rows = 3


def _changes(widgets):
    """Count trait changes of ``widgets`` (what would go to the frontend)."""
    seen = []
    for w in widgets:
        w.observe(lambda change: seen.append(change["name"]), names=["value", "children", "layout",
                                                                     "disabled"])
    return seen


def test_dashboard_reuses_its_rows_and_changes_only_values(memory_queue):
    add_task = memory_queue.task(add)
    finished(add_task(1, 1))
    view = SmallDashboard(memory_queue)
    try:
        hidden = look.shared()["hidden"]
        made = list(view._widgets)
        cells = view.table.children
        assert len(cells) == 2 * 3  # a fixed set: a row and its Cancel, three times
        assert [row.layout is hidden for row, _ in view._slots] == [False, True, True]
        for i in range(5):  # tasks appear: rows fill in, no model is made or closed
            finished(add_task(i, i))
            view.refresh(force=True)
        assert view._widgets == made and view.table.children == cells
        assert all(w.comm is not None for w in made)
        assert [row.layout is hidden for row, _ in view._slots] == [False, False, False]
        # nothing changed: a refresh sends nothing
        seen = _changes(made)
        view.refresh(force=True)
        assert seen == []
        # Older: the same rows show the next page
        view.older.click()
        view.refresh(force=True)  # what the updater does at its next pass
        assert view.offset == 3 and "4–6 of 6" in view.where.value
        assert view._widgets == made and view.table.children == cells
        # finished rows: Cancel invisible (keeping its grid cell) and disabled
        for row, button in view._slots:
            assert button.disabled and button.layout is look.shared()["invisible"]
    finally:
        view.close()  # the updater drops it at its next pass


def test_dashboard_row_cancel_acts_on_the_task_the_row_shows(memory_queue, gates):
    key = gates.new()
    r = memory_queue.task(blocked)(key)
    assert wait_until(lambda: r.status == "running")
    view = SmallDashboard(memory_queue)
    try:
        row, button = view._slots[0]
        assert not button.disabled and button.layout is look.shared()["button"]
        button.click()
        assert memory_queue.store.get(r.id).cancel_requested
        view.refresh(force=True)
        assert "nbqueue-cancelling" in row.value and button.disabled
    finally:
        gates[key].set()
        view.close()


# ---- where views are shown: closed once no cell shows them -------------------------
def _info(cell_id, deleted=()):
    return types.SimpleNamespace(cell_id=cell_id, cell_meta={"deletedCells": list(deleted)})


def test_a_view_is_closed_when_the_only_cell_showing_it_runs_again(memory_queue):
    u = Updater()
    r = finished(memory_queue.task(add)(1, 2))
    view = u.view(("task", r.id), lambda: TaskView(r))
    u.shown(view, "cell-a")
    u.shown(view, "cell-b")
    u._pre_run_cell(_info("cell-a"))
    assert not view.closed  # cell-b still shows it
    u._pre_run_cell(_info("cell-c", deleted=["cell-b"]))
    assert view.closed and view.box.comm is None and view.bar.comm is None
    assert u.cached(("task", r.id)) is None  # displayed again: a new view


def test_a_view_shown_where_no_cell_id_is_known_stays(memory_queue):
    u = Updater()
    r = finished(memory_queue.task(add)(1, 2))
    view = u.view(("task", r.id), lambda: TaskView(r))
    u.shown(view, "cell-a")
    u.shown(view, None)  # e.g. nbclient, which sends no cell ids
    u._pre_run_cell(_info("cell-a"))
    assert not view.closed


def test_a_retry_view_inside_another_closes_with_it(memory_queue):
    u = Updater()
    bad = finished(memory_queue.task(fail_first)(new_gate_key()))
    new = finished(memory_queue.retry(bad.id))
    outer = u.view(("task", bad.id), lambda: TaskView(bad))
    inner = u.view(("task", new.id), lambda: TaskView(new))
    u.shown(outer, "cell-a")
    u.embedded(inner, outer)
    u._pre_run_cell(_info("cell-a"))
    assert outer.closed and inner.closed and inner.box.comm is None



def test_dashboard_shows_the_stores_live_worker_processes(disk_queue):
    import os
    store = disk_queue.store
    info = {"pid": os.getpid(), "host": os.uname().nodename, "workers": 2, "kind": "process",
            "busy": 1, "sidecar": True}
    store.beat_worker(disk_queue.worker_id, info)  # this live process, registered as a sidecar
    store.beat_worker("elsewhere:1:1:dead", dict(info, host="elsewhere"), now=0)  # long ago
    view = DashboardView(disk_queue)
    try:
        shown = view.workers.value
        assert f"sidecar pid {os.getpid()} on {os.uname().nodename}: 2 process workers, 1 busy" in shown
        assert "last heartbeat 0 s ago" in shown
        assert "elsewhere" not in shown  # not seen for long: taken for dead, not shown
    finally:
        view.close()

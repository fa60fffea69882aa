"""Live displays: a task widget, a group widget, a job widget and the queue dashboard,
all refreshed by one throttled updater thread per kernel.

Widgets are built once, in the cell that displays them (the main thread), and
then only their values change. Every write comes from ``Updater``, a plain
thread (not an asyncio task: a copied context would stamp updates with an old
cell's parent and nbclient would drop them), at most ``Updater.interval`` apart,
reading each task's state from the store. So a task run by another process
shows just like one run here, and a task calling ``progress()`` a million times
costs the frontend a few messages a second. The log is replaced by assigning
``Output.outputs``, never by ``clear_output()`` from a thread.

Views are lean: few models each, on layouts and styles shared by all
(``look.shared``), so a saved notebook carries little widget state; a view
whose cell ran again is closed (``Updater.shown``). A Retry button (failed or
cancelled task) is a click handler, so it runs in the main thread: it submits
the call again and builds the new task's view there; the updater shows it.

Outside a kernel, or without ipywidgets, everything displays as text.
"""

import html
import sys
import threading
import time

from ..states import (
    CANCELLED,
    FAILED,
    FINISHED,
    RETRYING,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
)
from ..runtime.liveness import describe_worker, live_workers
from .dashboard import DashboardView
from .look import (
    BAR_KINDS,
    View,
    badge,
    bar,
    duration,
    error_html,
    log_title,
    next_run_text,
    progress_text,
    shown_status,
)
from .updater import settle, updater  # noqa: F401 -- settle: for %nbqueue wait

RETRY_OF = "retry of "  # how Queue.retry() marks the new task's record (its message)


def widgets_available():
    """True inside a Jupyter kernel with ipywidgets installed."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    shell = ipython.get_ipython()
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def mimebundle(obj, text):
    """The display data of ``obj``: its widget in a kernel, else just ``text``."""
    if not widgets_available():
        return {"text/plain": text}
    try:
        view = view_for(obj)
        data = view.box._repr_mimebundle_()
    except Exception as exc:  # a display must never raise into the user's cell
        return {"text/plain": f"{text}\n(nbqueue: no widget: {exc})"}
    updater().shown(view, _current_cell())
    data["text/plain"] = text
    return data


def _current_cell():
    """The id of the cell running now (JupyterLab sends it as ``cellId``), or None:
    from another thread (a task's display goes to its submitting cell, not
    necessarily this one), or from a client that sends none."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        shell = sys.modules["IPython"].get_ipython()
        parent = shell.kernel.get_parent() or {}
        return (parent.get("metadata") or {}).get("cellId") or None
    except Exception:
        return None


def view_for(obj):
    """The (one, shared) live view of a Result, ResultGroup, PeriodicJob or Queue,
    picked by what the object says it is (``_nbqueue_view_``), not by its class."""
    kind = getattr(obj, "_nbqueue_view_", None)
    if kind == "task":
        return updater().view(("task", obj.queue.store, obj.id), lambda: TaskView(obj))
    if kind == "group":
        return updater().view(("group", id(obj)), lambda: GroupView(obj))
    if kind == "job":
        return updater().view(("job", obj.queue.store, obj.name), lambda: JobView(obj))
    if isinstance(obj, Dashboard):
        return DashboardView(obj.queue)  # each dashboard has its own filter
    raise TypeError(f"nothing to display for {obj!r}")


def finished_state(status):
    return status in FINISHED


_progress_text = progress_text  # the name this had before the views moved their pieces to look.py


class TaskView(View):
    """Name, state, progress bar (moving stripes when there is no total), done/total,
    elapsed, ETA, attempts, last message, Cancel while it can be cancelled, Retry
    once it failed or was cancelled, and a collapsible log of its prints and
    displays; the error and traceback on failure."""

    def __init__(self, result):
        w = self._start()
        self.result = result
        self.retried = None       # the Result of this task's retry, once known here
        self.retried_view = None  # its view, shown inside this one (Retry clicked here)
        self._retry_error = None
        self._shown_log = None
        s = self._shared
        self.title = self._make(w.HTML)
        self.cancel_button = self._make(w.Button, "hidden", description="Cancel", icon="stop",
                                        button_style="warning", tooltip="cancel this task")
        self.cancel_button.on_click(self._on_cancel)
        self.retry_button = self._make(w.Button, "hidden", description="Retry", icon="redo",
                                       tooltip="run the same call again, as a new task")
        self.retry_button.on_click(self._on_retry)
        self.bar = self._make(w.HTML, "grow")
        self.counts = self._make(w.HTML)
        self.detail = self._make(w.HTML)
        self.log = self._make(w.Output)
        self.log_box = self._make(w.Accordion, children=[self.log], titles=("Log",), selected_index=None)
        self.line = self._make(w.HBox, children=[self.bar, self.counts, self.cancel_button,
                                                 self.retry_button])
        self.box = self._make(w.VBox, "card", children=[self.title, self.line, self.detail, self.log_box])
        self.box.add_class("nbqueue-task")
        self._buttons = (s["button"], s["hidden"])
        self.refresh()
        self._link_to_original()

    def _link_to_original(self):
        """A retry's view tells the view of the task it retries (if this kernel shows
        it) where the call went: "retried as ..." there."""
        rec = self.result.queue.store.get(self.result.id)
        message = rec.message if rec is not None else None
        if not message or not message.startswith(RETRY_OF):
            return
        original = updater().cached(("task", self.result.queue.store, message[len(RETRY_OF):]))
        if isinstance(original, TaskView) and original.retried is None:
            original.retried = self.result
            updater().add(original)

    def _on_cancel(self, _button):
        try:
            self.result.cancel()
        finally:
            updater().poke()

    def _on_retry(self, _button):
        """Submit the same call again (a new task) and show its view inside this one.
        A button click runs in the main thread, where widgets are built; the
        updater shows the change."""
        if self.retried is not None:
            return
        try:
            self.retried = self.result.queue.retry(self.result.id)
        except Exception as exc:  # shown in the widget, never raised into a cell
            self._retry_error = f"{type(exc).__name__}: {exc}"
        else:
            self.retried_view = view_for(self.retried)
            updater().embedded(self.retried_view, self)
        updater().add(self)

    def refresh(self, force=False):
        """Copy the record's state into the widgets. Returns False once final."""
        if self.closed:
            return False
        rec = self.result.queue.store.get(self.result.id, ("output",))
        if rec is None:
            self.title.value = badge("purged")
            self.cancel_button.layout = self.retry_button.layout = self._buttons[1]
            self.final = True
            return False
        status = rec.status
        shown = shown_status(rec)
        finished = status in FINISHED
        # The badge is written last: the frontend applies updates in order, so whoever
        # sees the new state already sees the bar, buttons and log that go with it.
        shown_layout, hidden = self._buttons
        self.cancel_button.disabled = bool(rec.cancel_requested)
        self.cancel_button.layout = hidden if finished else shown_layout
        can_retry = status in (FAILED, CANCELLED) and self.retried is None
        self.retry_button.layout = shown_layout if can_retry else hidden
        total, done = rec.progress_total, rec.progress_done or 0
        if status == RUNNING and not total:  # no total: no fraction to show
            self.bar.value = bar(1.0, BAR_KINDS.get(shown, "info"), striped=True)
        else:
            try:
                fraction = min(done, total) / total if total else (1.0 if finished else 0.0)
            except (TypeError, ValueError):
                fraction = 0.0
            self.bar.value = bar(fraction, BAR_KINDS.get(shown, "info"))
        self.counts.value = f'<span class="nbqueue-counts">{self._counts(rec)}</span>'
        self.detail.value = self._detail(rec)
        self._refresh_log(rec)
        if self.retried_view is not None and self.retried_view.box not in self.box.children:
            self.box.children = (*self.box.children, self.retried_view.box)
        self.title.value = (f'<b class="nbqueue-name">{html.escape(rec.name)}</b> '
                            f'<span style="color:#888;font-size:85%">{rec.id[:12]}</span> {badge(shown)}')
        self.final = finished
        return not finished

    def _counts(self, rec):
        status, total, done = rec.status, rec.progress_total, rec.progress_done or 0
        now = time.time()
        elapsed = (rec.finished_at or now) - rec.started_at if rec.started_at else None
        parts = []
        try:
            if total:
                parts.append(f"{done:g}/{total:g}")
            elif done:
                parts.append(f"{done:g} done")
        except (TypeError, ValueError):
            parts.append(progress_text(rec))
        if elapsed is not None:
            parts.append(f"elapsed {duration(elapsed)}")
        if status == RUNNING and total and done and elapsed:
            try:
                parts.append(f"ETA {duration(elapsed / done * (total - done))}")
            except (TypeError, ValueError, ZeroDivisionError):
                pass
        if status in (SCHEDULED, RETRYING) and rec.eta:
            parts.append(f"starts in {duration(rec.eta - now)}")
        if rec.attempts > 1 or rec.retries:
            parts.append(f"attempt {rec.attempts}" + (f" of {rec.retries + 1}" if rec.retries else ""))
        return " · ".join(parts)

    def _detail(self, rec):
        """The lines under the bar: progress message (or why it was cancelled,
        retried or recovered), where it came from or went, the error."""
        status = rec.status
        lines = []
        why = rec.message if status in (RETRYING, CANCELLED) or (
            rec.recoveries and status not in FINISHED) else None
        msg = why if status == CANCELLED else (rec.progress_message or why)  # why it stopped first
        if msg:
            lines.append(f'<span class="nbqueue-message" style="color:#555">{html.escape(msg)}</span>')
        if rec.message and rec.message.startswith(RETRY_OF):
            lines.append(f'<span class="nbqueue-retry-of" style="color:#888">retry of '
                         f'<code>{html.escape(rec.message[len(RETRY_OF):][:12])}</code></span>')
        if self.retried is not None:
            lines.append(f'<span class="nbqueue-retried-as" style="color:#555">retried as '
                         f'<code>{html.escape(self.retried.id[:12])}</code></span>')
        if self._retry_error:
            lines.append(f'<span class="nbqueue-retry-error" style="color:#dc3545">retry failed: '
                         f'{html.escape(self._retry_error)}</span>')
        return "<br>".join(lines) + (error_html(rec) if status == FAILED else "")

    def _refresh_log(self, rec):
        """The log: the task's prints, then what it displayed, in one ``outputs``
        assignment, and its title from the same read, in the same pass."""
        text = rec.output or ""
        # a task's display() appends, update_display() replaces, clear_output() empties:
        # compare the outputs themselves (the same dicts compare by identity first)
        displays = tuple(self.result.queue.state.displays.get(self.result.id, ()))
        if (text, displays) == self._shown_log:
            return
        self._shown_log = (text, displays)
        self.log_box.titles = (log_title(text, len(displays)),)
        stream = ({"output_type": "stream", "name": "stdout", "text": text},) if text else ()
        self.log.outputs = stream + displays


class GroupView(View):
    """One bar for many tasks: n done of N, failures counted."""

    def __init__(self, group):
        w = self._start()
        self.group = group
        self.title = self._make(w.HTML)
        self.bar = self._make(w.HTML, "grow")
        self.counts = self._make(w.HTML)
        self.line = self._make(w.HBox, children=[self.bar, self.counts])
        self.box = self._make(w.VBox, "card", children=[self.title, self.line])
        self.box.add_class("nbqueue-group")
        self._ended = {}   # id -> final status: finished members are read once
        self._names = {}
        self.refresh()

    def refresh(self, force=False):
        if self.closed:
            return False
        store = self.group.results[0].queue.store if len(self.group) else None
        counts = dict.fromkeys(STATES, 0)
        names = set()
        purged = 0
        for r in self.group:
            status = self._ended.get(r.id) or store.status(r.id)
            if status is None:
                purged += 1  # finished once, or it could not have been purged
                continue
            counts[status] += 1
            if r.id not in self._names:
                rec = store.get(r.id)
                self._names[r.id] = rec.name if rec is not None else "?"
            names.add(self._names[r.id])
            if status in FINISHED:
                self._ended[r.id] = status
        finished = sum(counts[s] for s in FINISHED) + purged
        n = len(self.group)
        self.title.value = (f"<b>{html.escape(', '.join(sorted(names)) or 'empty group')}</b> "
                            f"<span style='color:#888'>{n} tasks</span>")
        failures = counts[FAILED] + counts[CANCELLED]
        kind = "danger" if counts[FAILED] else ("success" if finished == n else "info")
        self.bar.value = bar(finished / n if n else 1.0, kind)
        parts = [f"{finished} of {n} done"]
        parts += [f"{counts[s]} {s}" for s in (RUNNING, FAILED, CANCELLED, RETRYING) if counts[s]]
        state = SUCCEEDED if finished == n and not failures else (FAILED if counts[FAILED] else RUNNING)
        self.counts.value = f'<span class="nbqueue-counts">{" · ".join(parts)}</span> ' + (
            badge(state) if finished == n else "")
        self.final = finished == n
        return not self.final


class JobView(View):
    """A periodic job: schedule, next run, counters, last run's state, pause/resume."""

    def __init__(self, job):
        w = self._start()
        self.job = job
        self.summary = self._make(w.HTML)
        self.toggle = self._make(w.Button, "button", description="Pause", icon="pause")
        self.toggle.on_click(self._on_toggle)
        self.box = self._make(w.HBox, "card", children=[self.summary, self.toggle])
        self.box.add_class("nbqueue-job")
        self.refresh()

    def _on_toggle(self, _button):
        if self.job.paused:
            self.job.resume()
        else:
            self.job.pause()
        updater().poke()

    def refresh(self, force=False):
        if self.closed:
            return False
        store = self.job.queue.store
        rec = store.get_job(self.job.name)
        if rec is None:
            self.summary.value = f"<b>{html.escape(self.job.name)}</b> (removed)"
            self.toggle.disabled = True
            return False
        last = store.status(rec.last_run_id) if rec.last_run_id else None
        counters = f"runs {rec.runs}" + (f" · skipped {rec.skipped}" if rec.skipped else "") + (
            f" · missed {rec.missed}" if rec.missed else "") + (
            f" · errors {rec.errors}" if rec.errors else "")
        error = (f'<br><span class="nbqueue-job-error" style="color:#dc3545">last error: '
                 f'{html.escape(rec.last_error)}</span>') if rec.errors and rec.last_error else ""
        self.summary.value = (
            f'<b class="nbqueue-name">{html.escape(rec.name)}</b> '
            f'<code>{html.escape(rec.schedule)}</code> · {next_run_text(rec)} · <span class="nbqueue-counts">'
            f'{counters}</span>' + (f" · last {badge(last)}" if last else "") + error)
        self.toggle.description, self.toggle.icon = ("Resume", "play") if rec.paused else ("Pause", "pause")
        return True


class Dashboard:
    """What ``q.dashboard()`` returns: the live table in a kernel, a text table elsewhere."""

    def __init__(self, queue):
        self.queue = queue

    def text(self, limit=25, offset=0):
        store = self.queue.store
        counts = store.counts()
        lines = [f"queue {self.queue.name!r}: {sum(counts.values())} tasks"
                 + "".join(f", {counts[s]} {s}" for s in STATES if counts[s])]
        lines += [f"  {describe_worker(info)}"
                  for info in live_workers(store, forget_dead=False).values()]
        for rec in store.page(None, None, limit, offset):
            lines.append(f"  {rec.id[:8]}  {rec.status:<10} {progress_text(rec):>9}  "
                         f"attempts={rec.attempts}  {rec.name}")
        for job in store.jobs().values():
            lines.append(f"  job {job.name} {job.schedule!r} {next_run_text(job)} runs={job.runs}"
                         + (f" errors={job.errors}" if job.errors else ""))
        return "\n".join(lines)

    def __repr__(self):
        return self.text()

    def _repr_pretty_(self, p, cycle):
        p.text(self.text())

    def _repr_mimebundle_(self, include=None, exclude=None):
        return mimebundle(self, self.text())

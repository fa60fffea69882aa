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

Outside a kernel, or without ipywidgets, everything displays as text.
"""

import html
import sys
import time

from ..states import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RETRYING,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
)
from .updater import settle, updater  # noqa: F401 -- settle: for %nbqueue wait

COLOURS = {
    PENDING: "#6c757d", SCHEDULED: "#6f42c1", RUNNING: "#0d6efd", RETRYING: "#fd7e14",
    SUCCEEDED: "#198754", FAILED: "#dc3545", CANCELLED: "#adb5bd",
}
BAR_STYLES = {SUCCEEDED: "success", FAILED: "danger", CANCELLED: "warning", RETRYING: "warning"}


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
    except Exception as exc:  # a display must never raise into the user's cell
        return {"text/plain": f"{text}\n(nbqueue: no widget: {exc})"}
    data = view.box._repr_mimebundle_()
    data["text/plain"] = text
    return data


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


def _badge(status):
    colour = COLOURS.get(status, "#6c757d")
    return (f'<span class="nbqueue-state nbqueue-{status}" style="background:{colour};color:white;'
            f'border-radius:4px;padding:1px 8px;font-size:90%">{status}</span>')


def _duration(seconds):
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _next_run_text(job):
    """'paused', 'next 14:05:00' or 'not scheduled' for a JobRecord."""
    if job.paused:
        return "paused"
    if not job.next_run:
        return "not scheduled"
    return "next " + time.strftime("%H:%M:%S", time.localtime(job.next_run))


def _error_html(rec):
    err = rec.error or {}
    head = html.escape(f"{err.get('type', 'error')}: {err.get('message', '')}")
    return (f'<div class="nbqueue-error" style="color:#dc3545"><b>{head}</b>'
            f'<pre style="font-size:85%;white-space:pre-wrap;max-height:20em;overflow:auto">'
            f"{html.escape(err.get('traceback') or '')}</pre></div>")


class TaskView:
    """Name, state, progress bar (pulsing when there is no total), done/total, elapsed,
    ETA, attempts, last message, Cancel button, and a collapsible log; the error and
    traceback on failure."""

    def __init__(self, result):
        import ipywidgets as w
        self.result = result
        self.final = False
        self._pulse = 0
        self._shown_output = None
        self.title = w.HTML(layout=w.Layout(flex="1 1 auto"))
        self.state = w.HTML()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="cancel this task", layout=w.Layout(width="auto"))
        self.cancel_button.on_click(self._on_cancel)
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(flex="1 1 auto"))
        self.bar.add_class("nbqueue-bar")
        self.counts = w.HTML()
        self.message = w.HTML()
        self.error = w.HTML()
        self.log = w.Output()
        self.log_box = w.Accordion(children=[self.log], titles=("Log",), selected_index=None)
        self.box = w.VBox([
            w.HBox([self.title, self.state, self.cancel_button]),
            w.HBox([self.bar, self.counts]),
            self.message, self.error, self.log_box,
        ], layout=w.Layout(border="1px solid #ddd", padding="4px 8px", margin="2px 0"))
        self.box.add_class("nbqueue-task")
        self.refresh()

    def _on_cancel(self, _button):
        try:
            self.result.cancel()
        finally:
            updater().poke()

    def refresh(self, force=False):
        """Copy the record's state into the widgets. Returns False once final."""
        rec = self.result.queue.store.get(self.result.id, ("output",))
        if rec is None:
            self.state.value = _badge("purged")
            return False
        status = rec.status
        self.title.value = (f'<b class="nbqueue-name">{html.escape(rec.name)}</b> '
                            f'<span style="color:#888;font-size:85%">{rec.id[:12]}</span>')
        self.state.value = _badge(status)
        total, done = rec.progress_total, rec.progress_done or 0
        if total:
            self.bar.max = float(total)
            self.bar.value = float(min(done, total))
        elif status == SUCCEEDED:
            self.bar.max, self.bar.value = 1.0, 1.0
        elif status == RUNNING:  # no total: an indeterminate pulse
            self._pulse = (self._pulse + 1) % 10
            self.bar.max, self.bar.value = 1.0, (self._pulse + 1) / 10
        else:
            self.bar.max, self.bar.value = 1.0, 0.0
        self.bar.bar_style = BAR_STYLES.get(status, "info" if status == RUNNING and not total else "")
        now = time.time()
        elapsed = None
        if rec.started_at:
            elapsed = (rec.finished_at or now) - rec.started_at
        parts = []
        if total:
            parts.append(f"{done:g}/{total:g}")
        elif done:
            parts.append(f"{done:g}")
        if elapsed is not None:
            parts.append(f"elapsed {_duration(elapsed)}")
        if status == RUNNING and total and done and elapsed:
            parts.append(f"ETA {_duration(elapsed / done * (total - done))}")
        if status in (SCHEDULED, RETRYING) and rec.eta:
            parts.append(f"starts in {_duration(rec.eta - now)}")
        if rec.attempts > 1 or rec.retries:
            parts.append(f"attempt {rec.attempts}" + (f" of {rec.retries + 1}" if rec.retries else ""))
        self.counts.value = f'<span class="nbqueue-counts">{" · ".join(parts)}</span>'
        msg = rec.progress_message or (rec.message if status in (RETRYING, CANCELLED) or (
            rec.recoveries and not finished_state(status)) else None)
        self.message.value = (f'<span class="nbqueue-message" style="color:#555">{html.escape(msg)}</span>'
                              if msg else "")
        self.error.value = _error_html(rec) if status == FAILED else ""
        output = rec.output or ""
        if output != self._shown_output:
            self._shown_output = output
            self.log.outputs = ({"output_type": "stream", "name": "stdout", "text": output},) \
                if output else ()
            self.log_box.titles = (f"Log ({output.count(chr(10))} lines)",)
        finished = status in FINISHED
        self.cancel_button.disabled = finished
        self.final = finished
        return not finished


class GroupView:
    """One bar for many tasks: n done of N, failures counted."""

    def __init__(self, group):
        import ipywidgets as w
        self.group = group
        self.final = False
        self.title = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=float(max(1, len(group))),
                                   layout=w.Layout(flex="1 1 auto"))
        self.bar.add_class("nbqueue-bar")
        self.counts = w.HTML()
        self.box = w.VBox([self.title, w.HBox([self.bar, self.counts])],
                          layout=w.Layout(border="1px solid #ddd", padding="4px 8px"))
        self.box.add_class("nbqueue-group")
        self._ended = {}   # id -> (final status, None)
        self._names = {}
        self.refresh()

    def refresh(self, force=False):
        store = self.group.results[0].queue.store if len(self.group) else None
        counts = dict.fromkeys(STATES, 0)
        names = set()
        purged = 0
        for r in self.group:  # finished members are read once, not on every refresh
            status, name = self._ended.get(r.id) or (store.status(r.id), None)
            if status is None:
                purged += 1  # finished once, or it could not have been purged
                continue
            counts[status] += 1
            if r.id not in self._names:
                rec = store.get(r.id)
                self._names[r.id] = rec.name if rec is not None else "?"
            names.add(self._names[r.id])
            if status in FINISHED:
                self._ended[r.id] = (status, name)
        finished = sum(counts[s] for s in FINISHED) + purged
        n = len(self.group)
        self.title.value = (f"<b>{html.escape(', '.join(sorted(names)) or 'empty group')}</b> "
                            f"<span style='color:#888'>{n} tasks</span>")
        self.bar.value = float(finished)
        failures = counts[FAILED] + counts[CANCELLED]
        self.bar.bar_style = "danger" if counts[FAILED] else (
            "success" if finished == n else "info")
        parts = [f"{finished} of {n} done"]
        parts += [f"{counts[s]} {s}" for s in (RUNNING, FAILED, CANCELLED, RETRYING) if counts[s]]
        state = SUCCEEDED if finished == n and not failures else (FAILED if counts[FAILED] else RUNNING)
        self.counts.value = f'<span class="nbqueue-counts">{" · ".join(parts)}</span> ' + (
            _badge(state) if finished == n else "")
        self.final = finished == n
        return not self.final


class JobView:
    """A periodic job: schedule, next run, counters, last run's state, pause/resume."""

    def __init__(self, job):
        import ipywidgets as w
        self.job = job
        self.final = False
        self.summary = w.HTML()
        self.toggle = w.Button(description="Pause", icon="pause", layout=w.Layout(width="auto"))
        self.toggle.on_click(self._on_toggle)
        self.box = w.HBox([self.summary, self.toggle],
                          layout=w.Layout(border="1px solid #ddd", padding="4px 8px"))
        self.box.add_class("nbqueue-job")
        self.refresh()

    def _on_toggle(self, _button):
        if self.job.paused:
            self.job.resume()
        else:
            self.job.pause()
        updater().poke()

    def refresh(self, force=False):
        store = self.job.queue.store
        rec = store.get_job(self.job.name)
        if rec is None:
            self.summary.value = f"<b>{html.escape(self.job.name)}</b> (removed)"
            self.toggle.disabled = True
            return False
        last = store.status(rec.last_run_id) if rec.last_run_id else None
        nxt = _next_run_text(rec)
        counters = f"runs {rec.runs}" + (f" · skipped {rec.skipped}" if rec.skipped else "") + (
            f" · missed {rec.missed}" if rec.missed else "") + (
            f" · errors {rec.errors}" if rec.errors else "")
        error = (f'<br><span class="nbqueue-job-error" style="color:#dc3545">last error: '
                 f'{html.escape(rec.last_error)}</span>') if rec.errors and rec.last_error else ""
        self.summary.value = (
            f'<b class="nbqueue-name">{html.escape(rec.name)}</b> '
            f'<code>{html.escape(rec.schedule)}</code> · {nxt} · <span class="nbqueue-counts">'
            f'{counters}</span>' + (f" · last {_badge(last)}" if last else "") + error)
        self.toggle.description, self.toggle.icon = ("Resume", "play") if rec.paused else ("Pause", "pause")
        return True


class DashboardView:
    """A live table of the queue: counts by state (kept by the store), one page of
    the newest tasks (filter by state, page back with Older/Newer, cancel per row)
    and its periodic jobs. A refresh reads the counters and one page, never the
    history, so it costs the same with 20 records or 20,000."""

    rows = 25
    interval = 1.0

    def __init__(self, queue):
        import ipywidgets as w
        self.w = w
        self.queue = queue
        self.final = False
        self.offset = 0
        self._next = 0.0
        self._ids = None
        self.heading = w.HTML()
        self.filter = w.Dropdown(options=["all"] + list(STATES), value="all", description="state",
                                 layout=w.Layout(width="220px"))
        self.filter.observe(lambda change: self._go(0), names="value")
        self.newer = w.Button(description="Newer", icon="chevron-left", layout=w.Layout(width="auto"))
        self.older = w.Button(description="Older", icon="chevron-right", layout=w.Layout(width="auto"))
        self.newer.on_click(lambda _b: self._go(self.offset - self.rows))
        self.older.on_click(lambda _b: self._go(self.offset + self.rows))
        self.where = w.HTML()
        self.table = w.GridBox(layout=w.Layout(grid_template_columns="2fr 1fr 1fr 2fr 1fr auto",
                                               grid_gap="2px 12px"))
        self.jobs = w.HTML()
        self.box = w.VBox([w.HBox([self.heading, self.filter]), self.table,
                           w.HBox([self.newer, self.where, self.older]), self.jobs],
                          layout=w.Layout(border="1px solid #ddd", padding="4px 8px"))
        self.box.add_class("nbqueue-dashboard")
        self._cells = {}
        self.refresh(force=True)
        updater().add(self)

    def _go(self, offset):
        self.offset = max(0, offset)
        self._next = 0.0
        self.refresh(force=True)

    def refresh(self, force=False):
        now = time.monotonic()
        if not force and now < self._next:
            return True
        self._next = now + self.interval
        store = self.queue.store
        counts = store.counts()
        total = sum(counts.values())
        self.heading.value = (f"<b>queue {html.escape(self.queue.name)}</b> · {total} tasks: "
                              + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]))
        wanted = self.filter.value
        matching = total if wanted == "all" else counts[wanted]
        if self.offset >= matching and self.offset:
            self.offset = max(0, (matching - 1) // self.rows * self.rows)
        shown = store.page(None if wanted == "all" else wanted, None, self.rows, self.offset)
        self.where.value = (f"<span style='color:#888'>{self.offset + 1}–{self.offset + len(shown)}"
                            f" of {matching}</span>" if shown else "")
        self.newer.disabled = self.offset == 0
        self.older.disabled = self.offset + len(shown) >= matching
        ids = [r.id for r in shown]
        if ids != self._ids:
            self._ids = ids
            self._rebuild(shown)
        for rec in shown:
            self._fill(rec)
        jobs = store.jobs()
        self.jobs.value = "" if not jobs else "<b>periodic jobs</b><br>" + "<br>".join(
            f"{html.escape(j.name)} <code>{html.escape(j.schedule)}</code> · "
            + _next_run_text(j)
            + f" · runs {j.runs}" + (f" · errors {j.errors}" if j.errors else "")
            for j in jobs.values())
        return True

    def _rebuild(self, shown):
        w = self.w
        header = [w.HTML(f"<b>{h}</b>") for h in ("task", "id", "state", "progress", "attempts", "")]
        children = list(header)
        self._cells = {}
        for rec in shown:
            cells = [w.HTML(), w.HTML(), w.HTML(), w.HTML(), w.HTML(),
                     w.Button(description="Cancel", layout=w.Layout(width="auto"))]
            cells[5].on_click(lambda _b, task_id=rec.id: self._cancel(task_id))
            self._cells[rec.id] = cells
            children += cells
        old = self.table.children
        self.table.children = children
        for widget in old:
            widget.close()

    def _cancel(self, task_id):
        self.queue.cancel(task_id)
        self._go(self.offset)

    def _fill(self, rec):
        name, short, state, prog, attempts, button = self._cells[rec.id]
        name.value = html.escape(rec.name)
        short.value = f"<code>{rec.id[:8]}</code>"
        state.value = _badge(rec.status)
        prog.value = _progress_text(rec)
        attempts.value = str(rec.attempts)
        button.disabled = rec.status in FINISHED


def _progress_text(rec):
    """'3/10', '3' or '' for a record's progress; never raises on odd stored values."""
    try:
        if rec.progress_total:
            return f"{rec.progress_done:g}/{rec.progress_total:g}"
        return f"{rec.progress_done:g}" if rec.progress_done else ""
    except (TypeError, ValueError):
        return "?"


class Dashboard:
    """What ``q.dashboard()`` returns: the live table in a kernel, a text table elsewhere."""

    def __init__(self, queue):
        self.queue = queue

    def text(self, limit=25, offset=0):
        store = self.queue.store
        counts = store.counts()
        lines = [f"queue {self.queue.name!r}: {sum(counts.values())} tasks"
                 + "".join(f", {counts[s]} {s}" for s in STATES if counts[s])]
        for rec in store.page(None, None, limit, offset):
            lines.append(f"  {rec.id[:8]}  {rec.status:<10} {_progress_text(rec):>9}  "
                         f"attempts={rec.attempts}  {rec.name}")
        for job in store.jobs().values():
            lines.append(f"  job {job.name} {job.schedule!r} {_next_run_text(job)} runs={job.runs}"
                         + (f" errors={job.errors}" if job.errors else ""))
        return "\n".join(lines)

    def __repr__(self):
        return self.text()

    def _repr_pretty_(self, p, cycle):
        p.text(self.text())

    def _repr_mimebundle_(self, include=None, exclude=None):
        return mimebundle(self, self.text())

"""The queue dashboard's live table (``q.dashboard()``, ``%nbqueue``)."""

import html
import time

from ..runtime.liveness import describe_worker, live_workers
from ..states import FINISHED, STATES
from .look import View, badge, next_run_text, progress_text, shown_status
from .updater import updater

# the dashboard's columns, one CSS grid per row (each row is one HTML model)
_COLUMNS = "display:grid;grid-template-columns:minmax(8em,16em) 7.5em 7.5em 7em 5em;gap:0 12px"


def _row(*cells):
    return f'<div class="nbqueue-row" style="{_COLUMNS}">' + "".join(
        f"<span>{c}</span>" for c in cells) + "</div>"


class DashboardView(View):
    """A live table of the queue: counts by state (kept by the store), one page of
    the newest tasks (filter by state, page back with Older/Newer, cancel per row)
    and its periodic jobs. A refresh reads the counters and one page, never the
    history, so it costs the same with 20 records or 20,000.

    The rows are a fixed set of models (``rows`` of them, made with the view, in
    the main thread), then only given new values: a task that appears, or a page
    turned, sends changed strings and layouts, never new models. Rows a page
    does not fill are hidden."""

    rows = 25
    interval = 1.0

    def __init__(self, queue):
        w = self._start()
        self.queue = queue
        self.offset = 0
        self._next = 0.0
        self._slot_ids = [None] * self.rows  # the task id each row shows now
        self.heading = self._make(w.HTML)
        self.filter = self._make(w.Dropdown, options=["all"] + list(STATES), value="all",
                                 description="state", layout=w.Layout(width="220px"))
        self._widgets.append(self.filter.layout)
        self.filter.observe(lambda change: self._go(0), names="value")
        self.newer = self._make(w.Button, "button", description="Newer", icon="chevron-left")
        self.older = self._make(w.Button, "button", description="Older", icon="chevron-right")
        self.newer.on_click(lambda _b: self._go(self.offset - self.rows))
        self.older.on_click(lambda _b: self._go(self.offset + self.rows))
        self.where = self._make(w.HTML)
        self.header = self._make(w.HTML, value=_row(*(f"<b>{h}</b>" for h in (
            "task", "id", "state", "progress", "attempts"))))
        self._grid = w.Layout(grid_template_columns="auto auto", justify_content="flex-start",
                              grid_gap="2px 12px", align_items="center")
        self._widgets.append(self._grid)
        self._slots = [self._slot(w, n) for n in range(self.rows)]  # (row HTML, Cancel)
        self.table = self._make(w.GridBox, layout=self._grid,
                                children=[x for slot in self._slots for x in slot])
        self.jobs = self._make(w.HTML)
        self.workers = self._make(w.HTML)
        self.top = self._make(w.HBox, children=[self.heading, self.filter])
        self.nav = self._make(w.HBox, children=[self.newer, self.where, self.older])
        self.box = self._make(w.VBox, "card", children=[self.top, self.workers, self.header,
                                                        self.table, self.nav, self.jobs])
        self.box.add_class("nbqueue-dashboard")
        self.refresh(force=True)
        updater().add(self)

    def _go(self, offset):
        """Show the page at ``offset`` (a click, in the main thread): the updater
        shows it at its next pass."""
        self.offset = max(0, offset)
        self._next = 0.0
        updater().poke()

    def _slot(self, w, n):
        """Row ``n``: its HTML and its Cancel, which acts on the task the row shows."""
        row = self._make(w.HTML, "hidden")
        button = self._make(w.Button, "hidden", description="Cancel", disabled=True)
        button.on_click(lambda _b: self._cancel(n))
        return row, button

    def refresh(self, force=False):
        if self.closed:
            return False
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
        for i, rec in enumerate(shown):
            self._fill(i, rec)
        for i in range(len(shown), self.rows):
            self._slot_ids[i] = None
            row, button = self._slots[i]
            button.disabled = True
            button.layout = row.layout = self._shared["hidden"]
        self.workers.value = "<br>".join(
            f"<span style='color:#555'>{html.escape(describe_worker(info))}</span>"
            for info in live_workers(store, forget_dead=False).values())
        jobs = store.jobs()
        self.jobs.value = "" if not jobs else "<b>periodic jobs</b><br>" + "<br>".join(
            f"{html.escape(j.name)} <code>{html.escape(j.schedule)}</code> · "
            + next_run_text(j)
            + f" · runs {j.runs}" + (f" · errors {j.errors}" if j.errors else "")
            for j in jobs.values())
        return True

    def _cancel(self, i):
        task_id = self._slot_ids[i] if i < len(self._slot_ids) else None
        if task_id is not None:
            self.queue.cancel(task_id)
        self._next = 0.0
        updater().poke()

    def _fill(self, i, rec):
        row, button = self._slots[i]
        self._slot_ids[i] = rec.id
        row.value = _row(html.escape(rec.name), f"<code>{rec.id[:8]}</code>",
                         badge(shown_status(rec)), progress_text(rec), str(rec.attempts))
        row.layout = self._shared["plain"]
        finished = rec.status in FINISHED
        button.disabled = finished or bool(rec.cancel_requested)
        # a finished task's Cancel is invisible but keeps its grid cell (rows stay aligned)
        button.layout = self._shared["invisible" if finished else "button"]

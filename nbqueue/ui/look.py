"""What the views look like: HTML pieces (state badge, progress bar, times) and the
few layout and style models every view shares.

The progress bar is HTML and CSS, not an ipywidgets ``FloatProgress``: a task with
no total shows a full bar with moving stripes (ipywidgets has no striped style),
and one HTML model costs a saved notebook less than a progress model with its
layout and style. Everything is inline styles, plus a short ``<style>`` (the
stripes' keyframes) inside the bar itself, so it looks the same in JupyterLab and
in an HTML export, with no stylesheet to install.

Widgets get their layout and style from ``shared()``: one model of each kind per
kernel instead of one per widget (a default ``Layout`` alone saves ~1.2 KB of
state in the notebook); ``View``, the base of every view, builds on them and
closes what it made. Nothing here imports ipywidgets until a view is built.
"""

import html
import time

from ..states import CANCELLED, FAILED, PENDING, RETRYING, RUNNING, SCHEDULED, SUCCEEDED

CANCELLING = "cancelling"  # shown, not a state: running, with a cancel asked

COLOURS = {
    PENDING: "#6c757d", SCHEDULED: "#6f42c1", RUNNING: "#0d6efd", RETRYING: "#fd7e14",
    SUCCEEDED: "#198754", FAILED: "#dc3545", CANCELLED: "#adb5bd", CANCELLING: "#fd7e14",
}
# bar kinds (also class names: nbqueue-fill-<kind>) and their colours
FILLS = {"success": "#198754", "danger": "#dc3545", "warning": "#fd7e14", "info": "#0d6efd",
         "muted": "#adb5bd"}
BAR_KINDS = {SUCCEEDED: "success", FAILED: "danger", CANCELLED: "muted", RETRYING: "warning",
             CANCELLING: "warning"}

STRIPES = ("linear-gradient(45deg,rgba(255,255,255,.35) 25%,transparent 25%,transparent 50%,"
           "rgba(255,255,255,.35) 50%,rgba(255,255,255,.35) 75%,transparent 75%,transparent)")
STRIPES_CSS = ("<style>@keyframes nbqueue-stripes{from{background-position:16px 0}"
               "to{background-position:0 0}}@media (prefers-reduced-motion:reduce)"
               "{.nbqueue-striped{animation:none!important}}</style>")
TRACK = ("display:block;height:14px;margin:7px 0;min-width:8em;background:#e9ecef;"
         "border-radius:4px;overflow:hidden")


def shown_status(rec):
    """The word the badge shows: the state, or "cancelling" for a running task whose
    cancel was asked (its worker stops it after a short grace)."""
    if rec.status == RUNNING and rec.cancel_requested:
        return CANCELLING
    return rec.status


def badge(status):
    colour = COLOURS.get(status, "#6c757d")
    return (f'<span class="nbqueue-state nbqueue-{status}" style="background:{colour};color:white;'
            f'border-radius:4px;padding:1px 8px;font-size:90%">{status}</span>')


def bar(fraction, kind="info", striped=False):
    """A progress bar: ``fraction`` (0..1) filled in ``kind``'s colour; ``striped``:
    indeterminate, a full bar with moving stripes and no fraction (no
    ``aria-valuenow``, as ARIA asks of an indeterminate progressbar)."""
    colour = FILLS.get(kind, FILLS["info"])
    if striped:
        return (STRIPES_CSS + '<div class="nbqueue-bar nbqueue-indeterminate" role="progressbar" '
                f'aria-label="working, no total" style="{TRACK}"><div class="nbqueue-fill '
                f'nbqueue-fill-{kind} nbqueue-striped" style="width:100%;height:100%;'
                f"background-color:{colour};background-image:{STRIPES};background-size:16px 16px;"
                'animation:nbqueue-stripes 1s linear infinite"></div></div>')
    pct = round(100.0 * max(0.0, min(1.0, fraction)), 1)
    return (f'<div class="nbqueue-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{pct:g}" style="{TRACK}"><div class="nbqueue-fill nbqueue-fill-{kind}" '
            f'style="width:{pct:g}%;height:100%;background-color:{colour}"></div></div>')


def duration(seconds):
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def log_title(text, displays=0):
    """"Log", "Log (1 line)", "Log (12 lines, 2 displays)": a last line without a
    newline counts as a line."""
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    parts = ([plural(lines, "line")] if lines else []) + ([plural(displays, "display")] if displays else [])
    return f"Log ({', '.join(parts)})" if parts else "Log"


def next_run_text(job):
    """'paused', 'next 14:05:00' or 'not scheduled' for a JobRecord."""
    if job.paused:
        return "paused"
    if not job.next_run:
        return "not scheduled"
    return "next " + time.strftime("%H:%M:%S", time.localtime(job.next_run))


def error_html(rec):
    err = rec.error or {}
    head = html.escape(f"{err.get('type', 'error')}: {err.get('message', '')}")
    return (f'<div class="nbqueue-error" style="color:#dc3545"><b>{head}</b>'
            f'<pre style="font-size:85%;white-space:pre-wrap;max-height:20em;overflow:auto">'
            f"{html.escape(err.get('traceback') or '')}</pre></div>")


def progress_text(rec):
    """'3/10', '3' or '' for a record's progress; never raises on odd stored values."""
    try:
        if rec.progress_total:
            return f"{rec.progress_done:g}/{rec.progress_total:g}"
        return f"{rec.progress_done:g}" if rec.progress_done else ""
    except (TypeError, ValueError):
        return "?"


# ---- shared models and the views' base ----------------------------------------------------------------
_shared = {}

LAYOUTS = {
    "plain": {},
    "grow": {"flex": "1 1 auto"},
    "button": {"width": "auto"},
    "hidden": {"display": "none"},                          # out of the flow
    "invisible": {"width": "auto", "visibility": "hidden"},  # keeps its grid cell
    "card": {"border": "1px solid #ddd", "padding": "4px 8px", "margin": "2px 0"},
}


def shared():
    """``{name: model}``: the layouts of ``LAYOUTS`` and one HTML and one Button
    style, made once per kernel (in the main thread, by the first view built) and
    never closed; made again if something closed one (``Widget.close_all``)."""
    import ipywidgets as w
    if not _shared or any(m.comm is None for m in _shared.values()):
        _shared.clear()
        _shared.update({name: w.Layout(**kw) for name, kw in LAYOUTS.items()})
        _shared["html"] = w.HTML.style.klass()  # HTMLStyle: not exported by name
        _shared["button_style"] = w.ButtonStyle()
    return dict(_shared)


class View:
    """What every view shares: the widgets it made (closed by ``close``), built
    on the shared layouts and styles."""

    final = False
    closed = False

    def _make(self, cls, layout="plain", **kw):
        kw["layout"] = self._shared[layout] if isinstance(layout, str) else layout
        if cls.__name__ in ("HTML", "Label"):
            kw.setdefault("style", self._shared["html"])
        elif cls.__name__ == "Button":
            kw.setdefault("style", self._shared["button_style"])
        widget = cls(**kw)
        self._widgets.append(widget)
        return widget

    def _start(self):
        import ipywidgets as w
        self._shared = shared()
        self._widgets = []
        return w

    def close(self):
        """Close every model this view made (the shared ones stay). Main thread."""
        self.closed = True
        self.final = True
        for widget in self._widgets:
            widget.close()

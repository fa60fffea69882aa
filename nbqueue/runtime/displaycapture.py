"""``display()`` inside a task, in a kernel: kept for the task's widget, not sent to a cell.

ipykernel's display publisher (``ZMQDisplayPublisher``) passes every message
it is about to send through the *calling thread's* hooks (``register_hook``,
public); a hook that returns None swallows the message. A worker thread
registers one at its first task; while a task runs in it, ``display_data`` becomes an nbformat output
dict appended to ``displays[task_id]`` (``QueueState.displays``, which the task
widget shows in its log area, live and in the saved notebook);
``update_display_data`` replaces the outputs this task showed under that
display id (an id a cell showed is updated there, as asked); ``clear_output``
empties the task's list (``wait=True``: at its next display); the last
``MAX_DISPLAYS`` outputs are kept. Outside a kernel
(plain Python, terminal IPython) nothing is registered: ``display()`` prints
its text, which the stream proxy puts in ``r.output``, as before.

tqdm.notebook and tqdm.auto bars: a task's loop ``for x in tqdm(...)`` makes an
ipywidgets bar and calls ``display()`` on its container from the task's
thread. A second bar inside the task widget would repeat the widget's own, so
instead the bar drives the task's progress and is not shown. The container is
found where it is displayed, through IPython's public formatter registry (a
mime-bundle formatter for ``tqdm.notebook.TqdmHBox``, registered by name so
tqdm is not imported): inside a task it observes the container's child
widgets' ``value`` (traitlets' public ``observe``; tqdm sets them on each
refresh) and reports the bar's ``n``/``total``/``desc`` (public tqdm
attributes, through the ``pbar`` tqdm puts on its container) with
``ctx.progress``. The outermost open bar of a task drives it (``bars``). A
cancel cannot be raised from there (tqdm holds its process-wide lock while it
refreshes, and a raise would leave it held): the task stops at its next
``nbqueue.progress()`` / ``check_cancelled()``, or when the worker stops it.
"""

import math
import numbers
import sys
import threading

from . import bars
from .context import current_task

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_DISPLAYS = 200            # a task's last outputs kept (a loop displaying a plot each turn)

_local = threading.local()    # .kept: the TaskDisplays of the task this thread runs
_lock = threading.Lock()
_formatter_for = None         # the shell whose formatter knows tqdm's container
_previous_printer = None      # what that formatter did for it before us
_found = None                 # (shell, display publisher) of this kernel


class TaskDisplays:
    """One task run's display hook, in one thread."""

    def __init__(self, displays, task_id):
        self.displays = displays          # None: only bars are kept back
        self.task_id = task_id
        self.bar_ids = set()              # model ids of tqdm containers: not shown
        self.observers = []               # (widget, handler): unobserved at the end
        self.shown = {}                   # display id -> outputs shown under it
        self.clear_pending = False

    # ---- the hook ---------------------------------------------------------
    def __call__(self, msg):
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content") or {}
        data = content.get("data") or {}
        view = data.get(WIDGET_VIEW)
        if isinstance(view, dict) and view.get("model_id") in self.bar_ids:
            return None  # a tqdm bar: it drives the task's progress instead
        if self.displays is None:
            return msg   # no place to keep it: the submitting cell, as routed
        display_id = (content.get("transient") or {}).get("display_id")
        if kind == "display_data":
            sink = self._sink()
            if self.clear_pending:
                self._clear(sink)
            out = _output(content)
            sink.append(out)
            if len(sink) > MAX_DISPLAYS:
                del sink[:-MAX_DISPLAYS]
            if display_id is not None:
                self.shown.setdefault(display_id, []).append(out)
            return None
        if kind == "update_display_data":
            olds = self.shown.get(display_id) if display_id is not None else None
            if not olds:
                return msg  # not one of this task's outputs: update it where it is
            sink = self._sink()
            news = []
            for i, old in enumerate(list(sink)):
                if any(old is o for o in olds):
                    new = _output(content)
                    sink[i] = new   # a new dict: a renderer holding the old one sees a change
                    news.append(new)
            self.shown[display_id] = news
            return None
        if kind == "clear_output":
            if content.get("wait"):
                self.clear_pending = True
            else:
                self._clear(self._sink())
            return None
        return msg

    def _sink(self):
        return self.displays.setdefault(self.task_id, [])

    def _clear(self, sink):
        del sink[:]
        self.shown.clear()
        self.clear_pending = False

    # ---- tqdm bars --------------------------------------------------------
    def attach_bar(self, container, ctx):
        """Let the tqdm bar behind ``container`` drive ``ctx``'s progress."""
        bar = getattr(container, "pbar", None)  # tqdm.notebook: a weak proxy to the tqdm
        if bar is None or container.model_id in self.bar_ids:
            return
        self.bar_ids.add(container.model_id)
        bars.add(ctx, container, _container_open)

        def changed(_change=None):
            if bars.drives(ctx, container):
                try:
                    n, total, desc = bar.n, bar.total, bar.desc
                except ReferenceError:  # the tqdm is gone
                    return
                report(ctx, n, total, desc)

        for child in container.children:
            if child.has_trait("value"):
                child.observe(changed, names="value")
                self.observers.append((child, changed))
        changed()

    def close(self):
        """The task ended: its bars stop driving it."""
        for widget, handler in self.observers:
            try:
                widget.unobserve(handler, names="value")
            except Exception:
                pass
        self.observers = []


def report(ctx, n, total, desc):
    """Report a bar's state as ``ctx``'s progress; never raises (tqdm holds its
    lock while it refreshes). A total tqdm does not know (None, 0, inf) is
    left as it was."""
    if isinstance(total, bool) or not isinstance(total, numbers.Real) or \
            not math.isfinite(total) or total <= 0:
        total = None
    try:
        ctx.progress(n, total, desc or None)
    except Exception:  # a cancel or timeout: the task sees it at its next check
        pass


def _container_open(container):
    return not container.pbar.disable   # tqdm sets disable when the bar closes


def _output(content):
    return {"output_type": "display_data", "data": dict(content.get("data") or {}),
            "metadata": dict(content.get("metadata") or {})}


# ---- task start and end -------------------------------------------------------
def _publisher():
    """The kernel shell and its display publisher when it takes per-thread hooks
    (ipykernel's ZMQDisplayPublisher), else None. Cheap outside a kernel; found
    once in a kernel (its shell and publisher live as long as the process)."""
    global _found
    if _found is not None:
        return _found
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython
    shell = get_ipython()
    pub = getattr(shell, "display_pub", None)
    if pub is None or not hasattr(pub, "register_hook"):
        return None
    _found = shell, pub
    return _found


def _thread_hook(msg):
    """The hook of a worker thread (registered once: its hooks are per thread):
    the running task's TaskDisplays decides, between tasks the message passes."""
    kept = getattr(_local, "kept", None)
    return msg if kept is None else kept(msg)


def start(displays, task_id):
    """In a kernel, keep this thread's display() calls (see the module docstring)
    until ``stop``; returns the TaskDisplays, or None outside a kernel."""
    found = _publisher()
    if found is None:
        return None
    shell, pub = found
    if getattr(_local, "hooked", None) is not pub:
        _know_tqdm_containers(shell)
        pub.register_hook(_thread_hook)
        _local.hooked = pub
    kept = TaskDisplays(displays if task_id is not None else None, task_id)
    _local.kept = kept
    return kept


def stop(kept):
    if getattr(_local, "kept", None) is kept:
        _local.kept = None
    kept.close()


def _know_tqdm_containers(shell):
    """Register, once per shell, the formatter that finds a task's tqdm container."""
    global _formatter_for, _previous_printer
    if _formatter_for is shell:
        return
    with _lock:
        if _formatter_for is shell:
            return
        formatter = shell.display_formatter.mimebundle_formatter
        module = sys.modules.get("tqdm.notebook")
        cls = getattr(module, "TqdmHBox", None)
        if cls is not None:
            try:
                previous = formatter.lookup_by_type(cls)
            except KeyError:
                previous = None
            formatter.for_type(cls, _container_bundle)
        else:
            previous = formatter.for_type_by_name("tqdm.notebook", "TqdmHBox", _container_bundle)
        _previous_printer = previous if previous is not _container_bundle else None
        _formatter_for = shell


def _container_bundle(container):
    """The mime bundle of a tqdm.notebook container; in a task, first let its bar
    drive the task's progress (and keep the container from being shown)."""
    kept = getattr(_local, "kept", None)
    ctx = current_task()
    if kept is not None and ctx is not None:
        try:
            kept.attach_bar(container, ctx)
        except Exception:
            pass
    if _previous_printer is not None:
        return _previous_printer(container)
    method = getattr(container, "_repr_mimebundle_", None)
    return method() if method is not None else None

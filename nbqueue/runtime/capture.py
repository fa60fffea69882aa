"""Where a task's output goes: its own record and widget, never another cell.

Output from a thread goes to whichever cell ran last, unless routed. The worker
calls, in the task's thread, ``route_to`` then ``install_capture`` at each task
start and ``unroute`` at its end:

- stdout/stderr: a thread-aware stream proxy on ``sys.stdout``/``sys.stderr``
  writes a task's text to its record (``r.output``);
- ``logging``: handlers made before the queue hold the notebook's stream object
  itself, not ``sys.stderr``; ``install_capture`` points every ``StreamHandler``
  on a notebook stream at the same proxy (``logcapture``), so a task's records
  land in its record and other threads' records go where they went;
- ``display()``: in a kernel, a task's rich outputs are kept for its widget
  (``displaycapture``); a tqdm.notebook / tqdm.auto bar it shows drives its
  progress instead. Without a place to keep them (``displays=None``) they go to
  the submitting cell through ipykernel's ``set_thread_parent`` (>= 7.4; older
  kernels fall back to the running cell).
"""

import sys
import threading

from . import displaycapture, logcapture
from .context import current_task

_lock = threading.Lock()
_wrapped = []        # (stream, its proxy on sys.stdout/sys.stderr): the notebook's streams
_for_handlers = []   # (stream, the proxy logging handlers write to instead)
MAX_WRAPPED = 16


class _StreamProxy:
    """Stands in for sys.stdout/sys.stderr: text written by a task's thread goes to
    that task's record; text from any other thread goes to the stream it wraps.

    Only attribute reads are forwarded. Writes to the attribute (IPython 9 sets
    ``sys.stdout.write`` per cell) land on the proxy itself; forwarding them to
    the wrapped stream would make its write call itself.
    """

    def __init__(self, target):
        self._target = target

    def write(self, text):
        ctx = current_task()
        if ctx is None:
            return self._target.write(text)
        ctx.write(text)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if current_task() is None:
            self._target.flush()

    def __getattr__(self, name):
        return getattr(self._target, name)


def install_capture():
    """Put the proxy on sys.stdout/sys.stderr again if someone swapped them, and
    on logging handlers that write to a notebook stream. Never raises.

    Called at each task start: ipykernel, pytest and ``redirect_stdout`` all
    replace the streams, and a ``logging.basicConfig()`` may run at any time.
    Cheap when nothing changed (two type checks and a small logging check).
    """
    swapped = type(sys.stdout) is not _StreamProxy or type(sys.stderr) is not _StreamProxy
    if swapped:
        with _lock:
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if type(stream) is not _StreamProxy and stream is not None:
                    setattr(sys, name, _proxy_for(stream, make=True))
    try:
        logcapture.reroute_handlers(notebook_stream_proxy, force=swapped)
    except Exception:  # a broken handler must not stop the task from running
        pass


def _proxy_for(stream, make):
    """The proxy standing in for ``stream`` (made if ``make``); call with _lock held."""
    for target, proxy in _wrapped:
        if target is stream:
            return proxy
    if not make:
        return None
    proxy = _StreamProxy(stream)
    _wrapped.append((stream, proxy))
    del _wrapped[:-MAX_WRAPPED]
    return proxy


def notebook_stream_proxy(stream):
    """A proxy for a logging handler to use in place of ``stream`` if that is one
    of the notebook's streams (one that sys.stdout/sys.stderr wrap or wrapped, or
    the process's own ``sys.__stdout__``/``sys.__stderr__``, which ipykernel
    forwards to the notebook), else None. A proxy already is left alone.

    Not the proxy on sys.stderr itself: IPython patches that one's ``write``
    while a cell runs, and a handler's records from other threads should go
    exactly where they went before."""
    if stream is None or type(stream) is _StreamProxy:
        return None
    with _lock:
        for target, proxy in _for_handlers:
            if target is stream:
                return proxy
        known = stream is sys.__stdout__ or stream is sys.__stderr__ or any(
            target is stream for target, _ in _wrapped)
        if not known:
            return None
        proxy = _StreamProxy(stream)
        _for_handlers.append((stream, proxy))
        del _for_handlers[:-MAX_WRAPPED]
        return proxy


# ---- rich output ------------------------------------------------------------
def submit_parent():
    """The submitting cell's parent message, when ipykernel (>= 7.4) can route a
    thread's output to it (``set_thread_parent``); else None. Cheap outside a kernel."""
    if "ipykernel" not in sys.modules:
        return None
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "set_thread_parent") or not hasattr(shell, "get_parent"):
        return None  # older ipykernel: display() from a task lands in the running cell
    try:
        return shell, shell.get_parent()
    except Exception:
        return None


def route_to(parent, displays=None, task_id=None):
    """Route this thread's rich output for one task run; returns what ``unroute``
    needs. Pool threads are reused: always ``unroute`` after the task.

    ``parent`` (from ``submit_parent``, or None): the cell that display() calls
    go to when they are not kept. ``displays`` (a dict, ``QueueState.displays``)
    and ``task_id``: in a kernel, every display(), update_display() and
    clear_output() of this thread goes to ``displays[task_id]`` (a list of
    nbformat output dicts, created at the first one) instead of a cell. A
    tqdm.notebook or tqdm.auto bar shown by the task drives its progress and is
    not shown at all. Never raises.
    """
    tokens = None
    if parent is not None:
        shell, header = parent
        try:
            tokens = shell, shell.set_thread_parent(header)
        except Exception:
            tokens = None
    try:
        kept = displaycapture.start(displays, task_id)
    except Exception:
        kept = None
    if tokens is None and kept is None:
        return None
    return tokens, kept


def unroute(routed):
    """Undo ``route_to`` (its return value). Never raises."""
    if routed is None:
        return
    tokens, kept = routed
    if kept is not None:
        try:
            displaycapture.stop(kept)
        except Exception:
            pass
    if tokens is not None:
        shell, tok = tokens
        try:
            shell.reset_thread_parent(tok)
        except Exception:
            pass

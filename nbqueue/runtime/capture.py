"""Where a task's output goes: its own record, or the cell that submitted it.

Output from a thread goes to whichever cell ran last, unless routed. Each task's
stdout/stderr is caught by a thread-aware stream proxy into its record;
``display()`` from a task goes to the submitting cell through ipykernel's
``set_thread_parent`` (>= 7.4; older kernels fall back to the running cell).
"""

import sys

from .context import current_task


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
    """Put the proxy on sys.stdout/sys.stderr again if someone swapped them.

    Called at each task start: ipykernel, pytest and ``redirect_stdout`` all
    replace the streams.
    """
    if type(sys.stdout) is not _StreamProxy:
        sys.stdout = _StreamProxy(sys.stdout)
    if type(sys.stderr) is not _StreamProxy:
        sys.stderr = _StreamProxy(sys.stderr)


# ---- routing rich output to the submitting cell -------------------------------
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


def route_to(parent):
    """Make this thread's display() calls go to ``parent``'s cell; returns what
    ``unroute`` needs. Pool threads are reused: always ``unroute`` after the task."""
    if parent is None:
        return None
    shell, header = parent
    try:
        return shell, shell.set_thread_parent(header)
    except Exception:
        return None


def unroute(tokens):
    if tokens is not None:
        shell, tok = tokens
        try:
            shell.reset_thread_parent(tok)
        except Exception:
            pass

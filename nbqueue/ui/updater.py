"""The one thread that writes to widgets, at most every ``Updater.interval`` seconds.

A plain thread, not an asyncio task: a copied context would stamp updates with
an old cell's parent and nbclient would drop them. It sleeps (no CPU) while no
displayed view is live, and drops a view after its final refresh.

It also knows where each view is shown: the cell a view was displayed in (the
``cellId`` JupyterLab puts in every execute request), or the view it sits in (a
retry's view inside the failed task's). When every cell showing a view runs
again or is deleted, its output is gone, so the view's models are closed (the
frontend drops them, a notebook saved by JupyterLab no longer carries them) and
it is refreshed no more. A view displayed where no cell id is known (a plain
client, nbclient) is never closed: nothing says it stopped being shown.
"""

import sys
import threading
import time
import weakref


class Updater:
    """The one thread that writes to widgets, at most every ``interval`` seconds.

    It sleeps (no CPU) while no displayed view is live, and drops a view after
    its final refresh. A view is an object with ``box`` (its outer widget),
    ``final``, ``refresh(force)`` (returns False once nothing more will change)
    and ``close()`` (closes the models it made, not the shared ones).
    """

    interval = 0.25

    def __init__(self):
        self._views = []
        self._cache = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._passes = 0
        self._passed = threading.Condition(self._lock)
        self._force_until = 0  # passes numbered below this also refresh throttled views
        self._keys = {}          # view -> its key in _cache
        self._places = {}        # view -> cell ids and views it is shown in (None: unknown)
        self._in_cell = {}       # cell id -> views displayed there
        self._hooked = None      # the shell whose pre_run_cell we watch

    def view(self, key, build):
        with self._lock:
            view = self._cache.get(key)
        if view is None:
            view = build()
            with self._lock:
                self._cache[key] = view
                self._keys[view] = key
            if not view.final:
                self.add(view)
        return view

    def add(self, view):
        with self._lock:
            if view not in self._views:
                self._views.append(view)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="nbqueue-widgets")
                self._thread.start()
        self._wake.set()

    def cached(self, key):
        """The live view under ``key``, or None."""
        with self._lock:
            return self._cache.get(key)

    # ---- where views are shown ---------------------------------------------
    def shown(self, view, cell_id):
        """``view`` was displayed in the cell ``cell_id`` (None: not known)."""
        with self._lock:
            self._places.setdefault(view, set()).add(cell_id)
            if cell_id is not None:
                views = self._in_cell.setdefault(cell_id, [])
                if view not in views:
                    views.append(view)
        if cell_id is not None:
            self._watch_cells()

    def embedded(self, view, holder):
        """``view`` is shown inside ``holder``'s box: it is shown where that is."""
        with self._lock:
            self._places.setdefault(view, set()).add(holder)

    def cell_cleared(self, cell_id):
        """The cell's outputs are gone (it runs again, or was deleted): close the
        views that were shown only there. Main thread."""
        with self._lock:
            views = self._in_cell.pop(cell_id, [])
            for view in views:
                self._places.get(view, set()).discard(cell_id)
        for view in views:
            self._close_unseen(view)

    def _close_unseen(self, view):
        with self._lock:
            places = self._places.get(view)
            if places is None or places:
                return  # never displayed by us, still shown, or closed already
            del self._places[view]
            if view in self._views:
                self._views.remove(view)
            key = self._keys.pop(view, None)
            if key is not None and self._cache.get(key) is view:
                del self._cache[key]
            inside = [v for v, p in self._places.items() if view in p]
            for v in inside:
                self._places[v].discard(view)
        try:
            view.close()
        except Exception as exc:  # like a refresh: never into the user's cell
            sys.__stderr__.write(f"nbqueue: closing a widget failed: {exc!r}\n")
        for v in inside:
            self._close_unseen(v)

    def _watch_cells(self):
        """Watch cells start (IPython's ``pre_run_cell``), once per shell."""
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        if shell is None or shell is self._hooked:
            return
        shell.events.register("pre_run_cell", self._pre_run_cell)
        self._hooked = shell

    def _pre_run_cell(self, info=None):
        # JupyterLab clears a cell's outputs when it runs it again, and lists the
        # cells deleted since the last request in ``deletedCells``
        meta = getattr(info, "cell_meta", None) or {}
        gone = [getattr(info, "cell_id", None), *(meta.get("deletedCells") or ())]
        for cell_id in gone:
            if cell_id and cell_id in self._in_cell:
                self.cell_cleared(cell_id)

    def poke(self):
        """Refresh soon (after a button click)."""
        self._wake.set()

    def settle(self, timeout=2.0):
        """Refresh every live view now and wait until that pass is done, so the displays
        show the current state when the calling cell ends. Returns False on timeout."""
        with self._lock:
            if not (self._views or len(self._cache)) or self._thread is None or not self._thread.is_alive():
                return True
            target = self._passes + 2  # the pass running now may have read old state
            # views that throttle themselves (the dashboard: once a second) refresh on
            # the passes settle() waits for, or they would keep the state of a second ago
            self._force_until = max(self._force_until, target)
        self._wake.set()
        with self._lock:
            return self._passed.wait_for(lambda: self._passes >= target, timeout)

    def _loop(self):
        while True:
            with self._lock:
                views = list(self._views)
                force = self._passes < self._force_until
                # settle()'s last pass also sends the state of the views that already
                # finished: their final update may have gone out while no cell ran, under
                # an ended cell's parent, which a recorder such as nbclient drops, and
                # nothing changes afterwards to send it again
                finished = [v for v in self._cache.values() if v not in views] \
                    if self._passes == self._force_until - 1 else []
            for view in finished:
                try:
                    _send_whole_state(view.box)
                except Exception as exc:  # as for refresh: never stop the updater
                    sys.__stderr__.write(f"nbqueue: widget resend failed: {exc!r}\n")
            if not views and not force:
                self._wake.wait()
                self._wake.clear()
                continue
            started = time.monotonic()
            for view in views:
                try:
                    live = view.refresh(force=force)
                except Exception as exc:  # a broken view must not stop the others
                    sys.__stderr__.write(f"nbqueue: widget refresh failed: {exc!r}\n")
                    live = False
                if not live:
                    with self._lock:
                        if view in self._views:
                            self._views.remove(view)
            with self._lock:
                self._passes += 1
                self._passed.notify_all()
            spent = time.monotonic() - started
            self._wake.wait(max(0.0, self.interval - spent))
            self._wake.clear()


def _send_whole_state(widget):
    """Send the full state of ``widget`` and of the widgets inside it. Not an Output's
    ``msg_id`` (nbqueue never captures into one): nbclient fails on an empty one it did not set."""
    widget.send_state(key=[k for k in widget.keys if k != "msg_id"])
    for child in getattr(widget, "children", ()):
        _send_whole_state(child)


_updater = None
_updater_lock = threading.Lock()


def settle(timeout=2.0):
    """Bring every live widget up to date before returning (see ``Updater.settle``)."""
    return _updater.settle(timeout) if _updater is not None else True


def updater():
    global _updater
    with _updater_lock:
        if _updater is None:
            _updater = Updater()
        return _updater

"""The one thread that writes to widgets, at most every ``Updater.interval`` seconds.

A plain thread, not an asyncio task: a copied context would stamp updates with
an old cell's parent and nbclient would drop them. It sleeps (no CPU) while no
displayed view is live, and drops a view after its final refresh.
"""

import sys
import threading
import time
import weakref


class Updater:
    """The one thread that writes to widgets, at most every ``interval`` seconds.

    It sleeps (no CPU) while no displayed view is live, and drops a view after
    its final refresh.
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

    def view(self, key, build):
        with self._lock:
            view = self._cache.get(key)
        if view is None:
            view = build()
            with self._lock:
                self._cache[key] = view
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

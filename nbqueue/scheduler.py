"""Delayed tasks: moves scheduled and retrying tasks to pending when their eta comes.

The thread sleeps until the next eta (an in-process submit with an eta wakes
it), so a delayed task is late by well under 10 ms and an idle queue costs no
CPU. On a store shared with other processes it also looks at least every
``SHARED_POLL`` seconds, for etas set elsewhere.
"""

import sys
import threading
import time

SHARED_POLL = 1.0


class Scheduler:
    def __init__(self, queue):
        self.queue = queue
        self.store = queue.store
        self._stopping = False
        self._thread = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"nbqueue-{self.queue.name}-scheduler")
            self._thread.start()

    def stop(self, wait=True):
        self._stopping = True
        self.store.notify_eta()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def tick(self, now=None):
        """Promote due tasks; returns seconds until the next eta (None: nothing waits)."""
        now = time.time() if now is None else now
        self.store.promote_due(now)
        nxt = self.store.next_eta()
        return None if nxt is None else max(0.0, nxt - time.time())

    def _loop(self):
        store = self.store
        while not self._stopping:
            seen = store._eta_seq
            try:
                wait = self.tick()
            except Exception:
                self.queue._log("scheduler error", sys.exc_info())
                wait = SHARED_POLL
            if store.shared:
                wait = SHARED_POLL if wait is None else min(wait, SHARED_POLL)
            store.wait_for_eta(seen, wait)

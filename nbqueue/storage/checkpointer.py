"""Copies the SQLite store's write-ahead log back into the database off the write path.

With SQLite's automatic checkpoint, one commit in a few hundred copies the whole
log into the database and syncs it (tens of ms) while this process's store lock
is held, so that commit and every thread queued behind it stall: measured, it
was 40% of the cost of a busy store's commits. Here the writing connection only
appends to the log, and a daemon thread with its own connection runs a PASSIVE
checkpoint (it never blocks writers or readers) a few times a second, only
after commits happened. SQLite's automatic checkpoint stays on, at a high mark,
for a process whose thread could not run.
"""

import os
import sqlite3
import threading

INTERVAL = 0.25      # seconds between looks
BACKSTOP_PAGES = 20000   # the writing connection's own automatic checkpoint (80 MB of log)


class Checkpointer:
    """One per store per process; ``committed()`` after each write transaction."""

    def __init__(self, path, timeout):
        self._path = path
        self._timeout = timeout
        self._commits = 0
        self._done = 0
        self._stop = threading.Event()
        self._thread = None
        self._pid = None

    def committed(self):
        self._commits += 1
        if self._pid != os.getpid():  # first commit here, or in a forked child
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="nbqueue-checkpoint", daemon=True)
            self._thread.start()

    def _run(self):
        stop = self._stop
        try:
            con = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error:
            return  # the writing connection's automatic checkpoint still runs
        try:
            while not stop.wait(INTERVAL):
                if self._commits != self._done:
                    self._done = self._commits
                    try:
                        con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # busy or closing: the next look tries again
        finally:
            con.close()

    def stop(self):
        """Stop the thread (it checkpoints no more); the store may be used again."""
        self._stop.set()
        thread, self._thread, self._pid = self._thread, None, None
        if thread is not None and thread is not threading.current_thread() and self._pid is None:
            thread.join(timeout=2 * INTERVAL + 1)

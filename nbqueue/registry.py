"""The live queues of this process: which Queue a re-run cell takes over, and
which one ``Result(task_id)`` and ``%nbqueue`` use when none is named."""

import threading

from .exceptions import NbqueueError

lock = threading.Lock()
live = {}        # storage key -> the live Queue on that store
_latest = None   # the most recently created Queue
# False while ``nbqueue worker module:queue`` imports the module: the Queue it makes
# must not start workers of its own (the worker command runs them).
autostart = True


def set_latest(queue):
    global _latest
    _latest = queue


def latest_queue():
    """The most recently created Queue. Raises NbqueueError if there is none."""
    if _latest is None:
        raise NbqueueError("no Queue exists yet; create one with nbqueue.Queue()")
    return _latest

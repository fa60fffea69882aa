"""``logging`` inside a task: its records go to the task's log, not to a cell.

A handler made before the queue (``logging.basicConfig()`` in the first cell)
holds the notebook's stream object itself, not ``sys.stderr``, so the proxy
on ``sys.stderr`` never sees its records: from a worker thread they would land
in whichever cell runs, or nowhere once no cell runs. At each task start every
``StreamHandler`` whose stream is a notebook stream is pointed (with the public
``StreamHandler.setStream``) at the thread-aware proxy that stands in for that
stream: a record a task emits goes to the task's record, a record from any
other thread still goes to the same stream as before. Handlers made after the
queue already got ``sys.stderr``, which is the proxy.

Looking at every logger costs a few microseconds per hundred loggers, so it is
done again only when something may have changed: ``sys.stdout``/``sys.stderr``
were swapped, the root logger's handlers or the number of loggers changed, or
``RESCAN_EVERY`` seconds passed.
"""

import logging
import sys
import threading
import time

RESCAN_EVERY = 0.5

_lock = threading.Lock()
_signature = None
_next_scan = 0.0


def reroute_handlers(proxy_for, force=False):
    """Point every StreamHandler whose stream ``proxy_for(stream)`` maps to a proxy
    at that proxy. ``proxy_for`` returns None for a stream to leave alone.

    A caller that finds nothing changed returns at once; one that finds a change
    while another thread looks waits for that look to end (the worker starts its
    task only after this returns, so none logs through a handler not yet seen)."""
    global _signature, _next_scan
    root = logging.getLogger()
    loggers = getattr(root.manager, "loggerDict", {})
    signature = (sys.stdout, sys.stderr, len(loggers), tuple(root.handlers))
    if not force and signature == _signature and time.monotonic() < _next_scan:
        return
    with _lock:
        if not force and signature == _signature and time.monotonic() < _next_scan:
            return  # another thread just looked
        for logger in [root, *list(loggers.values())]:
            for handler in list(getattr(logger, "handlers", None) or ()):  # a PlaceHolder has none
                if isinstance(handler, logging.StreamHandler):
                    proxy = proxy_for(handler.stream)
                    if proxy is not None:
                        handler.setStream(proxy)
        _signature, _next_scan = signature, time.monotonic() + RESCAN_EVERY

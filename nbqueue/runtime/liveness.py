"""Who holds a claim, and whether that process still lives; the same for the
worker processes registered in a store (sidecars, ``nbqueue worker``).

A worker id is ``host:pid:start:random``, ``start`` being the process's start
time (from ``/proc``), so a recycled pid is never taken for the old process.
A lease held by a process on this host is requeued only if that process is
gone: a live process whose task holds the GIL past its lease keeps its claim.
Across hosts (or without ``/proc``) the lease alone decides.
"""

import os
import socket
import time
import uuid

_HOST = socket.gethostname().replace(":", "_")
BEAT = 1.0          # seconds between two registrations of a live worker process (``runner``)
STALE = 10 * BEAT   # a registered worker not seen for this long (another host) is taken for dead


def _start_time(pid):
    """The process's start time in clock ticks since boot, or None if unknown or
    if it has ended (a zombie its parent has not reaped yet is dead too)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields and fields[0] in (b"Z", b"X"):
        return None
    try:
        return fields[19].decode()
    except (IndexError, ValueError):
        return None


def new_worker_id():
    return f"{_HOST}:{os.getpid()}:{_start_time(os.getpid()) or '-'}:{uuid.uuid4().hex[:8]}"


def holder_alive(worker):
    """True if ``worker``'s process still runs, False if it is gone, None if this
    host cannot tell (another host, no ``/proc``, an id of another form)."""
    parts = (worker or "").split(":")
    if len(parts) != 4 or parts[0] != _HOST or parts[2] == "-":
        return None
    try:
        pid = int(parts[1])
    except ValueError:
        return None
    if pid == os.getpid():
        return parts[2] == _start_time(pid)
    start = _start_time(pid)
    if start is None:
        return False if os.path.isdir("/proc/self") else None
    return start == parts[2]


# ---- registered worker processes (``Storage.beat_worker``) --------------------
def is_live(worker, info, now=None):
    """Whether a registered worker still lives: on this host, its process runs;
    elsewhere, it beat within ``STALE``."""
    verdict = holder_alive(worker)
    if verdict is None:
        now = time.time() if now is None else now
        beat = info.get("beat_at")
        verdict = isinstance(beat, (int, float)) and now - beat < STALE
    return verdict


def live_workers(store, now=None, forget_dead=True):
    """``{worker id: info}`` of the registered workers that still live; with
    ``forget_dead``, the registrations of the others are removed."""
    alive = {}
    for worker, info in store.registered_workers().items():
        if is_live(worker, info, now):
            alive[worker] = info
        elif forget_dead:
            store.remove_worker(worker)
    return alive


def describe_worker(info, now=None):
    """One line about a registered worker, for dashboards."""
    now = time.time() if now is None else now
    beat = info.get("beat_at")
    ago = f"{max(0.0, now - beat):.0f} s ago" if isinstance(beat, (int, float)) else "never"
    what = "sidecar" if info.get("sidecar") else "worker"
    return (f"{what} pid {info.get('pid', '?')} on {info.get('host', '?')}: "
            f"{info.get('workers', '?')} {info.get('kind', '?')} workers, "
            f"{info.get('busy', 0)} busy, last heartbeat {ago}")

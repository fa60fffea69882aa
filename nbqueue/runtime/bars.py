"""Which of a task's progress bars drives its progress: the outermost open one.

A task may open several bars (``nbqueue.tqdm``, ``tqdm.auto``,
``tqdm.notebook``): nested loops, or one loop after another. If each reported,
the task's progress would jump between them; so the first bar opened that is
still open drives it, and a bar opened inside it does not. When that bar
closes, the next bar that reports takes over.
"""

import threading
import weakref

_lock = threading.Lock()
_bars = weakref.WeakKeyDictionary()   # TaskContext -> [(weakref to a bar, is_open(bar))]


def add(ctx, bar, is_open):
    """Register ``bar`` as one of ``ctx``'s bars; ``is_open(bar)`` tells whether it
    is still open."""
    with _lock:
        _bars.setdefault(ctx, []).append((weakref.ref(bar), is_open))


def drives(ctx, bar):
    """True if ``bar`` is the first of ``ctx``'s bars still open (``bar`` itself
    counts as open: its last refresh, when it closes, reports the final count).
    A bar not registered (yet) drives when ``ctx`` has no other bar open."""
    with _lock:
        entries = _bars.get(ctx)
        if not entries:
            return True
        live = []
        for ref, is_open in entries:
            other = ref()
            if other is not None and (other is bar or _open(is_open, other)):
                live.append((ref, is_open))
        entries[:] = live
        if any(ref() is bar for ref, _ in live):
            return live[0][0]() is bar
        return not live


def _open(is_open, bar):
    try:
        return bool(is_open(bar))
    except Exception:  # a half-built or collected bar is not open
        return False

"""``nbqueue.tqdm``: a drop-in tqdm that, inside a task, drives the task's progress.

Inside a task it draws nothing (a bar written from a worker thread would land
in whichever cell runs last); each refresh, at tqdm's own ``mininterval``,
becomes ``nbqueue.progress(n, total, desc)``; a cancel or a timeout it reports
is raised by the loop (or ``update()``) right after. When bars nest, the
outermost open one drives the task's progress (``runtime.bars``, the rule a
``tqdm.auto`` bar in a task follows too); the inner ones only check for a
cancel. Outside a task it is ``tqdm.auto.tqdm``.
"""

from tqdm.std import tqdm as _std_tqdm

from ..runtime import bars
from ..runtime.context import current_task


class tqdm(_std_tqdm):  # noqa: N801 -- the name users import
    def __new__(cls, *args, **kwargs):
        if current_task() is None:
            from tqdm.auto import tqdm as auto
            return auto(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self._nbqueue_task = task = current_task()
        self._nbqueue_stop = None
        kwargs["file"] = _Nowhere()  # close() still writes a newline: not into the task's log
        super().__init__(*args, **kwargs)
        if task is not None:
            bars.add(task, self, _is_open)

    def display(self, msg=None, pos=None):
        task = self._nbqueue_task
        if task is None:
            return super().display(msg, pos)
        # tqdm calls this holding its process-wide lock, and does not release it if
        # we raise: a cancel or timeout is kept and raised by the loop instead.
        try:
            if bars.drives(task, self):
                task.progress(self.n, self.total, self.desc or None)
            else:
                task.check_cancelled()
        except Exception as exc:
            self._nbqueue_stop = exc
        return True

    def _nbqueue_raise(self):
        stop, self._nbqueue_stop = self._nbqueue_stop, None
        if stop is not None:
            raise stop

    def __iter__(self):
        for item in super().__iter__():
            self._nbqueue_raise()
            yield item
        self._nbqueue_raise()

    def update(self, n=1):
        shown = super().update(n)
        self._nbqueue_raise()
        return shown


def _is_open(bar):
    return not bar.disable  # tqdm sets it when the bar closes


class _Nowhere:
    def write(self, text):
        return len(text)

    def flush(self):
        pass

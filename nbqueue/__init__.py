"""nbqueue: a background task runner for Jupyter notebooks.

``import nbqueue`` stays light: IPython and ipywidgets load only when a
display or a magic needs them.
"""

from .exceptions import (
    CancelExecution,
    InvalidStateError,
    NbqueueError,
    QueueClosed,
    RetryTask,
    TaskCancelled,
    TaskException,
    TaskNotFound,
    TaskTimeout,
    WorkerLost,
)
from .futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
from .periodic import PeriodicJob
from .queue import Queue
from .result import Progress, Result, ResultGroup
from .runtime.context import check_cancelled, current_task, progress
from .schedules import crontab

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """``%load_ext nbqueue``: the ``%%background`` and ``%nbqueue`` magics."""
    from .ui.magics import load_ipython_extension as load
    load(ipython)


def __getattr__(name):
    # nbqueue.tqdm loads tqdm only when asked for: ``import nbqueue`` stays light.
    if name == "tqdm":
        from .ui.progressbar import tqdm
        return tqdm
    raise AttributeError(f"module 'nbqueue' has no attribute {name!r}")

__all__ = [
    "Queue", "Result", "ResultGroup", "Progress", "PeriodicJob", "crontab",
    "progress", "current_task", "check_cancelled",
    "wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
    "NbqueueError", "TaskException", "TaskCancelled", "TaskTimeout", "TaskNotFound",
    "InvalidStateError", "WorkerLost", "QueueClosed", "RetryTask", "CancelExecution",
]

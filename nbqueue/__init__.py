"""nbqueue: a background task runner for Jupyter notebooks.

``import nbqueue`` stays light: IPython and ipywidgets load only when a
display or a magic needs them.
"""

from .context import check_cancelled, current_task, progress
from .exceptions import (CancelExecution, InvalidStateError, NbqueueError, QueueClosed,
                         RetryTask, TaskCancelled, TaskException, TaskNotFound, TaskTimeout,
                         WorkerLost)
from .queue import Queue
from .result import Progress, Result, ResultGroup
from .scheduler import PeriodicJob, crontab

__version__ = "0.1.0"

__all__ = [
    "Queue", "Result", "ResultGroup", "Progress", "PeriodicJob", "crontab",
    "progress", "current_task", "check_cancelled",
    "NbqueueError", "TaskException", "TaskCancelled", "TaskTimeout", "TaskNotFound",
    "InvalidStateError", "WorkerLost", "QueueClosed", "RetryTask", "CancelExecution",
]

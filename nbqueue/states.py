"""The task states and the moves between them: the one place that names them.

::

    pending ──claim──> running ──ok──────────────> succeeded
       │                  │ ──error, retries left─> retrying ──delay over──> pending
       │                  │ ──error, none left────> failed
       │                  │ ──cancel / CancelExecution──> cancelled
       │                  └─ worker died (lease expired) ─> pending (or failed)
       ├──cancel──> cancelled
    scheduled ──eta reached──> pending

Only ``nbqueue.records.TaskRecord`` moves a task; other modules ask it
(``rec.finished``, ``rec.waiting``) instead of comparing these strings.
"""

PENDING = "pending"
SCHEDULED = "scheduled"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (PENDING, SCHEDULED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset((SUCCEEDED, FAILED, CANCELLED))
WAITING = frozenset((SCHEDULED, RETRYING))   # held back until an eta (or a pipeline parent)
UNFINISHED = (PENDING, SCHEDULED, RUNNING, RETRYING)

TRANSITIONS = {
    PENDING: frozenset((RUNNING, CANCELLED)),
    SCHEDULED: frozenset((PENDING, CANCELLED)),
    # running -> pending: the worker died (lease expired) or RetryTask without delay
    RUNNING: frozenset((SUCCEEDED, FAILED, RETRYING, CANCELLED, PENDING)),
    RETRYING: frozenset((PENDING, CANCELLED)),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def check_states(status, what="status"):
    """``status`` (a state or an iterable of states) as a tuple of states.

    Raises ValueError naming an unknown state and listing the known ones.
    """
    statuses = (status,) if isinstance(status, str) else tuple(status)
    for s in statuses:
        if s not in STATES:
            raise ValueError(f"{what}={s!r}: unknown state; the states are: {', '.join(STATES)}")
    return statuses

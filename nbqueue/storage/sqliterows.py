"""The SQLite store's rows: the task columns, and a ``TaskRecord`` to a row and
back (the error dict pickled, and signed when the store has a secret)."""

import operator
import pickle

from .. import serializer
from ..records import TaskRecord
from ..signing import context
from .base import unreadable_error

COLS = ("id", "name", "status", "priority", "seq", "created_at", "eta", "expires_at", "started_at",
        "finished_at", "attempts", "retries", "retries_used", "recoveries", "retry_delay",
        "retry_backoff", "timeout", "has_prev", "next_id", "worker", "lease_until",
        "cancel_requested", "progress_done", "progress_total", "progress_message", "error",
        "message", "cache_key", "cached")
SELECT = f"SELECT {', '.join(COLS)} FROM tasks"
INSERT = f"INSERT INTO tasks ({', '.join(COLS)}, qseq) VALUES ({', '.join('?' * (len(COLS) + 1))})"


def record(row, signer=None):
    """The TaskRecord of a row; its error dict checked with ``signer`` (if any)."""
    rec = TaskRecord(**dict(zip(COLS, row)))
    rec.has_prev, rec.cancel_requested, rec.cached = (
        bool(rec.has_prev), bool(rec.cancel_requested), bool(rec.cached))
    if rec.error is not None:
        try:  # written by this store (files checked at open), signed if there is a secret
            data = rec.error if signer is None else \
                signer.open(rec.error, "error", context("error", rec.id))
            rec.error = serializer.loads(data)
        except Exception as err:
            rec.error = unreadable_error(err)
    rec.output = None                        # not loaded
    return rec


snap = operator.attrgetter(*COLS)   # a record's columns, as a tuple
ERROR = COLS.index("error")


def row_values(values, signer):
    """A record's columns as stored: the error dict pickled (and signed)."""
    if values[ERROR] is None:
        return values
    error = pickle.dumps(values[ERROR])
    if signer is not None:
        error = signer.sign(error, context("error", values[0]))  # COLS[0] is the id
    return (*values[:ERROR], error, *values[ERROR + 1:])

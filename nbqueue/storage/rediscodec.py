"""How the Redis store writes a ``TaskRecord`` into a hash and reads it back.

Every field is a hash field holding text (numbers as ``repr``, flags as 0/1);
a field that is None is absent. The error dict is JSON, its pickled exception
signed and base64-encoded inside; payload, result and prev are signed bytes
(``signing``): ``decode`` hands back a ``signing.Rejected`` for one that fails,
which ``serializer.loads`` refuses without unpickling.
"""

import base64
import dataclasses
import json

from ..records import BULKY, TaskRecord
from ..signing import blob_context, context
from .base import unreadable_error

FIELDS = tuple(f.name for f in dataclasses.fields(TaskRecord))
LIGHT = tuple(f for f in FIELDS if f not in BULKY)      # what a plain read loads
CLAIMED = LIGHT + ("payload", "prev")                   # what a claim hands over
INTS = frozenset(("priority", "seq", "attempts", "retries", "retries_used", "recoveries"))
FLOATS = frozenset(("created_at", "eta", "expires_at", "started_at", "finished_at", "retry_delay",
                    "retry_backoff", "timeout", "lease_until", "progress_done", "progress_total"))
FLAGS = frozenset(("has_prev", "cancel_requested", "cached"))
SIGNED = frozenset(("payload", "result", "prev"))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TaskRecord)
            if f.default is not dataclasses.MISSING}


class Codec:
    """Encodes and decodes fields; ``signer`` signs and checks the pickled ones."""

    def __init__(self, signer):
        self.signer = signer

    def encode(self, name, value, task_id):
        """The text or bytes stored for a field of task ``task_id`` (None: the
        field is absent)."""
        if value is None:
            return None
        if name in FLOATS:
            return repr(float(value))
        if name in INTS:
            return str(int(value))
        if name in FLAGS:
            return "1" if value else "0"
        if name in SIGNED:
            return self.signer.sign(value, blob_context(name, task_id))
        if name == "error":
            return self.encode_error(value, task_id)
        return value

    def encode_error(self, error, task_id):
        error = dict(error)
        exc = error.get("exc")
        if isinstance(exc, (bytes, bytearray)):
            exc = self.signer.sign(bytes(exc), context("error", task_id))
            error["exc"] = base64.b64encode(exc).decode()
        elif exc is not None:
            error["exc"] = None  # only pickled exceptions are kept by a serializing store
        return json.dumps(error, default=str)

    def pairs(self, record, names, skip=()):
        """``[name, text, ...]`` of the fields of a new ``record`` that differ from
        their defaults (an absent field reads back as its default)."""
        out = []
        for name in names:
            value = getattr(record, name)
            if name in skip or value is None or (name in DEFAULTS and value == DEFAULTS[name]):
                continue
            out += (name, self.encode(name, value, record.id))
        return out

    def decode(self, names, values):
        """A TaskRecord from HMGET ``values`` of ``names``; None if the task is gone."""
        if values[0] is None:  # names[0] is "id"
            return None
        task_id = values[0].decode()
        fields = {}
        for name, raw in zip(names, values):
            if raw is None:
                continue
            if name in FLOATS:
                fields[name] = float(raw)
            elif name in INTS:
                fields[name] = int(raw)
            elif name in FLAGS:
                fields[name] = raw == b"1"
            elif name in SIGNED:
                fields[name] = self.signer.open(raw, _WHAT[name], blob_context(name, task_id))
            elif name == "error":
                fields[name] = self.decode_error(raw, task_id)
            else:
                fields[name] = raw.decode()
        if "output" not in fields and "output" in names:
            fields["output"] = ""
        elif "output" not in names:
            fields["output"] = None  # not loaded
        return TaskRecord(**fields)

    def decode_error(self, raw, task_id):
        try:
            error = json.loads(raw)
        except ValueError as err:
            return unreadable_error(err)
        exc = error.get("exc")
        if isinstance(exc, str):
            try:
                error["exc"] = self.signer.open(base64.b64decode(exc), "exception",
                                                context("error", task_id))
            except ValueError:
                error["exc"] = None
        return error


_WHAT = {"payload": "payload (a pickled call)", "result": "result (a pickled value)",
         "prev": "pipeline value (a pickled value)"}

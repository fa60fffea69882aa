"""HMAC-SHA256 signatures on the bytes a store keeps (pickled calls, values,
exceptions, periodic jobs), so a payload planted in a shared store by someone
without the secret is refused before it is unpickled: pickle runs code.

A signed blob is ``MAGIC + HMAC-SHA256(key, MAGIC + context + data) + data``,
the context saying what the blob is for (``context``): a call signed for one
task does not check as another task's, nor as a value. ``open`` checks it in
constant time and returns the data, or a ``Rejected`` marker that
``serializer.loads`` refuses with ``PayloadRejected``: a bad blob fails the one
task it belongs to, never the worker or a dashboard that merely lists it.
"""

import hashlib
import hmac
import os

ENV = "NBQUEUE_SECRET"
MAGIC = b"nbqueue-hmac1\x00"
_MAC_SIZE = hashlib.sha256().digest_size
_HEAD = len(MAGIC) + _MAC_SIZE


class Rejected:
    """Stands for a stored blob whose signature is missing or wrong (``reason``)."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return f"Rejected({self.reason!r})"


def resolve_secret(secret, what="secret"):
    """``secret`` (str or bytes), else ``$NBQUEUE_SECRET``, as key bytes; None if
    neither is set. Raises TypeError or ValueError naming ``what``."""
    if secret is None:
        secret = os.environb.get(os.fsencode(ENV)) or None
        what = f"${ENV}"
        if secret is None:
            return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"{what} must be a str or bytes, not {type(secret).__name__}")
    if len(secret) < 8:
        raise ValueError(f"{what} is too short ({len(secret)} bytes): use at least 8, "
                         "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return bytes(secret)


class Signer:
    """Signs and checks blobs under one key. Thread-safe (no state but the key)."""

    def __init__(self, key):
        self.key = key
        self._start = hmac.new(key, MAGIC, hashlib.sha256)  # copied per use: no key setup

    def _mac(self, data, context):
        h = self._start.copy()
        h.update(len(context).to_bytes(4, "big") + context)
        h.update(data)
        return h.digest()

    def sign(self, data, context=b""):
        """``data`` (bytes) signed for ``context``; None stays None."""
        if data is None:
            return None
        return MAGIC + self._mac(data, context) + data

    def open(self, blob, what="payload", context=b""):
        """The data of ``blob`` signed for ``context``, or ``Rejected`` (unsigned,
        forged, or signed for something else). None stays None."""
        if blob is None:
            return None
        view = memoryview(blob)
        if view[:len(MAGIC)] != MAGIC:
            return Rejected(f"this {what} is not signed, so it was refused without unpickling "
                            f"it (it was stored without a secret, or planted)")
        if not hmac.compare_digest(view[len(MAGIC):_HEAD], self._mac(view[_HEAD:], context)):
            return Rejected(f"this {what}'s signature does not match, so it was refused without "
                            f"unpickling it: it was signed with another secret (give every "
                            f"process the same secret= or ${ENV}), for another task, or "
                            f"changed in the store")
        return bytes(view[_HEAD:])


VALUE = b"value"   # the context of a result (and of the pipeline value copied from it)


def context(kind, owner):
    """The context a blob of ``kind`` ("payload", "error", "job", "memo") belonging
    to ``owner`` (a task id, job name or memo key) is signed for."""
    return f"{kind}:{owner}".encode()


def blob_context(kind, task_id):
    """What a task's ``kind`` of blob is signed for: a call for its own task; a
    value ("result", "prev") for any, as a pipeline copies it on to the next step."""
    return context("payload", task_id) if kind == "payload" else VALUE


def signer_for(secret, what="secret"):
    """A Signer for ``secret`` (or ``$NBQUEUE_SECRET``), or None if there is none."""
    key = resolve_secret(secret, what)
    return None if key is None else Signer(key)

"""Task stores: ``memory`` (in-process), ``sqlite`` (a store directory) and
``redis`` (a Redis server, for many machines). See
``base`` for the contract every store honours."""

import os

from ..signing import signer_for
from .base import Storage
from .redisconn import is_redis_url

__all__ = ["Storage", "open_storage", "storage_key"]


def open_storage(storage, queue_name, secret=None):
    """The store for ``Queue(name, storage=..., secret=...)``.

    None: a store directory ``./.nbqueue/<name>``; ``"memory"``: in-process;
    a path: that store directory; ``redis://``, ``rediss://`` or ``unix://``: a
    Redis server (``redis``); a ``Storage`` instance: itself. ``secret`` (or
    ``$NBQUEUE_SECRET``) signs what a store keeps; a Redis store requires one.
    Raises ValueError for anything else, NbqueueError for a directory that
    cannot be used (see ``sqlite.prepare_directory``).
    """
    if isinstance(storage, Storage):
        return storage
    signer = signer_for(secret)
    if is_redis_url(storage):
        from .redis import RedisStorage
        return RedisStorage(storage, queue_name, signer)
    if storage == "memory":
        from .memory import MemoryStorage
        return MemoryStorage()
    if storage is None:
        from .sqlite import prepare_directory
        prepare_directory(".nbqueue")
        storage = os.path.join(".nbqueue", queue_name)
    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    if isinstance(storage, str) and storage:
        from .sqlite import SqliteStorage
        return SqliteStorage(storage, queue_name, signer)
    raise ValueError(f"storage={storage!r} is not a store: give None (./.nbqueue/<name>), "
                     "'memory', a directory path, a redis:// URL, or a Storage instance")


def storage_key(storage, queue_name):
    """What identifies a store for re-run detection: ('memory', name), ('redis',
    url, name) or an absolute path."""
    if storage == "memory":
        return ("memory", queue_name)
    if is_redis_url(storage):
        return ("redis", storage, queue_name)
    if storage is None:
        return os.path.abspath(os.path.join(".nbqueue", queue_name))
    if isinstance(storage, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(storage)))
    return ("instance", id(storage))

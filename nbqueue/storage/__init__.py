"""Task stores: ``memory`` (in-process) and ``sqlite`` (a store directory). See
``base`` for the contract every store honours."""

import os

from .base import Storage

__all__ = ["Storage", "open_storage", "storage_key"]


def open_storage(storage, queue_name):
    """The store for ``Queue(name, storage=...)``.

    None: a store directory ``./.nbqueue/<name>``; ``"memory"``: in-process;
    a path: that store directory; a ``Storage`` instance: itself.
    Raises ValueError for anything else, NbqueueError for a directory that
    cannot be used (see ``sqlite.prepare_directory``).
    """
    if isinstance(storage, Storage):
        return storage
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
        if storage.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"storage={storage!r}: the Redis store is not in this version of "
                             "nbqueue; use storage='memory' or a directory path")
        from .sqlite import SqliteStorage
        return SqliteStorage(storage, queue_name)
    raise ValueError(f"storage={storage!r} is not a store: give None (./.nbqueue/<name>), "
                     "'memory', a directory path, or a Storage instance")


def storage_key(storage, queue_name):
    """What identifies a store for re-run detection: ('memory', name) or an absolute path."""
    if storage == "memory":
        return ("memory", queue_name)
    if storage is None:
        return os.path.abspath(os.path.join(".nbqueue", queue_name))
    if isinstance(storage, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(storage)))
    return ("instance", id(storage))

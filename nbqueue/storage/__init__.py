"""Task stores: ``memory`` (in-process) and ``disk`` (diskcache). See ``base`` for the contract."""

import os

from .base import JobRecord, Storage, TaskRecord

__all__ = ["JobRecord", "Storage", "TaskRecord", "open_storage"]


def open_storage(storage, queue_name):
    """The store for ``Queue(name, storage=...)``.

    None: diskcache under ``./.nbqueue/<name>``; ``"memory"``: in-process;
    a path: that diskcache directory; a ``Storage`` instance: itself.
    Raises ValueError for anything else.
    """
    if isinstance(storage, Storage):
        return storage
    if storage == "memory":
        from .memory import MemoryStorage
        return MemoryStorage()
    if storage is None:
        from .disk import prepare_directory
        prepare_directory(".nbqueue")
        storage = os.path.join(".nbqueue", queue_name)
    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    if isinstance(storage, str):
        if storage.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"storage={storage!r}: the Redis store is not in this version of "
                             "nbqueue; use storage='memory' or a directory path")
        from .disk import DiskStorage
        return DiskStorage(storage, queue_name)
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

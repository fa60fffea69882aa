"""The store directory: created private, checked before anything in it is trusted.

The store holds pickles, and loading a pickle runs code, so the directory and
every file nbqueue reads from it must be the user's own and closed to others.
"""

import contextlib
import errno
import os
import shlex
import stat

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's own locking alone
    fcntl = None

from ..exceptions import NbqueueError

DB = "nbqueue.db"
VALUES = "values"
WRITE_LOCK = "write.lock"
SIDECAR_LOG = "sidecar.log"


def check_private(path, st, mode):
    """Refuse a store file or directory someone else owns or can reach: the store
    holds pickles, and loading a pickle runs code."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NbqueueError(
            f"store {path!r} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); nbqueue "
            "loads pickles from its store, which runs code, so it only uses files you own: "
            "use a directory you own")
    if os.name == "posix" and st.st_mode & 0o077:
        raise NbqueueError(
            f"store {path!r} can be read or written by group or others (mode "
            f"{stat.filemode(st.st_mode)}); it holds your tasks' arguments and results as pickles, "
            "and anyone who can write there could make this process run code. "
            f"Fix it with: chmod {mode} {shlex.quote(path)}")


def os_problem(path, err):
    if err.errno == errno.ENAMETOOLONG:
        return NbqueueError(f"cannot make the store {path[:60]!r}...: the path or one of its names "
                            "is too long; give a shorter path")
    parent = path
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if parent != path and not os.path.isdir(parent):
        return NbqueueError(f"cannot make the store {path!r}: {parent!r} is not a directory "
                            "(a file, or a broken link); give a path under a directory")
    return NbqueueError(f"cannot use {path!r} as a store directory: {err.strerror or err}")


def prepare_directory(path):
    """Create ``path`` (mode 0700) or check an existing one is ours and private.
    Returns its absolute path. Raises NbqueueError saying how to fix it."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        if os.path.islink(path) and not os.path.exists(path):
            raise NbqueueError(f"store {path!r} is a symbolic link to {os.readlink(path)!r}, which "
                               "does not exist; create that directory or give another path")
        if not os.path.exists(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)  # makedirs' mode is masked by the umask
        st = os.stat(path)
    except OSError as err:
        raise os_problem(path, err) from err
    if not stat.S_ISDIR(st.st_mode):
        raise NbqueueError(f"store {path!r} is a file, not a directory; give a directory path")
    check_private(path, st, "700")
    return path


def check_files(directory):
    """The database, its side files and values/: ours and private, before any read."""
    for name, mode in ((DB, "600"), (DB + "-wal", "600"), (DB + "-shm", "600"), (VALUES, "700")):
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        check_private(path, st, mode)


def damaged(path, why):
    directory = shlex.quote(os.path.dirname(path))
    return NbqueueError(
        f"the store database {path!r} {why}: it is damaged. nbqueue will not start an empty store "
        f"over it; move the directory aside (mv {directory} {directory}.damaged) and use a new one")


def survey(directory):
    """Refuse a directory that is not a store, is of the old format, or whose
    database was lost. Returns True if it has no database yet (a new store)."""
    names = set(os.listdir(directory))
    db = os.path.join(directory, DB)
    wal = db + "-wal"
    leftovers = VALUES in names or (os.path.exists(wal) and os.path.getsize(wal) > 0)
    if DB not in names:
        if "cache.db" in names:
            quoted = shlex.quote(directory)
            raise NbqueueError(
                f"{directory!r} was written by nbqueue 0.1 in the old format (diskcache's cache.db), "
                f"which this nbqueue does not read. Move it aside (mv {quoted} {quoted}.old) "
                "or use a new directory")
        if leftovers:
            raise damaged(db, "is missing while its values/ or WAL file is still there")
        # (write.lock and sidecar.log stay behind a deleted database: not foreign)
        foreign = sorted(names - {DB + "-shm", DB + "-journal", WRITE_LOCK, SIDECAR_LOG})
        if foreign:
            raise NbqueueError(
                f"{directory!r} is not an nbqueue store: it holds other files "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and no {DB}. "
                "Give an empty or new directory")
        return True
    if os.path.getsize(db) == 0 and leftovers:
        raise damaged(db, "is empty (0 bytes) while its values/ or WAL file is there")
    return False


def unlink(paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)




class WriteLock:
    """An exclusive ``flock`` on ``write.lock`` in the store directory, held around
    each write transaction. Writers from several processes (a notebook submitting
    while a sidecar finishes tasks) then queue in the kernel and get the database
    as soon as it is free, instead of sleeping in SQLite's busy handler (1, 2, 5,
    10... ms between tries: a submit stalled 20-200 ms behind a busy sidecar).
    A dead holder's lock is released by the kernel. Opened once per process (a
    forked child opens its own: a shared descriptor would share the lock).
    Without ``fcntl`` it does nothing."""

    def __init__(self, directory):
        self.path = os.path.join(directory, WRITE_LOCK)
        self._fd = None
        self._pid = None

    def acquire(self):
        if fcntl is None:
            return
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                               0o600)
            self._pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self):
        if fcntl is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def close(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None


class Big:
    """A value too big for the database, written to a temp file before the transaction."""
    __slots__ = ("tmp",)

    def __init__(self, tmp):
        self.tmp = tmp

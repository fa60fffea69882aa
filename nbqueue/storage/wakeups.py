"""Wake-ups between processes sharing a store directory: a hint, never data.

Each process that waits on a shared store binds one Unix datagram socket in
``$TMPDIR/nbqueue-<uid>/<key>/`` (``key``: a hash of the store's path, so the
socket path stays under the 108-byte limit). After a change others may wait
for, a process sends one byte to every socket there: ``w`` (work is ready),
``d`` (a task finished), ``e`` (an eta changed) or ``c`` (a cancel was asked
for a running task). A listener thread turns it
into the in-process notify, so a sidecar's idle worker starts a task a notebook
submitted within a millisecond, and the notebook's ``r.get()`` returns as soon
as the sidecar finished it. A datagram lost or refused costs only that speed:
waiters still poll the store. Sockets left by a dead process refuse datagrams
and are removed by the next sender.
"""

import hashlib
import os
import socket
import tempfile
import threading


def _base():
    return os.path.join(tempfile.gettempdir(), f"nbqueue-{os.getuid()}")


def _private_dir(path):
    """Make ``path`` (and its parent) a directory only we can use; False if it is
    not ours (another user made it first): then no wake-ups, only polling."""
    for d in (os.path.dirname(path), path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if st.st_uid != os.getuid() or not os.path.isdir(d) or os.path.islink(d):
            return False
    return True


class Wakeups:
    """The wake-up channel of one store directory in this process.
    ``handlers``: ``{kind byte: function}`` called (in the listener thread) when
    another process sends that kind. Every method raises nothing."""

    def __init__(self, store_path, handlers):
        key = hashlib.sha256(os.path.realpath(store_path).encode()).hexdigest()[:20]
        self.directory = os.path.join(_base(), key)
        self._handlers = handlers
        self._lock = threading.Lock()
        self._pid = None        # the process that made the sockets (a fork makes its own)
        self._own = None        # path of our listening socket
        self._listener = None
        self._sender = None
        self._peers = ()
        self._seen = None       # the directory's mtime when _peers was listed

    @property
    def supported(self):
        return hasattr(socket, "AF_UNIX")

    def listen(self):
        """Bind our socket and start the listener thread (once per process)."""
        if self._own is not None and self._pid == os.getpid() or not self.supported:
            return
        with self._lock:
            if self._own is not None and self._pid == os.getpid():
                return
            self._reset()
            try:
                if not _private_dir(self.directory):
                    return
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                path = os.path.join(self.directory, f"{os.getpid()}-{os.urandom(4).hex()}.sock")
                sock.bind(path)
            except OSError:
                return
            self._own, self._listener, self._pid = path, sock, os.getpid()
            threading.Thread(target=self._listen, args=(sock,), daemon=True,
                             name="nbqueue-wakeups").start()

    def _listen(self, sock):
        while True:
            try:
                kind = sock.recv(16)
            except OSError:
                return  # closed
            if not kind:
                return  # shut down by close()
            handler = self._handlers.get(kind[:1])
            if handler is not None:
                try:
                    handler()
                except Exception:  # a hint: never let it end the listener
                    pass

    def send(self, kind):
        """Tell every other waiting process about ``kind`` (``w``, ``d`` or ``e``)."""
        if not self.supported:
            return
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return  # nobody has listened yet
        if self._pid != os.getpid() and self._own is not None:
            with self._lock:
                self._reset()
        if mtime != self._seen or self._sender is None:
            with self._lock:
                self._refresh(mtime)
        sender = self._sender  # close() may drop it meanwhile: then sends fail quietly
        if sender is None:
            return
        for path in self._peers:
            try:
                sender.sendto(kind, path)
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(path)  # its process is gone
            except OSError:
                pass  # its buffer is full (it is awake anyway), or a hiccup

    def _refresh(self, mtime):
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            names = os.listdir(self.directory)
        except OSError:
            return
        self._peers = tuple(os.path.join(self.directory, n) for n in names
                            if n.endswith(".sock") and os.path.join(self.directory, n) != self._own)
        self._seen = mtime

    def _forget(self, path):
        try:
            os.unlink(path)
        except OSError:
            pass
        self._seen = None

    def _reset(self):
        """Drop sockets made by another process (we are a fork of it)."""
        for sock in (self._listener, self._sender):
            if sock is not None and self._pid == os.getpid():
                sock.close()
        self._own = self._listener = self._sender = None
        self._peers, self._seen, self._pid = (), None, None

    def close(self):
        with self._lock:
            own, mine = self._own, self._pid == os.getpid()
            if mine and self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv
                except OSError:
                    pass
                self._listener.close()
            if mine and own is not None:
                for remove, path in ((os.unlink, own), (os.rmdir, self.directory)):
                    try:
                        remove(path)  # the directory only if no other process listens
                    except OSError:
                        pass
            if mine and self._sender is not None:
                self._sender.close()
            self._own = self._listener = self._sender = None
            self._peers, self._seen, self._pid = (), None, None

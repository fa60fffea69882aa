"""A real ``redis-server`` process for the tests of the Redis store.

``RedisServer(directory)`` runs one on 127.0.0.1 on a free port, with its data
(append-only file, dump file, log) in ``directory``. With ``appendonly=True``
(the default) every write is fsynced before Redis answers it (``appendfsync
always``), so ``stop()``/``kill()`` followed by ``start()`` loses nothing that
was acknowledged. ``restart()`` comes back on the same port, so clients keep
their URL.

Nothing outlives the tests: every server is stopped at interpreter exit
(``atexit``), the ``redis_server`` fixture stops its own, and on Linux the
server gets SIGKILL if the thread that started it dies (``setpriv --pdeathsig``), which
covers a test process that is itself killed. Start servers from the main thread
(a fixture or a test body), not from a short-lived helper thread.

Needs ``redis-server`` on the PATH (Debian: ``apt-get install redis-server``);
``client()`` needs redis-py, the rest speaks RESP over a plain socket.
"""

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
_LIVE = set()
_LIVE_LOCK = threading.Lock()


def redis_server_path():
    """The ``redis-server`` executable on the PATH, or None."""
    return shutil.which("redis-server")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent():
    """argv prefix that has the server SIGKILLed when the thread that started it ends:
    util-linux's ``setpriv --pdeathsig`` (not a preexec_fn, which may deadlock in a
    child forked from a process with threads). Empty where there is no setpriv."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _command(port, text, timeout=1.0):
    """Send one inline command; its reply (b'+PONG', b'-LOADING ...', a bulk string's
    bytes), or None if nothing listens or nothing answers."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(text.encode() + b"\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = s.recv(65536)
                if not chunk:
                    return reply.strip() or None
                reply += chunk
            head, _, rest = reply.partition(b"\r\n")
            if not head.startswith(b"$") or head == b"$-1":
                return head
            size = int(head[1:])
            while len(rest) < size:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return rest[:size]
    except (OSError, ValueError):
        return None


def _server_pid(port):
    """The process id of the Redis server answering on ``port`` (INFO server), or None."""
    info = _command(port, "INFO server") or b""
    for line in info.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServerError(RuntimeError):
    """A redis-server that would not start, with the reason and its log."""


class RedisServer:
    """One ``redis-server`` process; see the module docstring.

    ``port=None`` picks a free port on the first ``start()`` and keeps it for
    every restart. Not thread-safe: drive it from one thread.
    """

    def __init__(self, directory, port=None, appendonly=True, executable=None):
        self.directory = os.path.abspath(os.fspath(directory))
        self.port = port
        self.appendonly = appendonly
        self.executable = executable or redis_server_path()
        self.log_path = os.path.join(self.directory, "redis-server.log")
        self.proc = None
        self.starts = 0

    # ---- state -----------------------------------------------------------------
    @property
    def url(self):
        if self.port is None:
            raise RuntimeError("the server has no port yet: start() it first")
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self):
        return None if self.proc is None else self.proc.pid

    @property
    def running(self):
        """True while the process lives (it may not answer yet, or any more)."""
        return self.proc is not None and self.proc.poll() is None

    def ping(self, timeout=1.0):
        """True if the server answers PING with PONG (not while it loads its data)."""
        return self.port is not None and _command(self.port, "PING", timeout) == b"+PONG"

    def log(self, tail=4000):
        """The end of the server's log."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-tail:]
        except OSError:
            return "(no log)"

    def client(self, **kwargs):
        """A ``redis.Redis`` connected to this server (database 0)."""
        import redis
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=HOST, port=self.port, db=0, **kwargs)

    # ---- lifecycle -------------------------------------------------------------
    def _argv(self):
        argv = [self.executable,
                "--bind", HOST, "--port", str(self.port), "--protected-mode", "no",
                "--daemonize", "no", "--dir", self.directory,
                "--dbfilename", "dump.rdb", "--save", "", "--logfile", "",
                "--appendfilename", "appendonly.aof"]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self, timeout=20.0):
        """Start the server and wait until it answers PING (after loading its data).
        Raises RedisServerError with its log if it exits or never answers."""
        if self.executable is None:
            raise RedisServerError("redis-server is not on the PATH; on Debian: "
                                   "apt-get install redis-server")
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        os.makedirs(self.directory, exist_ok=True)
        pick = self.port is None
        for _ in range(5 if pick else 1):
            if pick:
                self.port = free_port()
            if self._start_once(timeout, may_retry=pick):
                return self
            self.port = None  # that port was taken meanwhile: try another
        raise RedisServerError(f"redis-server found no free port; its log:\n{self.log()}")

    def _start_once(self, timeout, may_retry):
        with open(self.log_path, "a") as log:
            log.write(f"\n==== nbqueue tests: starting on port {self.port} ====\n")
            log.flush()
            self.proc = subprocess.Popen(
                _die_with_parent() + self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                text = self.log()
                if may_retry and "Address already in use" in text[-1500:]:
                    return False
                raise RedisServerError(f"redis-server on port {self.port} exited with code "
                                       f"{code} while starting; its log ({self.log_path}):\n{text}")
            if self.ping(timeout=0.5):
                if _server_pid(self.port) != self.proc.pid:  # another server has the port
                    continue  # ours exits with "Address already in use" (handled above)
                self.starts += 1
                return True
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING within "
                               f"{timeout:.0f} s; its log ({self.log_path}):\n{self.log()}")

    def stop(self, timeout=20.0):
        """Shut the server down cleanly (SHUTDOWN: the append-only file is flushed),
        falling back to SIGTERM, then SIGKILL. No-op if it is not running."""
        if not self.running:
            self._forget()
            return
        _command(self.port, "SHUTDOWN", timeout=5.0)
        if not self._wait(timeout):
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
            if not self._wait(timeout):
                self.kill()
                return
        self._forget()

    def kill(self):
        """SIGKILL the server, as a crash would (acknowledged writes are on disk)."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self._wait(10)
        self._forget()

    def restart(self, downtime=0.0, kill=False, timeout=20.0):
        """Stop (or ``kill``) the server, stay down ``downtime`` seconds, start it again on
        the same port; returns the time it was unreachable, in seconds."""
        t0 = time.monotonic()
        if kill:
            self.kill()
        else:
            self.stop()
        if downtime:
            time.sleep(downtime)
        self.start(timeout=timeout)
        return time.monotonic() - t0

    def _wait(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _forget(self):
        self.proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self):
        return self.start() if not self.running else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self.port} {state} in {self.directory}>"


@atexit.register
def _stop_all():
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()

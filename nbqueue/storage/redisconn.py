"""The Redis store's connection: URLs, the client, errors that name the server,
and the pub/sub listener that turns the store's events into in-process wake-ups.

redis-py is imported here only, when a ``redis://`` store is opened: ``import
nbqueue`` never needs it (``pip install 'nbqueue[redis]'``).
"""

import functools
import logging
import threading
import time
import urllib.parse

from ..exceptions import StoreUnavailable

URL_SCHEMES = ("redis://", "rediss://", "unix://")
log = logging.getLogger("nbqueue.redis")


def is_redis_url(storage):
    return isinstance(storage, str) and storage.startswith(URL_SCHEMES)


def safe_url(url):
    """``url`` without its password (in the address or the query), for messages and reprs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and "password=" not in parts.query.lower():
        return url
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query=urllib.parse.urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in query], safe="*"))
    # (a unix:/// URL comes back as unix:/path: still one redis-py reads)
    return urllib.parse.urlunsplit(parts)


def import_redis():
    try:
        import redis
    except ImportError:
        raise ImportError("a redis:// store needs redis-py: pip install 'nbqueue[redis]' "
                          "(or pip install redis)") from None
    return redis


def connect(url):
    """A redis-py client for ``url`` (password, TLS and database from the URL).
    Raises ValueError for a URL redis-py cannot read."""
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    try:
        # No silent retries: a script sent again after a lost reply would run twice
        # (two claims, two adds). A lost reply raises; our callers decide.
        tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
        return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=15,
                                    retry=Retry(NoBackoff(), 0), **tcp)
    except ValueError as err:
        raise ValueError(f"storage={safe_url(url)!r} is not a Redis URL redis-py can use "
                         f"({err}); write redis://[:password@]host:port/db or rediss:// for TLS") from None


def unavailable(url, err):
    return StoreUnavailable(f"cannot reach the Redis store at {safe_url(url)} "
                            f"({type(err).__name__}: {err}); is redis-server running there? "
                            "A change this call asked for was made whole or not at all: if "
                            "the server went away mid-call, look before doing it again "
                            "(q.result(task_id).status)")


# Replies that mean the server cannot serve us now, like a lost connection: a
# script running too long, a replica that cannot be written, a failover.
UNAVAILABLE_REPLIES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def translating(names):
    """A class decorator: the methods ``names`` raise StoreUnavailable (naming the
    server) instead of redis-py's ConnectionError or TimeoutError, or an error
    reply in ``UNAVAILABLE_REPLIES``."""
    def decorate(cls):
        redis = import_redis()
        lost = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        for name in names:
            method = getattr(cls, name)

            @functools.wraps(method)
            def guarded(self, *args, _method=method, **kwargs):
                try:
                    return _method(self, *args, **kwargs)
                except lost as err:
                    raise unavailable(self.url, err) from err
                except redis.exceptions.ResponseError as err:
                    if str(err).startswith(UNAVAILABLE_REPLIES):
                        raise unavailable(self.url, err) from err
                    raise
            setattr(cls, name, guarded)
        return cls
    return decorate


class Events:
    """One pub/sub connection per store and process, read by a daemon thread:
    a message on channel ``prefix + kind`` calls ``handlers[kind](data)``. A kind
    is subscribed to when first asked for (``listen``), so a process hears only
    what it waits for. A connection lost is retried with backoff; after each
    (re)subscription a kind's handler is called once with ``b""``, as something
    may have been missed meanwhile."""

    IDLE_WAKE = 1.0   # seconds: how often the thread looks whether it should stop

    def __init__(self, client, prefix, handlers):
        self._client, self._prefix, self._handlers = client, prefix, handlers
        self._kinds = {(prefix + kind).encode(): kind for kind in handlers}
        self._wanted = set()
        self._confirmed = {kind: threading.Event() for kind in handlers}
        self._pubsub = None
        self._thread = None
        self._closed = False
        self._lock = threading.Lock()

    def listen(self, kind, wait=1.0):
        """Hear ``kind`` from now on; wait up to ``wait`` s until the server has
        confirmed it (a message published before that is not heard)."""
        if kind not in self._wanted:
            with self._lock:
                if kind not in self._wanted and not self._closed:
                    self._wanted.add(kind)
                    if self._thread is None:
                        self._thread = threading.Thread(target=self._run, daemon=True,
                                                        name="nbqueue-redis-events")
                        self._thread.start()
                    elif self._pubsub is not None:
                        try:  # sent from this thread; the listener reads the confirmation
                            self._pubsub.subscribe(self._prefix + kind)
                        except Exception:  # the listener reconnects and subscribes it
                            pass
        if wait:
            self._confirmed[kind].wait(wait)

    def _run(self):
        backoff = 0.05
        while not self._closed:
            pubsub = None
            try:
                with self._lock:
                    self._pubsub = pubsub = self._client.pubsub()
                    pubsub.subscribe(*(self._prefix + kind for kind in self._wanted))
                backoff = 0.05
                while not self._closed:
                    message = pubsub.get_message(timeout=self.IDLE_WAKE)
                    if message is not None:
                        self._dispatch(message)
            except Exception as err:  # the server went away: try again, never die
                for confirmed in self._confirmed.values():
                    confirmed.clear()
                log.debug("event subscription lost (%s); retrying in %.2f s", err, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with self._lock:
                    self._pubsub = None
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _dispatch(self, message):
        kind = self._kinds.get(message.get("channel"))
        if kind is None:
            return
        if message["type"] == "subscribe":
            self._confirmed[kind].set()
            self._handlers[kind](b"")
        elif message["type"] == "message":
            self._handlers[kind](message["data"])

    def close(self):
        self._closed = True

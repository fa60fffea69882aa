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
    """``url`` without its password, for messages and reprs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True,
                                    health_check_interval=15, retry=Retry(NoBackoff(), 0))
    except ValueError as err:
        raise ValueError(f"storage={safe_url(url)!r} is not a Redis URL redis-py can use "
                         f"({err}); write redis://[:password@]host:port/db or rediss:// for TLS") from None


def unavailable(url, err):
    return StoreUnavailable(f"cannot reach the Redis store at {safe_url(url)} "
                            f"({type(err).__name__}: {err}); is redis-server running there? "
                            "A change this call asked for was made whole or not at all: if "
                            "the server went away mid-call, look before doing it again "
                            "(q.result(task_id).status)")


def translating(names):
    """A class decorator: the methods ``names`` raise StoreUnavailable (naming the
    server) instead of redis-py's ConnectionError or TimeoutError."""
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
            setattr(cls, name, guarded)
        return cls
    return decorate


class Events:
    """One pub/sub subscription per store and process, in a daemon thread, that
    calls ``handlers[first byte](rest)`` for each message on ``channel``. A
    connection lost is retried with backoff; after each (re)subscription every
    handler is called once, as something may have been missed meanwhile."""

    IDLE_WAKE = 1.0   # seconds: how often the thread looks whether it should stop

    def __init__(self, client, channel, handlers):
        self._client, self._channel, self._handlers = client, channel, handlers
        self._thread = None
        self._closed = False
        self._subscribed = threading.Event()
        self._start_lock = threading.Lock()

    def listen(self, wait=1.0):
        """Start listening if not yet; wait up to ``wait`` s for the subscription
        (a message published before it cannot be seen)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._run, name="nbqueue-redis-events",
                                                    daemon=True)
                    self._thread.start()
        self._subscribed.wait(wait)

    def _run(self):
        backoff = 0.05
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                for handler in self._handlers.values():
                    handler(b"")
                backoff = 0.05
                while not self._closed:
                    message = pubsub.get_message(timeout=self.IDLE_WAKE)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        handler = self._handlers.get(data[:1])
                        if handler is not None:
                            handler(data[1:])
            except Exception as err:  # the server went away: try again, never die
                self._subscribed.clear()
                log.debug("event subscription lost (%s); retrying in %.2f s", err, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def close(self):
        self._closed = True

"""Memoized results (``@q.task(cache=...)``) on a Redis store, shared by every
machine on the queue: one string per call key under ``<prefix>memo:``, its
value the store's encoded bytes, signed; a sorted set of keys by last use and a
byte counter keep the whole under ``size_limit`` by evicting the least recently
used (in the same script as the write, so it is atomic). Same interface as
``memo.MemoryMemo`` and ``memo.DiskMemo``.
"""

import struct
import time

from ..signing import context
from .memo import DEFAULT_SIZE_LIMIT

_STAMP = struct.Struct("<d")   # stored_at, before the signed value

# KEYS[1]: prefix. ARGV: call key, blob, now, size limit.
SET = r"""
local K, key = KEYS[1], KEYS[1] .. 'memo:' .. ARGV[1]
local total = redis.call('INCRBY', K .. 'memo-bytes', string.len(ARGV[2]) - redis.call('STRLEN', key))
redis.call('SET', key, ARGV[2])
redis.call('ZADD', K .. 'memo-lru', ARGV[3], ARGV[1])
while total > tonumber(ARGV[4]) do
  local oldest = redis.call('ZRANGE', K .. 'memo-lru', 0, 0)[1]
  if not oldest or oldest == ARGV[1] then break end
  total = redis.call('DECRBY', K .. 'memo-bytes', redis.call('STRLEN', K .. 'memo:' .. oldest))
  redis.call('DEL', K .. 'memo:' .. oldest)
  redis.call('ZREM', K .. 'memo-lru', oldest)
end
return total
"""

# KEYS[1]: prefix. Deletes at most 500 entries; returns how many.
CLEAR = r"""
local K = KEYS[1]
local keys = redis.call('ZRANGE', K .. 'memo-lru', 0, 499)
for _, k in ipairs(keys) do
  redis.call('DECRBY', K .. 'memo-bytes', redis.call('STRLEN', K .. 'memo:' .. k))
  redis.call('DEL', K .. 'memo:' .. k)
  redis.call('ZREM', K .. 'memo-lru', k)
end
return #keys
"""


def _memo_context(key, stamp):
    """A value is signed for its key and the moment it was stored: neither can be
    moved to another key nor made to look fresh."""
    return context("memo", key) + b"@" + stamp


class RedisMemo:
    def __init__(self, store, size_limit=DEFAULT_SIZE_LIMIT):
        self._store, self._client, self.size_limit = store, store._client, size_limit
        self._keys = [store.prefix]
        self._set = self._client.register_script(SET)
        self._clear = self._client.register_script(CLEAR)

    def get(self, key, max_age, now=None):
        """``(True, value)`` for a value stored at most ``max_age`` s ago and
        correctly signed, else ``(False, None)``. Marks it recently used."""
        now = time.time() if now is None else now
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._store.prefix + "memo:" + key)
        pipe.zadd(self._store.prefix + "memo-lru", {key: now}, xx=True)
        blob = pipe.execute()[0]
        if blob is None or len(blob) < _STAMP.size:
            return False, None
        value = self._store.signer.open(blob[_STAMP.size:], "memoized value",
                                        _memo_context(key, blob[:_STAMP.size]))
        if not isinstance(value, bytes) or now - _STAMP.unpack_from(blob)[0] > max_age:
            return False, None
        return True, value

    def set(self, key, value, now=None):
        now = time.time() if now is None else now
        stamp = _STAMP.pack(now)
        blob = stamp + self._store.signer.sign(value, _memo_context(key, stamp))
        self._set(keys=self._keys, args=(key, blob, repr(float(now)), self.size_limit))

    def clear(self):
        total = 0
        while True:
            n = self._clear(keys=self._keys)
            total += n
            if n < 500:
                return total

    def close(self):
        pass

"""``SeqIndex``: a sorted set of submit numbers (``seq``) for the memory store's
pages by state and by name.

A plain sorted list costs a memmove of the whole list to take its head out (a
claimed task leaves the front of the pending list: 160 KB moved per claim
with 20,000 waiting). Here the numbers sit in chunks of at most ``2 * CHUNK``,
so an insert or a removal is a binary search plus a move within one chunk,
and a page walks from the newest end without touching the rest.
"""

from bisect import bisect_left, insort

CHUNK = 256


class SeqIndex:
    __slots__ = ("_chunks", "_maxes", "_len")

    def __init__(self):
        self._chunks = []   # ascending chunks, each ascending and non-empty
        self._maxes = []    # the last number of each chunk
        self._len = 0

    def __len__(self):
        return self._len

    def add(self, seq):
        chunks, maxes = self._chunks, self._maxes
        if not chunks:
            chunks.append([seq])
            maxes.append(seq)
        else:
            i = bisect_left(maxes, seq)
            if i == len(chunks):  # the common case: a new, highest number
                i -= 1
                chunk = chunks[i]
                chunk.append(seq)
                maxes[i] = seq
            else:
                chunk = chunks[i]
                insort(chunk, seq)
            if len(chunk) > 2 * CHUNK:
                chunks[i:i + 1] = [chunk[:CHUNK], chunk[CHUNK:]]
                maxes[i:i + 1] = [chunk[CHUNK - 1], chunk[-1]]
        self._len += 1

    def remove(self, seq):
        """Take ``seq`` out; False if it was not there."""
        maxes = self._maxes
        i = bisect_left(maxes, seq)
        if i == len(maxes):
            return False
        chunk = self._chunks[i]
        j = bisect_left(chunk, seq)
        if j == len(chunk) or chunk[j] != seq:
            return False
        del chunk[j]
        if chunk:
            maxes[i] = chunk[-1]
        else:
            del self._chunks[i]
            del maxes[i]
        self._len -= 1
        return True

    def __reversed__(self):
        """Newest (highest) first."""
        for chunk in reversed(self._chunks):
            yield from reversed(chunk)

    def newest(self, offset=0):
        """Newest first, skipping the ``offset`` newest whole chunks at a time."""
        chunks = self._chunks
        i = len(chunks) - 1
        while i >= 0 and offset >= len(chunks[i]):
            offset -= len(chunks[i])
            i -= 1
        for k in range(i, -1, -1):
            chunk = chunks[k]
            stop = len(chunk) - offset if k == i else len(chunk)
            yield from reversed(chunk[:stop])

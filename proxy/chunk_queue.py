"""Body chunks handed from a protocol's callbacks to the coroutine that relays them, with flow control.

Both directions of the relay need the same thing: the client's request body on its way up, and the
upstream's response body on its way down. The producing socket is paused once more than
``HIGH_WATER`` bytes wait and resumed below ``LOW_WATER``, so a fast sender never fills memory
(a multi-GB blob upload stays flat). A base class, not a member object, so the hot path does not
allocate one more object per request.
"""

from __future__ import annotations

import asyncio
from collections import deque

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ChunkQueue:
    __slots__ = ("_buffered", "_chunks", "_complete", "_paused", "_waiter")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # --- the producing side (protocol callbacks) ------------------------------------------------
    def _pause_producer(self) -> None:
        raise NotImplementedError

    def _resume_producer(self) -> None:
        raise NotImplementedError

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause_producer()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the consuming side (the relay's coroutine) ---------------------------------------------
    def _pop(self) -> bytes | None:
        """The next chunk, or None when none is waiting (then check for the end, or ``_wait``)."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= LOW_WATER:
            self._paused = False
            self._resume_producer()
        return chunk

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until the producer feeds, finishes or fails."""
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

"""A pool of open SMTP connections, lent out one mail transaction at a time.

Opening an SMTP session costs a TCP handshake, the greeting, EHLO, STARTTLS and AUTH: several
round trips for one message. The pool keeps up to ``size`` sessions open and lends each to one
transaction at a time (SMTP is strictly sequential per connection). Invariant: connections
open (idle + lent) <= ``size``, because a new one is opened only by a holder of a slot when no
idle one is left.

A connection is returned to the pool only while it is connected; one idle for longer than
``max_idle_s`` (servers close idle sessions, NATs forget them) is closed rather than reused.
A lent connection may still turn out dead at its first command: the caller then discards it
and asks for a fresh one (:meth:`SmtpPool.lease` with ``fresh=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiosmtplib

from leadback.clock import Clock

QUIT_TIMEOUT_S = 2.0


class Lease:
    """One connection lent to one transaction. ``reused``: it served an earlier one."""

    __slots__ = ("discarded", "reused", "smtp")

    def __init__(self, smtp: aiosmtplib.SMTP, *, reused: bool) -> None:
        self.smtp = smtp
        self.reused = reused
        self.discarded = False

    def discard(self) -> None:
        """Do not return this connection to the pool (it failed or is in an unknown state)."""
        self.discarded = True
        self.smtp.close()


class SmtpPool:
    """Up to ``size`` open SMTP connections."""

    def __init__(self, *, size: int, clock: Clock, max_idle_s: float) -> None:
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (connection, idle since)
        self._clock = clock
        self._max_idle_s = max_idle_s
        self._closed = False
        self.opened = 0  # connections opened so far (for stats and tests)

    @contextlib.asynccontextmanager
    async def lease(
        self, connect: Callable[[], Awaitable[aiosmtplib.SMTP]], *, fresh: bool = False
    ) -> AsyncIterator[Lease]:
        """A connection for one transaction: an idle one unless ``fresh``, else a new one made
        by ``connect`` once a slot is free.

        Raises what ``connect`` raises (the slot is given back). On exit the connection goes
        back to the pool if it is still connected and was not discarded; an exception or a
        cancellation inside the block discards it (its session state is unknown).
        """
        async with self._slots:
            lease = None if fresh else self._take_idle()
            if lease is None:
                lease = Lease(await connect(), reused=False)
                self.opened += 1
            try:
                yield lease
            except BaseException:
                lease.discard()
                raise
            finally:
                self._give_back(lease)

    def _take_idle(self) -> Lease | None:
        now = self._clock.monotonic()
        while self._idle:
            smtp, since = self._idle.pop()  # the most recently used: the likeliest alive
            if smtp.is_connected and now - since <= self._max_idle_s:
                return Lease(smtp, reused=True)
            smtp.close()
        return None

    def _give_back(self, lease: Lease) -> None:
        if self._closed or lease.discarded or not lease.smtp.is_connected:
            lease.smtp.close()
            return
        self._idle.append((lease.smtp, self._clock.monotonic()))

    async def aclose(self) -> None:
        """Say QUIT to the idle connections and close them; lent ones close when returned."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(smtp) for smtp, _ in idle))


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit(timeout=QUIT_TIMEOUT_S)
    except (aiosmtplib.SMTPException, OSError):
        pass  # closing anyway
    finally:
        smtp.close()

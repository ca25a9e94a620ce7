"""Browser sessions of a panel on a secure bus: one SDK `Client` per logged-in browser.

On a bus that wants credentials the panel has no NATS identity of its own. A browser logs in
with its NATS user and password, the panel connects a `Client` as that user, and every page
that browser asks for goes through that connection: NATS permissions, not panel code, decide
what it may see and do (alice's connection cannot read bob's records or events at all).

A session is a random id in an HttpOnly, SameSite=Strict cookie, mapped to its client in this
process's memory only (a restart logs everyone out; no secret is kept once connected). Bounded:
at most `cap` sessions, one closed after `idle` seconds without a request or an open live page,
all closed at stop. Logins in flight are bounded too, since each one opens a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..client import Client
from ..config import WEB_SESSION_IDLE, WEB_SESSIONS_MAX, Credentials
from ..subjects import check_token
from .live import stop as stop_task

COOKIE = "kodo_session"
ID_BYTES = 32
LOGINS_AT_ONCE = 4
"""Connections being opened for logins at once at most (a burst of wrong passwords waits)."""
LOGIN_RETRY = 0
"""Connection attempts after the first for a login: a wrong password is told at once."""


@dataclass(eq=False)
class Session:
    """One browser's connection, as its NATS user."""

    id: str
    client: Client
    used: float = field(default_factory=time.monotonic)
    streams: int = 0
    """Live pages open on this session: while one is, it is not idle."""

    @property
    def user(self) -> str:
        return self.client.user

    def touch(self) -> None:
        self.used = time.monotonic()

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Held while a live page reads through this session (it is not idle meanwhile)."""
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1
            self.touch()


class Sessions:
    """The logged-in browsers of one panel: open on login, reaped when idle, closed at stop."""

    def __init__(
        self,
        urls: Sequence[str],
        tls: Credentials | None = None,
        *,
        cap: int = WEB_SESSIONS_MAX,
        idle: float = WEB_SESSION_IDLE,
        timeout: float = 5.0,
    ) -> None:
        self.urls = list(urls)
        self.tls = tls or Credentials()
        """TLS options of the panel's command line, given to every session's connection."""
        self.cap = cap
        self.idle = idle
        self.timeout = timeout
        self._open: dict[str, Session] = {}
        self._logins = asyncio.Semaphore(LOGINS_AT_ONCE)
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, session_id: object) -> bool:
        """Whether a session is open (without touching it, unlike `get`)."""
        return session_id in self._open

    def get(self, session_id: str | None) -> Session | None:
        """The session of this cookie value (touched), or None."""
        found = self._open.get(session_id) if session_id else None
        if found is not None:
            found.touch()
        return found

    def full(self) -> bool:
        return len(self._open) >= self.cap

    async def login(self, user: str, password: str) -> Session | None:
        """A new session connected as `user`; None when the cap is reached. Raises the SDK's
        `AuthError` when NATS refuses the credentials, `ConnectError` when it is unreachable,
        `ConfigError` for a user name that cannot be a subject token."""
        if self.full():
            return None
        check_token(user, "user")  # an empty name would fall back to KODO_USER in `Client`
        credentials = self.tls.model_copy(
            update={"user": user, "password": password, "creds": None, "nkey": None}
        )
        client = Client(
            self.urls, user=user, credentials=credentials, retry=LOGIN_RETRY, timeout=self.timeout
        )
        async with self._logins:
            await client.connect()
        if self.full():  # others logged in while this one connected
            await client.close()
            return None
        session = Session(secrets.token_urlsafe(ID_BYTES), client)
        self._open[session.id] = session
        return session

    async def logout(self, session_id: str | None) -> None:
        session = self._open.pop(session_id, None) if session_id else None
        if session is not None:
            await session.client.close()

    async def reap(self) -> int:
        """Close the sessions idle for longer than `idle` (none with a live page open)."""
        now = time.monotonic()
        stale = [s for s in self._open.values() if not s.streams and now - s.used > self.idle]
        for session in stale:
            self._open.pop(session.id, None)
        for session in stale:
            await session.client.close()
        return len(stale)

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="web-session-reaper")

    async def _reap_forever(self) -> None:
        every = max(0.05, min(self.idle / 4, 30.0))
        while True:
            await asyncio.sleep(every)
            await self.reap()

    async def stop(self) -> None:
        """Stop reaping and close every session."""
        if self._reaper is not None:
            reaper, self._reaper = self._reaper, None
            await stop_task(reaper)
        sessions = list(self._open.values())
        self._open.clear()
        await asyncio.gather(*(s.client.close() for s in sessions))

"""Browser sessions of a panel on a secure bus: one SDK `Client` per logged-in browser.

On a bus that wants credentials the panel has no NATS identity of its own. A browser logs in
with its NATS user and its password, nkey seed or creds file, the panel connects a `Client` as
that user, and every page that browser asks for goes through that connection: NATS
permissions, not panel code, decide what it may see and do (alice's connection cannot read
bob's records or events at all).

A session is a random id in an HttpOnly, SameSite=Strict cookie, mapped to its client in this
process's memory only (a restart logs everyone out). The secret stays on the server, inside the
session's connection (nats-py presents it again, or signs the server's nonce with the seed, at
each reconnect): never in the cookie, never written to a file, never logged. Bounded:
at most `cap` sessions, one closed after `idle` seconds without a request or an open live page,
all closed at stop. Logins in flight are bounded too, since each one opens a connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from nats.aio.client import RawCredentials

from .. import bus
from ..client import Client
from ..config import WEB_SESSION_IDLE, WEB_SESSIONS_MAX, Credentials
from ..errors import ConfigError
from ..subjects import check_token
from .live import stop as stop_task

COOKIE = "kodo_session"
ID_BYTES = 32
LOGINS_AT_ONCE = 4
"""Connections being opened for logins at once at most (a burst of wrong passwords waits)."""
SEED_CHARS = 58
"""Characters of an nkey seed (`SU...`, base32)."""
LOGIN_RETRY = 0
"""Connection attempts after the first for a login: a wrong password is told at once."""


@dataclass(frozen=True, repr=False)
class Secret:
    """An nkey seed or a creds file's text, held in this process's memory only: given to
    nats-py as a string (`nkeys_seed_str`, `RawCredentials`), so it is never written to a file,
    and never shown by `repr` (a log line or a traceback prints `Secret(nkey)`)."""

    kind: Literal["nkey", "creds"]
    text: str

    def __repr__(self) -> str:
        return f"Secret({self.kind})"

    @classmethod
    def of(cls, kind: str, text: str) -> Secret:
        """Checked for its form (not its validity: NATS says that)."""
        text = text.strip()
        if kind == "nkey":
            _check_seed(text)
            return cls("nkey", text)
        if kind == "creds":
            seeds = [w for w in text.split() if w.startswith("SU")]
            if "BEGIN NATS USER JWT" not in text or len(seeds) != 1:
                raise ConfigError("a creds file holds a user JWT and its nkey seed (nsc makes one)")
            _check_seed(seeds[0])
            return cls("creds", text + "\n")
        raise ConfigError(f"no such login: {kind!r}")

    def options(self) -> dict[str, object]:
        """nats-py's connect options for this secret."""
        if self.kind == "nkey":
            return {"nkeys_seed_str": self.text}
        return {"user_credentials": RawCredentials(self.text)}


def _check_seed(seed: str) -> None:
    """A seed nats-py can sign with (else its error would come out of the connect untyped)."""
    if not (seed.startswith("SU") and seed.isalnum() and len(seed) == SEED_CHARS):
        raise ConfigError("an nkey seed is one line of 58 characters starting with SU")
    import nkeys  # type: ignore[import-untyped,unused-ignore]  # an extra (ImportError: told)

    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
        if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:  # (nkeys.from_seed does not check it)
            raise ValueError("checksum")
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception:
        raise ConfigError("this is not a valid nkey seed (its checksum does not match)") from None


class _SessionClient(Client):
    """A `Client` that connects with an in-memory secret (the SDK's own `Credentials` take the
    paths of files, which a browser's login has none of)."""

    def __init__(self, *args: Any, secret: Secret | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._secret = secret

    async def connect(self) -> Self:
        if self._secret is None:
            return await super().connect()
        if self._nc is None:
            self._nc = await bus.connect(self._settings, **self._secret.options())
            self._js = bus.jetstream(self._nc)
        return self


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

    async def login(
        self, user: str, password: str = "", secret: Secret | None = None
    ) -> Session | None:
        """A new session connected as `user` (with its password, or `secret`: an nkey seed or
        a creds file's text); None when the cap is reached. Raises the SDK's `AuthError` when
        NATS refuses the credentials, `ConnectError` when it is unreachable, `ConfigError` for
        a user name that cannot be a subject token or a secret that is not one."""
        if self.full():
            return None
        check_token(user, "user")  # an empty name would fall back to KODO_USER in `Client`
        update: dict[str, object] = {"user": None, "password": None, "creds": None, "nkey": None}
        if secret is None:
            update |= {"user": user, "password": password}
        credentials = self.tls.model_copy(update=update)
        client = _SessionClient(
            self.urls,
            user=user,
            credentials=credentials,
            retry=LOGIN_RETRY,
            timeout=self.timeout,
            secret=secret,
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

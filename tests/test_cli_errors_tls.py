"""TLS from the command line (issue 17, finding 2): without the CA, one line naming the cause and
the option to give, within the connect timeout (it hung 30+ s with no message); with the CA, no
asyncio `eof_received()` warning on any command (every TLS command printed one).

The CA and the server's certificate are made by `openssl` in the test, for this test only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is needed to make a test CA")
WITHIN = 10.0
"""Seconds a refused TLS connection may take from start to exit (interpreter start included)."""


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(where: Path) -> None:
    """ca.pem (a throwaway CA) and server.pem/server.key, signed by it for 127.0.0.1."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=kodo test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=where)  # fmt: skip
    openssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr",
            cwd=where)  # fmt: skip
    (where / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.pem",
            cwd=where)  # fmt: skip


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server that requires TLS, with the repository's config; and its CA file."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    conf = tmp_path / "tls.conf"
    tls = f'tls {{ cert_file: "{certs / "server.pem"}", key_file: "{certs / "server.key"}" }}'
    # The repository's config; its ports do not count: NatsServer passes free ones.
    conf.write_text((REPO / "nats-server.conf").read_text() + tls + "\n")
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=conf)
    ).start()
    try:
        yield server, certs / "ca.pem"
    finally:
        server.stop()


def run(procs: Processes, *args: str) -> tuple[int, str, float]:
    """`kodo-bus ARGS`: exit code, everything it printed, seconds it took."""
    started = time.monotonic()
    proc = procs.start(*args, env={"COLUMNS": "200"})
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"kodo-bus {' '.join(args)} still ran after 60 s:\n{out}") from None
    return proc.returncode, out, time.monotonic() - started


@pytest.mark.parametrize("scheme", ["tls", "nats"])
@pytest.mark.parametrize("command", [("nodes",), ("executions",), ("events", "5e1f0000")])
def test_tls_without_the_ca_is_one_line_naming_the_option(
    tls_server: tuple[NatsServer, Path], procs: Processes, scheme: str, command: tuple[str, ...]
) -> None:
    server, _ = tls_server
    url = f"{scheme}://127.0.0.1:{server.port}"
    code, out, took = run(procs, *command, "--nats", url)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1, out
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert "TLS certificate is not trusted" in lines[0] and "--tls-ca" in lines[0], out
    assert "Traceback" not in out and "eof_received" not in out, out
    assert took < WITHIN, f"took {took:.1f} s:\n{out}"


def test_tls_with_a_ca_that_did_not_sign_it_says_so(
    tls_server: tuple[NatsServer, Path], procs: Processes, tmp_path: Path
) -> None:
    server, _ = tls_server
    other = tmp_path / "other"
    other.mkdir()
    make_certificates(other)  # another CA: it signed nothing this server shows
    url = f"tls://127.0.0.1:{server.port}"
    code, out, took = run(procs, "executions", "--nats", url, "--tls-ca", str(other / "ca.pem"))
    assert code == 1, out
    assert f"is {other / 'ca.pem'} the CA that signed" in out, out
    assert len(out.strip().splitlines()) == 1 and took < WITHIN, out


@pytest.mark.parametrize(
    "command",
    [("executions",), ("executions", "--json"), ("nodes", "--via", "nobody"), ("logs",)],
)
def test_tls_with_the_ca_prints_no_asyncio_warning(
    tls_server: tuple[NatsServer, Path], procs: Processes, command: tuple[str, ...]
) -> None:
    server, ca = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    code, out, _ = run(procs, *command, "--nats", url, "--tls-ca", str(ca))
    assert "eof_received" not in out and "Traceback" not in out, out
    if command[0] != "nodes":  # nobody answers `--via nobody`: its error is the point there
        assert code == 0, out

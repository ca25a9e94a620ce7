"""deploy/systemd: the units parse, follow the checklist, and their commands really run.

systemd does not run in CI, so this runs what can be run honestly: the example files are
"installed" under a temporary root (the paths of the units mapped into it, ports moved to free
loopback ones, the venv's `kodo-bus` replaced by this interpreter's `python -m kodo_bus`), and each
unit's ExecStart runs as a real subprocess with the unit's Environment=, EnvironmentFile= and
WorkingDirectory=. The server must accept connections with JetStream on and reload on the unit's
ExecReload signal; the registry and the node must become ready against it (the node without
starting Ray); then each stops on the unit's KillSignal within its TimeoutStopSec, exit code 0.
A slow test launches a flow, so the node starts its local Ray inside the "unit", and checks that
the node's stop takes Ray down. `systemd-analyze verify`/`security` and `systemd-sysusers` run
only where they are installed. Every process is stopped by its PID, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.client import Client as NATS

from kodo_bus import Client
from kodo_bus.server import find_binary

from .conftest import KODO_BUS, REPO, Processes, free_ports
from .test_federation import eventually, flows, info

DEPLOY = REPO / "deploy" / "systemd"
SERVER, REGISTRY, NODE = (
    "kodo-bus-server.service",
    "kodo-bus-registry.service",
    "kodo-bus-node@.service",
)
INSTANCE = "node-1"  # the example node: deploy/systemd/nodes/node-1.{yaml,env}
VENV_BIN = "/opt/kodo-bus/.venv/bin/"
USER = "kodo-bus"

Unit = dict[str, dict[str, list[str]]]


# -- reading units ---------------------------------------------------------------------------------
def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order (systemd keys may repeat; continuations joined)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert section is not None and sep, f"not a key=value line inside a section: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(name: str) -> Unit:
    return parse_unit((DEPLOY / name).read_text())


def one(unit: Unit, section: str, key: str) -> str:
    """A single-valued key: the last assignment wins, as in systemd."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for value in unit.get(section, {}).get(key, []) for w in value.split()]


def seconds(span: str) -> float:
    """A systemd time span ('90', '90s', '1min 30s') in seconds."""
    scale = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(n) * scale[u] for n, u in parts)


def expand(value: str, instance: str = INSTANCE, state: str = "/var/lib") -> str:
    """The specifiers the units use: %i (instance), %S (state root), %% (a percent sign)."""
    out = re.sub(r"%[iS%]", lambda m: {"%i": instance, "%S": state, "%%": "%"}[m[0]], value)
    assert "%" not in out.replace("%%", ""), f"unexpected specifier in {value!r}"
    return out


def exec_start(unit: Unit) -> list[str]:
    return shlex.split(expand(one(unit, "Service", "ExecStart")))


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# -- the checklist ---------------------------------------------------------------------------------
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("name", [SERVER, REGISTRY, NODE])
def test_unit_follows_the_checklist(name: str) -> None:
    unit = load(name)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Unit", "Description")
    assert {"network-online.target"} <= set(words(unit, "Unit", "After"))
    assert {"network-online.target"} <= set(words(unit, "Unit", "Wants"))
    if name != SERVER:  # ordered after the server when both run on one host
        assert SERVER in words(unit, "Unit", "After")
        assert SERVER in words(unit, "Unit", "Wants")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"

    assert one(unit, "Service", "Type") in {"simple", "exec"}  # neither program speaks sd_notify
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > 0
    assert one(unit, "Service", "User") == USER
    assert one(unit, "Service", "Group") == USER
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key

    argv = exec_start(unit)
    assert argv[0].startswith(VENV_BIN), argv  # absolute, no ExecStart prefixes (-@+!:)
    if name == SERVER:
        assert argv[0] == VENV_BIN + "nats-server"
        store = option(argv, "-sd")
        assert "-js" in argv
        assert store in words(unit, "Service", "ReadWritePaths")
        assert store == "/var/lib/" + one(unit, "Service", "StateDirectory")
        assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    else:
        assert argv[:2] == [VENV_BIN + "kodo-bus", "run"]
        assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # a bad config
    if name == NODE:
        assert option(argv, "--id") == INSTANCE
        grace = float(option(argv, "--grace"))
        # after the grace: cancel (<= 10 s), stop the actors (<= 5 s each), drain NATS
        assert seconds(one(unit, "Service", "TimeoutStopSec")) >= grace + 45
        assert one(unit, "Service", "KillMode") == "mixed"  # SIGTERM to the node, not to Ray
        assert one(unit, "Service", "WorkingDirectory") == "/opt/kodo-bus/flows"
        state = one(unit, "Service", "StateDirectory")
        assert f"HOME=%S/{state}" in unit["Service"]["Environment"]  # a writable home


@pytest.mark.parametrize("name", [SERVER, REGISTRY, NODE])
def test_every_file_a_unit_names_has_an_example(name: str) -> None:
    unit = load(name)
    named = [a for a in exec_start(unit) if a.startswith("/etc/kodo-bus/")]
    named += [expand(v).lstrip("-") for v in unit["Service"].get("EnvironmentFile", [])]
    assert named
    for path in named:
        assert (DEPLOY / path.removeprefix("/etc/kodo-bus/")).is_file(), path


# -- the commands, for real ------------------------------------------------------------------------
class Host:
    """The example files installed under `root` (as the README installs them on a host)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.http_port = free_ports(2)
        self.paths = {
            VENV_BIN + "nats-server": str(find_binary()),
            VENV_BIN + "kodo-bus": shlex.join(KODO_BUS),
            "/opt/kodo-bus/flows": str(root / "opt/flows"),
            "/etc/kodo-bus": str(root / "etc"),
            "/var/lib": str(root / "var/lib"),
        }

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def localize(self, text: str) -> str:
        for path, here in self.paths.items():
            text = text.replace(path, here)
        text = re.sub(r"\b4222\b", str(self.port), text)
        return re.sub(r"\b8222\b", str(self.http_port), text)

    def install(self) -> None:
        for src, dst in [
            ("nats-server.conf", "etc/nats-server.conf"),
            ("registry.yaml", "etc/registry.yaml"),
            ("registry.env", "etc/registry.env"),
            ("nodes/node-1.yaml", "etc/nodes/node-1.yaml"),
            ("nodes/node-1.env", "etc/nodes/node-1.env"),
        ]:
            target = self.root / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.localize((DEPLOY / src).read_text()))
        (self.root / "opt/flows").mkdir(parents=True)
        shutil.copy(REPO / "examples" / "hello.py", self.root / "opt/flows/hello.py")

    def unit(self, name: str) -> Unit:
        """The unit as this host sees it; creates its StateDirectory= like systemd does."""
        unit = parse_unit(self.localize((DEPLOY / name).read_text()))
        for state in words(unit, "Service", "StateDirectory"):
            (self.root / "var/lib" / expand(state)).mkdir(parents=True, exist_ok=True)
        return unit

    def environment(self, unit: Unit) -> dict[str, str]:
        """Environment= and EnvironmentFile= of the unit (a missing '-' file is skipped)."""
        env: dict[str, str] = {}
        for value in unit["Service"].get("Environment", []):
            for assignment in shlex.split(expand(value, state=str(self.root / "var/lib"))):
                key, _, val = assignment.partition("=")
                env[key] = val
        for value in unit["Service"].get("EnvironmentFile", []):
            path = Path(expand(value).lstrip("-"))
            if not path.is_file():
                assert value.startswith("-"), f"{path} is required by the unit"
                continue
            for line in path.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, val = line.partition("=")
                    env[key.strip()] = val.strip()
        return env

    def cwd(self, unit: Unit) -> Path:
        work = unit["Service"].get("WorkingDirectory")
        return Path(work[-1]) if work else self.root  # systemd's default is "/"


def start(procs: Processes, host: Host, unit: Unit) -> subprocess.Popen[str]:
    """The unit's ExecStart as a subprocess; stopped by its PID by `procs` at the end."""
    argv = shlex.split(expand(one(unit, "Service", "ExecStart")))
    env = host.environment(unit)
    if argv[: len(KODO_BUS)] == KODO_BUS:
        return procs.start(*argv[len(KODO_BUS) :], env=env, cwd=host.cwd(unit))
    return procs.spawn(argv, env=env, cwd=host.cwd(unit))


def stop_like_systemd(
    procs: Processes, unit: Unit, proc: subprocess.Popen[str]
) -> tuple[float, str]:
    """KillSignal to the main PID; it must exit 0 within TimeoutStopSec. Seconds and output
    (what the journal would hold: stdout and stderr)."""
    sig = getattr(signal, one(unit, "Service", "KillSignal"))
    limit = seconds(one(unit, "Service", "TimeoutStopSec"))
    began = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {limit:g} s after {sig.name}: systemd would SIGKILL it")
    took = time.monotonic() - began
    out = proc.stdout.read() if proc.stdout else ""
    procs.close(proc)
    assert code == 0, out
    assert "Traceback" not in out, out
    return took, out


def children(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_node_like_systemd(
    procs: Processes, unit: Unit, node: subprocess.Popen[str]
) -> tuple[float, str, list[str], list[str]]:
    """KillMode=mixed: KillSignal to the node alone; once it has exited, systemd SIGKILLs what
    is left of the unit. Seconds, output, the node's processes then, those that needed SIGKILL."""
    assert one(unit, "Service", "KillMode") == "mixed"
    tree = children(node)
    name = {p.pid: p.name() for p in tree}
    try:
        took, out = stop_like_systemd(procs, unit, node)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        left = [p for p in tree if alive(p)]
        for process in left:  # by PID, as systemd's final SIGKILL of the unit would
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    return took, out, sorted(name.values()), sorted(name[p.pid] for p in left)


@contextlib.contextmanager
def log_on_failure(procs: Processes, proc: subprocess.Popen[str]) -> Iterator[None]:
    """A failure inside stops `proc` (and what it started, by PID) and shows its log."""
    try:
        yield
    except BaseException as exc:
        tree = children(proc) if proc.poll() is None else []
        procs.stop(proc)
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        out = proc.stdout.read() if proc.stdout else ""
        raise AssertionError(f"{exc!r}\nlog of PID {proc.pid}:\n{out[-8000:]}") from exc


async def connect_when_listening(host: Host, server: subprocess.Popen[str]) -> NATS:
    async def quiet(exc: Exception) -> None:
        pass

    deadline = time.monotonic() + 15
    while True:
        try:
            return await nats.connect(
                host.url, connect_timeout=1, max_reconnect_attempts=0, error_cb=quiet
            )
        except Exception:  # not listening yet
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "the server unit's nats-server never listened"
            await asyncio.sleep(0.1)


async def reload_like_systemd(unit: Unit, server: subprocess.Popen[str]) -> None:
    """ExecReload with $MAINPID (or its signal, where /bin/kill is missing)."""
    reload = shlex.split(one(unit, "Service", "ExecReload"))
    assert reload == ["/bin/kill", "-HUP", "$MAINPID"]
    if shutil.which(reload[0]):
        kill = await asyncio.create_subprocess_exec(*reload[:2], str(server.pid))
        assert await asyncio.wait_for(kill.wait(), 10) == 0
    else:
        server.send_signal(signal.SIGHUP)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """The example files installed under tmp_path; no KODO_* variable leaks in from the test
    run (systemd starts units with their own environment only)."""
    for key in [k for k in os.environ if k.startswith("KODO_")]:
        monkeypatch.delenv(key)
    installed = Host(tmp_path)
    installed.install()
    return installed


async def test_units_start_become_ready_and_stop_on_their_kill_signal(
    procs: Processes, host: Host
) -> None:
    server_unit, registry_unit, node_unit = (host.unit(n) for n in (SERVER, REGISTRY, NODE))
    registry_id = "registry-1"  # deploy/systemd/registry.yaml

    server = start(procs, host, server_unit)
    nc = await connect_when_listening(host, server)
    try:
        assert (await nc.jetstream().account_info()).limits is not None  # -js is on
        registry = start(procs, host, registry_unit)
        node = start(procs, host, node_unit)

        reg = await eventually(lambda: info(nc, registry_id), lambda i: i.flows == 1, 30)
        assert (reg.role, reg.feed, reg.organization) == ("registry", True, "Example Org")
        me = await eventually(lambda: info(nc, INSTANCE), lambda i: True, 30)
        assert (me.role, me.organization) == ("node", "Example Org")
        assert [f.name for f in (await flows(nc, INSTANCE)).items] == ["hello"]
        # ready without Ray (it starts at the first launch); each unit is a single process,
        # so the KillSignal sent to its main PID reaches all of it
        for proc in (server, registry, node):
            assert children(proc) == [], [p.name() for p in children(proc)]
        assert (host.root / "var/lib/kodo-bus/nats/jetstream").is_dir()  # the store of -sd

        # systemctl reload: the server re-reads its config and keeps serving
        await reload_like_systemd(server_unit, server)
        await eventually(lambda: info(nc, registry_id), lambda i: True)
        assert server.poll() is None
    finally:
        await nc.drain()

    # reverse start order, as systemd stops them
    took_node, out = stop_like_systemd(procs, node_unit, node)
    assert f"node {INSTANCE} ready (1 flows) on {host.url}" in out, out
    took_registry, out = stop_like_systemd(procs, registry_unit, registry)
    assert f"registry {registry_id} ready" in out, out
    took_server, out = stop_like_systemd(procs, server_unit, server)
    assert "Reloaded server configuration" in out, out
    print(
        f"\nstopped in: node {took_node:.1f} s, registry {took_registry:.1f} s, "
        f"server {took_server:.1f} s"
    )


@pytest.mark.slow
async def test_node_unit_runs_a_flow_on_its_local_ray_and_takes_it_down(
    procs: Processes, host: Host
) -> None:
    """No ray_address: the first launch starts a local Ray inside the node's unit and runs the
    flow from the unit's WorkingDirectory. On stop (KillMode=mixed) the node's own exit must
    take Ray's core down; what is left, systemd's final SIGKILL removes (done here by PID)."""
    server_unit, node_unit = host.unit(SERVER), host.unit(NODE)
    server = start(procs, host, server_unit)
    nc = await connect_when_listening(host, server)
    try:
        node = start(procs, host, node_unit)
        await eventually(lambda: info(nc, INSTANCE), lambda i: True, 30)
        with log_on_failure(procs, node):
            async with Client(host.url) as kb:
                hello = await kb.flow(f"{INSTANCE}/hello", via=INSTANCE)
                execution = await hello.launch({"name": "systemd"})
                assert await execution.result(timeout=120) == "Hello, **systemd**!"
    finally:
        await nc.drain()

    took, out, tree, killed = stop_node_like_systemd(procs, node_unit, node)
    assert "started a local Ray for this node" in out, out
    assert {"raylet", "gcs_server"} <= set(tree), tree
    assert not {"raylet", "gcs_server"} & set(killed), killed
    stop_like_systemd(procs, server_unit, server)
    print(f"\nnode with Ray stopped in {took:.1f} s; left for systemd's SIGKILL: {killed}")


# -- systemd's own tools, where installed ----------------------------------------------------------
def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here; the parse checks above still ran")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks keys, values and that ExecStart is executable: the units are verified with
    the venv's binaries mapped to this interpreter's (nothing else is changed)."""
    paths = []
    for name in (SERVER, REGISTRY, NODE):
        path = tmp_path / name
        text = (DEPLOY / name).read_text()
        path.write_text(
            text.replace(VENV_BIN + "nats-server", str(find_binary())).replace(
                VENV_BIN + "kodo-bus", f"{sys.executable} -m kodo_bus"
            )
        )
        paths.append(str(path))
    result = analyze("verify", *paths)
    assert result.returncode == 0, result.stdout + result.stderr
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "kodo-bus" in line
    ]
    assert complaints == []


@pytest.mark.parametrize(("name", "most"), [(SERVER, 2.0), (REGISTRY, 2.0), (NODE, 5.0)])
def test_systemd_analyze_security(name: str, most: float) -> None:
    """The exposure score systemd computes from the hardening keys (lower is better)."""
    result = analyze("security", "--offline=true", str(DEPLOY / name))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= most


def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed here")
    (tmp_path / "etc").mkdir()
    conf = DEPLOY / "kodo-bus.sysusers.conf"
    result = subprocess.run(
        [tool, f"--root={tmp_path}", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    entry = next(line for line in passwd if line.startswith(USER + ":"))
    assert entry.split(":")[5:] == ["/var/lib/kodo-bus", "/usr/sbin/nologin"]

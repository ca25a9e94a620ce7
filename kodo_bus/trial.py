"""`kodo-bus try`: one execution of one flow, on a bus that lives for that execution alone.

Why a whole bus and not a plain call of the function: a flow's events are numbered and published
by its worker into JetStream, and the runner hands the job to that worker over NATS, so the
events `try` shows are the ones `launch` shows only if the same parts make them. So a trial is a
nats-server of its own (in a temporary directory, free loopback ports, no monitoring; it starts
and stops in about 10 ms: not worth a second path for events), a `Runner` serving the one flow
in this process, and a `Client` that launches and follows it. The worker is an `ExecActor` in
this process (`LocalPool`): Ray costs seconds to start, so it is started only for a flow that
uses Ray (`uses_ray`) or when asked (`ray=True`, a `ray_address`), and then runs the flow as a
node does. Everything it started is stopped at the end, by PID, also after an error or Ctrl-C;
`kodo-bus try` sweeps whatever is still below its process after that.

Targets are resolved before any of it starts, so a bad one costs nothing: `module:function`,
`path/to/file.py:function`, or a flow name with a node config. Objects and files other than
`@flow` functions go through `OBJECT_RESOLVERS` and `FILE_RESOLVERS`: the place where CrewAI
crews (and crew YAML files) come in.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import secrets
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

from . import crew
from .bus import connect
from .client import Client
from .config import Credentials, ServerSettings, ServiceSettings
from .errors import ConfigError, KodoError
from .flow_ref import Flow
from .flows import FlowSpec, load_flows, spec_of
from .local_pool import LocalPool
from .models import FlowItem
from .runner import Runner
from .server import PACKAGED_CONFIG, NatsServer

NODE = "try"
"""Node id of a trial without a node config (events carry it, as `try/hello`)."""
GRACE = 2.0
"""Seconds an execution still running at the trial's end (Ctrl-C) gets before it is cancelled."""
CREWAI_NEEDED = crew.CREWAI_NEEDED

ObjectResolver = Callable[[Any, str], FlowSpec | None]
"""An imported object and its `module:name` → the flow it stands for (None: not its kind)."""
FileResolver = Callable[[Path], FlowSpec]
"""A file target without `:name` (a crew YAML file) → its flow."""


def _flow_function(obj: Any, entry: str) -> FlowSpec | None:
    """A `@flow` function (or a FlowKit `Node` with its main registered)."""
    return spec_of(obj)


OBJECT_RESOLVERS: list[ObjectResolver] = [_flow_function, crew.object_spec]
"""Tried in order on the object a `module:name` target names; the first spec wins."""
FILE_RESOLVERS: dict[str, FileResolver] = {suffix: crew.file_spec for suffix in crew.SUFFIXES}
"""By suffix, for a target that is a file without `:name`."""


@dataclass(frozen=True)
class Target:
    """A resolved target: the flow, and the node settings it runs with."""

    spec: FlowSpec
    settings: ServiceSettings

    @property
    def source(self) -> Path | None:
        """The file the flow's function is written in (for `file:line` in errors)."""
        try:
            found = inspect.getsourcefile(inspect.unwrap(self.spec.func))
        except TypeError:  # a builtin or a C callable: no file
            return None
        return Path(found).resolve() if found else None

    @property
    def uses_ray(self) -> bool:
        """Whether the flow's module refers to Ray (`uses_ray`): then it runs on Ray."""
        module = sys.modules.get(getattr(inspect.unwrap(self.spec.func), "__module__", ""))
        return module is not None and uses_ray(module)


def uses_ray(module: ModuleType) -> bool:
    """A global of the module is Ray or comes from it (`import ray`, `from ray import remote`,
    a `@ray.remote` function or actor class): the flow calls Ray, which in a Ray worker is
    connected and anywhere else would start a Ray nobody stops. A flow reaching Ray only through
    another module's helpers is not seen: `kodo-bus try --ray` is for it."""
    for value in list(vars(module).values()):
        if isinstance(value, ModuleType):
            origin = value.__name__
        else:
            try:
                origin = getattr(value, "__module__", None) or type(value).__module__
            except Exception:  # a lazy proxy that fails on attribute access: not Ray's
                continue
        if isinstance(origin, str) and (origin == "ray" or origin.startswith("ray.")):
            return True
    return False


def resolve(target: str, config: Path | None = None) -> Target:
    """The flow `target` names; a ConfigError says what was not found (module, file,
    attribute, flow) in one line."""
    if config is not None:
        return _from_config(target, config)
    settings = ServiceSettings(id=NODE)
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        path = Path(target)
        if path.suffix in FILE_RESOLVERS and path.is_file():
            return Target(FILE_RESOLVERS[path.suffix](path), settings)
        raise ConfigError(
            f"{target!r}: give module:function, path/to/file.py:function, or a flow name "
            "with --config node.yaml"
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(Path(where))
    else:
        importable(Path.cwd())
        module = _import_module(where)
    obj = _attribute(module, attr)
    entry = f"{module.__name__}:{attr}"
    for resolver in OBJECT_RESOLVERS:
        spec = resolver(obj, entry)
        if spec is not None:
            return Target(spec, settings)
    what = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
    raise ConfigError(f"{target} is not a flow (it is {what}): mark a function with @flow")


def _from_config(name: str, config: Path) -> Target:
    """A flow of a node config, run with that node's settings (its id, limits)."""
    settings = ServiceSettings.build(config)
    importable(Path.cwd(), config.resolve().parent)  # as `kodo-bus run` finds them
    try:
        specs = load_flows(settings.flows)
    except KodoError:
        raise
    except Exception as exc:  # a flow module that fails at import: where
        raise ConfigError(f"{config}: importing its flows failed: {located(exc)}") from None
    found = {spec.name: spec for spec in specs}
    if name not in found:
        names = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"{config} has no flow {name!r} (its flows: {names})")
    return Target(found[name], settings)


def importable(*places: Path) -> None:
    """Put directories first on `sys.path` (the Ray workers get this `sys.path` too)."""
    for place in reversed(places):
        text = str(place.resolve())
        if text not in sys.path:
            sys.path.insert(0, text)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                f"no module {name!r} (looked in {Path.cwd()} and the installed packages)"
            ) from None
        raise ConfigError(f"importing {name!r} failed: {located(exc)}") from None
    except Exception as exc:  # a SyntaxError, or anything the module raised at import
        raise ConfigError(f"importing {name!r} failed: {located(exc)}") from None


def _import_file(path: Path) -> ModuleType:
    """Import a file under the module name its packages give it (`examples/hello.py` in a
    package `examples` is `examples.hello`), so the Ray workers import it by the same name."""
    if not path.is_file():
        raise ConfigError(f"no file {path}")
    path = path.resolve()
    if path.suffix != ".py":
        raise ConfigError(f"{path} is not a Python file (.py)")
    parts = [path.stem]
    root = path.parent
    while (root / "__init__.py").is_file() and root.parent != root:
        parts.insert(0, root.name)
        root = root.parent
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{path} cannot be imported as {'.'.join(parts)!r}: rename it")
    name = ".".join(parts)
    importable(root)
    module = _import_module(name)
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != path:
        raise ConfigError(
            f"{path} imports as module {name!r}, but that name is taken by "
            f"{loaded or 'a built-in module'}: rename the file"
        )
    return module


def _attribute(module: ModuleType, attr: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            flows = sorted(s.name for o in vars(module).values() if (s := spec_of(o)) is not None)
            known = f"its flows: {', '.join(flows)}" if flows else "it declares no @flow"
            where = _shown(Path(module.__file__)) if module.__file__ else module.__name__
            raise ConfigError(f"module {module.__name__} ({where}) has no {attr!r} ({known})")
        obj = getattr(obj, part)
    return obj


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def located(exc: BaseException) -> str:
    """`Type: message (file:line)` of an exception raised here (at import)."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{_shown(Path(exc.filename))}:{exc.lineno}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename[:1] != "<"]
        if frames:
            where = f"{_shown(Path(frames[-1].filename))}:{frames[-1].lineno}"
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} ({where})" if where else text


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$', re.M)


def flow_line(traceback_text: str, source: Path | None) -> str | None:
    """`file:line, in function` of the deepest frame in the flow's own file, read from the
    traceback the worker stored (the exception itself stayed in the Ray worker)."""
    if source is None:
        return None
    ours = [m for m in _FRAME.finditer(traceback_text) if Path(m["file"]).resolve() == source]
    if not ours:
        return None
    last = ours[-1]
    return f"{_shown(source)}:{last['line']}, in {last['func'].strip()}"


class Trial:
    """The bus of one trial: `async with Trial(target) as trial: await trial.flow.launch(...)`.

    `ray`: run the flow on Ray (True), in this process (False), or on Ray only if the flow uses
    it or `ray_address` is given (None). `ray_address`: a running Ray on this machine (its
    workers must reach the trial's loopback server); without it a local one is started at the
    launch, as a node does, and stopped at the end.
    """

    def __init__(
        self, target: Target, *, ray_address: str | None = None, ray: bool | None = None
    ) -> None:
        self.target = target
        self._ray_address = ray_address
        self.on_ray = ray if ray is not None else bool(ray_address) or target.uses_ray
        """Whether the flow runs on Ray (else on an in-process worker)."""
        self._stack = contextlib.AsyncExitStack()
        self.server: NatsServer | None = None
        self.runner: Runner | None = None
        self.client: Client | None = None
        self._flow: Flow | None = None

    @property
    def flow(self) -> Flow:
        """The flow as `kodo-bus launch` would find it on a bus (only while the trial runs)."""
        if self._flow is None:
            raise KodoError("the trial is not running: use 'async with Trial(target)'")
        return self._flow

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._flow = None
        await self._stack.aclose()  # in reverse: client, runner (and Ray), connection, server

    async def _start(self) -> None:
        stack = self._stack
        tmp = Path(tempfile.mkdtemp(prefix="kodo-try-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        server = self.server = NatsServer(
            ServerSettings(
                host="127.0.0.1", port=0, http_port=None, store=tmp / "nats", config=PACKAGED_CONFIG
            )
        )
        await stack.enter_async_context(server)
        settings = self.target.settings.model_copy(
            update={
                "nats": [server.url],
                "role": "node",
                "retry": 0,
                "credentials": Credentials(),  # the trial's server has no users
                "ray_address": self._ray_address,
                "max_running": 1,
                "actors": 1,
                "replicas": 1,
                "grace": GRACE,
            }
        )
        nc = await connect(settings.connect_settings())
        stack.push_async_callback(nc.close)
        spec = self.target.spec
        local = None if self.on_ray else LocalPool(nc, settings.id, settings.connect_settings(), 1)
        instance = secrets.token_hex(4)
        runner = self.runner = Runner(nc, settings, [spec], instance=instance, pool=local)
        await runner.start()
        stack.push_async_callback(runner.stop)
        client = self.client = Client(server.url, retry=0)
        await stack.enter_async_context(client)
        item = FlowItem(
            **spec.info().model_dump(), node=settings.id, organization=settings.organization
        )
        self._flow = Flow(client, item)

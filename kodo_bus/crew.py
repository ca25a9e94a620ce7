"""CrewAI crews and crewai Flows as kodo flows (the optional `kodo-bus[crewai]` extra).

A crew is served like any sync `@flow`: a node config's `entry: pkg.mod:crew` (a `Crew`, or a
crewai `Flow` class or instance) or `entry: path/to/crew.yaml` (crewai's own `agents.yaml` and
`tasks.yaml` shapes, inline or by path, with the LLM named there), and `kodo-bus try` takes the
same targets. Its inputs are the crew's `{placeholders}` (`Crew.fetch_inputs`), a crewai Flow's
are the fields of its state model; a pydantic model given alongside (`inputs:`) replaces them.

Why the entry is rewritten to `kodo_bus.crew:<kind>=<target>`: a Ray worker finds a flow's
function by importing its entry, and a crew is not a function. This module's `__getattr__`
turns such a name back into the flow function, built the same way in the worker as in the
node. Each execution kicks off a fresh copy (`Crew.copy()`, a new Flow instance): a crew keeps
its tasks' outputs and its agents' state between kickoffs, and two executions may overlap.

crewai's events become kodo events through a stream sink (`crewai.events.stream_context`),
which crewai calls synchronously in the thread that emits, scoped by a context variable to the
kickoff that installed it — so events keep crewai's order and concurrent executions in one
worker never see each other's (its global event bus runs handlers later, on a thread pool, out
of order). The sink is crewai's, not a public API: kept to one function, `_relay`.

Cancel: the worker raises into the flow's thread, which is inside `kickoff`; crewai runs an
agent's steps on threads of its own, so the sink also refuses every crewai event once the
execution has ended (`_Stopped`, not an `Exception`, so crewai's error handling lets it
through): the crew stops at its next step instead of running to its end unseen.

The tracer is typed `Any` here: this module sits with `flows.py` (which loads the crew kind of
a config entry) in the ground layer, below `tracer.py`. crewai is imported only when a crew is
resolved, so `kodo-bus try` and a node load this
module without it and say `CREWAI_NEEDED` when a target needs it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import ConfigError, problems_from
from .flows import SPEC_ATTR, FlowSpec, import_object, spec_of
from .subjects import check_token

log = logging.getLogger("kodo_bus.crew")

CREWAI_NEEDED = "crewai targets need `pip install kodo-bus[crewai]`"
OBJECT = "crewai_object="
"""Entry name prefix of a `module:attr` crew or crewai Flow."""
FILE = "crew_file="
"""Entry name prefix of a crew YAML file (an absolute path)."""
SUFFIXES = (".yaml", ".yml")
TOOL_OUTPUT_MAX = 4000
"""Characters of a tool's output an `action` event carries (the rest is cut, and said so)."""
_NAME = re.compile(r"\{(.+?)}")


def is_crewai(obj: Any) -> bool:
    """Whether `obj` (an instance or a class) comes from crewai: checked on class modules, so
    without importing crewai."""
    classes = obj.__mro__ if isinstance(obj, type) else type(obj).__mro__
    return any(c.__module__.partition(".")[0] == "crewai" for c in classes)


def object_spec(obj: Any, entry: str) -> FlowSpec | None:
    """The flow a crewai `Crew` or `Flow` stands for (`entry` is its `module:attr`); None when
    `obj` is not crewai's. A trial resolver and `flows.load_flows`' crew kind."""
    if not is_crewai(obj):
        return None
    return spec_of(flow_function(OBJECT, entry))


def entry_spec(entry: str) -> FlowSpec | None:
    """A config's `entry:` as a crew (a crew YAML file, or a crewai object's `module:attr`);
    None when it names anything else."""
    if entry.endswith(SUFFIXES):
        return spec_of_file(entry)
    return object_spec(import_object(entry), entry)


def file_spec(path: Path) -> FlowSpec:
    """The flow of a crew YAML file (a trial resolver and `entry: crew.yaml` in a config)."""
    return spec_of_file(str(path))


def spec_of_file(target: str) -> FlowSpec:
    """A crew YAML file named relative to the working directory or a directory on `sys.path`
    (where a node config's own directory is, as for its flow modules)."""
    path = Path(target)
    if not path.is_absolute():
        import sys

        places = [Path(p) if p else Path.cwd() for p in sys.path] + [Path.cwd()]
        path = next((p / target for p in places if (p / target).is_file()), path)
    if not path.is_file():
        raise ConfigError(f"no crew file {target}")
    spec = spec_of(flow_function(FILE, str(path.resolve())))
    assert spec is not None
    return spec


def entry(kind: str, target: str) -> str:
    """`kodo_bus.crew:<kind><target>`: `import_object` splits attributes on dots, so they are
    escaped (and `%`, to undo it exactly)."""
    return f"{__name__}:{kind}{target.replace('%', '%25').replace('.', '%2E')}"


def __getattr__(name: str) -> Any:
    """A Ray worker imports `kodo_bus.crew:<kind><target>`: the flow function of that crew."""
    for kind in (OBJECT, FILE):
        if name.startswith(kind):
            return flow_function(kind, unquote(name[len(kind) :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _crewai(what: str) -> Any:
    """crewai's top module, or the one-line ConfigError of a missing extra."""
    try:
        import crewai
        import crewai.events.stream_context
        import crewai.flow.flow
    except ImportError:
        raise ConfigError(f"{what}: {CREWAI_NEEDED}") from None
    return crewai


@dataclass(frozen=True)
class _Source:
    """What one flow kicks off: `make` builds a fresh crew (or crewai Flow) per execution."""

    name: str
    make: Callable[[], Any]
    inputs: type[BaseModel] | None
    summary: str
    description: str = ""
    tags: tuple[str, ...] = ()
    version: str = ""
    author: str = ""


@functools.lru_cache(maxsize=64)
def flow_function(kind: str, target: str) -> Callable[..., Any]:
    """The sync flow function of a crew target, with its `FlowSpec` attached (cached: the
    worker asks once per actor, the node once per config load)."""
    source = _object_source(target) if kind == OBJECT else _file_source(Path(target))

    def run(inputs: dict[str, Any], tracer: Any) -> Any:
        return kickoff(source.make(), inputs, tracer)

    run.__name__ = run.__qualname__ = source.name
    run.__doc__ = source.description or source.summary
    spec = FlowSpec(
        name=check_token(source.name, "flow name"),
        func=run,
        entry=entry(kind, target),
        inputs=source.inputs,
        summary=source.summary,
        description=source.description,
        tags=source.tags,
        version=source.version,
        author=source.author,
    )
    setattr(run, SPEC_ATTR, spec)
    return run


def _object_source(target: str) -> _Source:
    crewai = _crewai(target)
    obj = import_object(target)
    name = target.rpartition(":")[2].rpartition(".")[2]
    if isinstance(obj, crewai.Crew):
        return _Source(
            name=name,
            make=obj.copy,
            inputs=placeholder_model(name, obj.fetch_inputs()),
            summary=_crew_summary(obj),
        )
    flow_class = obj if isinstance(obj, type) else type(obj)
    if issubclass(flow_class, crewai.flow.flow.Flow):
        doc = (flow_class.__doc__ or "").strip()
        return _Source(
            name=name,
            make=flow_class,  # an instance's class: its state must not leak between runs
            inputs=state_model(name, flow_class),
            summary=doc.splitlines()[0] if doc else f"crewai Flow {flow_class.__name__}",
            description=doc,
        )
    raise ConfigError(f"{target} is a crewai {flow_class.__name__}: give a Crew or a Flow")


def _crew_summary(crew: Any) -> str:
    roles = ", ".join(_NAME.sub(r"\1", str(a.role)).strip() for a in crew.agents)
    return f"CrewAI crew: {len(crew.tasks)} tasks by {roles}"


def placeholder_model(name: str, placeholders: set[str] | frozenset[str]) -> type[BaseModel]:
    """An input model of one required text field per `{placeholder}` (unknown ones refused)."""
    bad = sorted(p for p in placeholders if not p.isidentifier())
    if bad:
        raise ConfigError(
            f"crew {name}: placeholder {{{bad[0]}}} is not a name; give the crew an input "
            "model (`inputs: module:Model`)"
        )
    fields: dict[str, Any] = {
        p: (str, Field(description=f"{{{p}}} in the crew's agents and tasks"))
        for p in sorted(placeholders)
    }
    model: type[BaseModel] = create_model(
        f"{_camel(name)}Inputs", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def state_model(name: str, flow_class: type[Any]) -> type[BaseModel] | None:
    """The inputs of a crewai Flow: its structured state's fields but `id` (kickoff sets them);
    None (any inputs) when its state is a plain dict."""
    state = getattr(flow_class, "_initial_state_t", None)
    initial = (
        flow_class.model_fields.get("initial_state")
        if hasattr(flow_class, "model_fields")
        else None
    )
    if not isinstance(state, type) and initial is not None and isinstance(initial.default, type):
        state = initial.default
    if not (isinstance(state, type) and issubclass(state, BaseModel)):
        return None
    fields: dict[str, Any] = {
        key: (info.annotation, info) for key, info in state.model_fields.items() if key != "id"
    }
    model: type[BaseModel] = create_model(
        f"{_camel(name)}Inputs", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name)) or "Crew"


# -- crew YAML files ------------------------------------------------------------------------------
class CrewFile(BaseModel):
    """A crew YAML file: crewai's `agents.yaml` and `tasks.yaml` (each inline, or a path
    relative to this file), plus what a crewai project says in Python (LLM, process)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    """The flow's name (default: the file's name without `.yaml`)."""
    summary: str = ""
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    version: str = ""
    author: str = ""
    llm: str | None = None
    """The LLM of agents without their own `llm:`: a model name for crewai (`openai/gpt-4o`),
    or `module:attr` of an LLM object (or of a class or function that makes one)."""
    process: str = "sequential"
    verbose: bool = False
    inputs: str | None = None
    """`module:Model` of the inputs (default: one text field per `{placeholder}`)."""
    agents: dict[str, dict[str, Any]] | str
    tasks: dict[str, dict[str, Any]] | str


def _file_source(path: Path) -> _Source:
    _crewai(str(path))
    config = read_crew_file(path)
    name = config.name or path.stem
    build = functools.partial(build_crew, config, path)
    crew = build()  # a bad file fails at load, not at its first launch
    inputs = placeholder_model(name, crew.fetch_inputs())
    if config.inputs is not None:
        model = import_object(config.inputs)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"{path}: inputs {config.inputs!r} is not a pydantic model")
        inputs = model
    return _Source(
        name=name,
        make=build,
        inputs=inputs,
        summary=config.summary or _crew_summary(crew),
        description=config.description,
        tags=tuple(config.tags),
        version=config.version,
        author=config.author,
    )


def read_crew_file(path: Path) -> CrewFile:
    """The crew file with `agents`/`tasks` paths read; a ConfigError names the file and key."""
    data = _yaml(path)
    for key in ("agents", "tasks"):
        if isinstance(data.get(key), str):
            data[key] = _yaml(path.parent / data[key])
    try:
        return CrewFile.model_validate(data)
    except ValidationError as exc:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
        raise ConfigError(f"{path}: {lines}") from None


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read crew file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    return data


def build_crew(config: CrewFile, path: Path) -> Any:
    """A new `Crew` of the file's agents and tasks, as crewai's `CrewBase` maps them: a task's
    `agent` and `context` name agents and earlier tasks, an agent's `tools` are `module:attr`."""
    crewai = _crewai(str(path))
    assert isinstance(config.agents, dict) and isinstance(config.tasks, dict)
    if not config.tasks:
        raise ConfigError(f"{path}: a crew needs tasks")
    agents: dict[str, Any] = {}
    for key, spec in config.agents.items():
        fields = dict(spec)
        llm = fields.pop("llm", config.llm)
        if llm is not None:
            fields["llm"] = _llm(llm, path)
        if "tools" in fields:
            fields["tools"] = [_imported(t, path, "tool") for t in fields["tools"]]
        agents[key] = _made(crewai.Agent, fields, path, f"agents.{key}")
    tasks: dict[str, Any] = {}
    for key, spec in config.tasks.items():
        fields = {"name": key, **spec}
        if "agent" in fields:
            fields["agent"] = _named(agents, fields["agent"], path, f"tasks.{key}.agent")
        if "context" in fields:
            where = f"tasks.{key}.context"
            fields["context"] = [_named(tasks, t, path, where) for t in fields["context"]]
        tasks[key] = _made(crewai.Task, fields, path, f"tasks.{key}")
    try:
        process = crewai.Process(config.process)
    except ValueError:
        names = ", ".join(p.value for p in crewai.Process)
        raise ConfigError(f"{path}: process {config.process!r} is not one of {names}") from None
    fields = {"process": process, "verbose": config.verbose}
    if config.name:
        fields["name"] = config.name
    return _made(
        crewai.Crew,
        {"agents": list(agents.values()), "tasks": list(tasks.values()), **fields},
        path,
        "crew",
    )


def _made(cls: Any, fields: dict[str, Any], path: Path, where: str) -> Any:
    try:
        return cls(**fields)
    except ValidationError as exc:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
        raise ConfigError(f"{path}: {where}: {lines}") from None


def _named(known: dict[str, Any], key: Any, path: Path, where: str) -> Any:
    if key not in known:
        names = ", ".join(known) or "none"
        raise ConfigError(f"{path}: {where}: no {key!r} (defined before it: {names})")
    return known[key]


def _llm(value: Any, path: Path) -> Any:
    """A model name stays a string (crewai makes its LLM); `module:attr` is imported, and
    called when it is a class or a factory (a new LLM per crew)."""
    if not isinstance(value, str) or ":" not in value or "/" in value.partition(":")[0]:
        return value
    return _imported(value, path, "llm")


def _imported(value: Any, path: Path, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        obj = import_object(value)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {what}: {exc}") from None
    if isinstance(obj, type) or (callable(obj) and not is_crewai(obj)):
        try:
            obj = obj()
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"{path}: {what} {value}: {type(exc).__name__}: {first}") from None
    return obj


# -- kickoff --------------------------------------------------------------------------------------
class _Stopped(BaseException):
    """Raised into crewai's threads once the execution ended (cancelled, timed out)."""


class _Relay:
    """crewai's events of one kickoff → that execution's kodo events, in crewai's order."""

    def __init__(self, tracer: Any, top: Any) -> None:
        from crewai.types.usage_metrics import UsageMetrics

        self._tracer = tracer
        self._top = top
        self._lock = threading.Lock()
        self.usage = UsageMetrics()
        self._metrics = UsageMetrics
        self.llm_calls = 0
        self.ended = threading.Event()

    def __call__(self, source: Any, event: Any) -> None:
        if self.ended.is_set():
            raise _Stopped
        try:
            self._relay(source, event)
        except Exception:  # an event that cannot be told must not fail the crew
            log.warning("crewai event %s not relayed", getattr(event, "type", event), exc_info=True)

    def _relay(self, source: Any, event: Any) -> None:
        t = self._tracer
        kind = getattr(event, "type", "")
        if kind == "crew_kickoff_started":
            t.info_sync(f"crew {event.crew_name or 'crew'} kicks off", inputs=event.inputs)
        elif kind == "task_started" and event.task is not None:
            agent = str(getattr(event.task.agent, "role", "")).strip()
            t.info_sync(f"task {event.task.name}: {agent}", task=event.task.name, agent=agent)
        elif kind == "agent_logs_execution":
            self._step(event.agent_role, event.formatted_answer)
        elif kind == "tool_usage_finished":
            output = str(event.output)
            if len(output) > TOOL_OUTPUT_MAX:
                output = output[:TOOL_OUTPUT_MAX] + f" [… {len(output) - TOOL_OUTPUT_MAX} more]"
            t.action_sync(
                {
                    "tool": event.tool_name,
                    "input": event.tool_args,
                    "output": output,
                    "agent": str(getattr(source, "role", None) or event.agent_role).strip(),
                    "task": event.task_name,
                    "from_cache": event.from_cache,
                }
            )
        elif kind in ("tool_usage_error", "tool_execution_error"):
            t.warning_sync(f"tool {event.tool_name} failed: {event.error}", tool=event.tool_name)
        elif kind == "task_completed":
            out = event.output
            t.markdown_sync(f"**{out.name or 'task'}** ({out.agent.strip()})\n\n{out.raw}")
        elif kind == "task_failed":
            t.error_sync(f"task failed: {event.error}")
        elif kind == "llm_call_completed" and event.usage:
            metrics = self._metrics.from_provider_dict(event.usage)
            with self._lock:
                self.llm_calls += 1
                if metrics is not None:
                    self.usage.add_usage_metrics(metrics)
        elif kind == "method_execution_started" and source is self._top:
            t.info_sync(f"step {event.method_name}", flow=event.flow_name)

    def _step(self, role: str, answer: Any) -> None:
        """An agent's step as a log line: its thought, and the tool it picks (its answer comes
        as the task's markdown)."""
        thought = str(getattr(answer, "thought", "") or "").strip().removeprefix("Thought:")
        thought = thought.strip()
        tool = getattr(answer, "tool", None)
        step = "action" if tool is not None else "answer"
        message = f"{role.strip()}: {thought or step}" + (f" → {tool}" if tool else "")
        self._tracer.info_sync(message, agent=role.strip(), step=step, tool=tool)


def kickoff(obj: Any, inputs: dict[str, Any], tracer: Any) -> dict[str, Any]:
    """Run a crew (or crewai Flow) here, relaying its events; the final value: its output, each
    task's output, and `metadata.token_usage` (this execution's LLM calls only — crewai's own
    totals count an LLM shared by two agents twice, and across executions)."""
    crewai = _crewai("kickoff")
    from crewai.events.listeners.tracing.utils import set_tui_mode
    from crewai.events.stream_context import add_stream_sink, reset_stream_sinks

    relay = _Relay(tracer, obj)
    forget = tracer._em.when_closed(relay.ended.set)  # the execution ended: stop the crew
    token = add_stream_sink(relay)
    set_tui_mode(True)  # kodo shows the steps: no crewai Flow panels on the worker's stdout
    try:
        result = obj.kickoff(inputs=inputs)
    finally:
        reset_stream_sinks(token)
        forget()
    final: dict[str, Any] = {"output": _plain(result)}
    if isinstance(result, crewai.CrewOutput):
        final["tasks"] = [
            {"task": t.name, "agent": t.agent.strip(), "output": t.raw} for t in result.tasks_output
        ]
    with relay._lock:
        final["metadata"] = {
            "token_usage": relay.usage.model_dump(),
            "llm_calls": relay.llm_calls,
        }
    return final


def _plain(value: Any) -> Any:
    """A crew's output as data: its pydantic or JSON output when the last task has one."""
    pydantic_out = getattr(value, "pydantic", None)
    if isinstance(pydantic_out, BaseModel):
        return pydantic_out.model_dump(mode="json")
    if getattr(value, "json_dict", None):
        return value.json_dict
    if hasattr(value, "raw"):
        return value.raw
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value

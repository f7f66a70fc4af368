"""Pure: TOML text in, frozen dataclasses out, with one precise error line when not.

Layer: core (pure), used by :mod:`gastown.roles.adapters.town` (which reads the files) and
by operations and the supervisor that read settings.

The shipped files in :mod:`gastown.config` hold every default; a user's file is laid
over them key by key (tables merge, everything else replaces), then validated against
the dataclasses below. An unknown key, a wrong type or malformed TOML raises
:class:`ConfigError` naming the file and the key or line. This module reads no files:
callers pass text and a path used only in messages.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from .config_setup import Seconds as Seconds  # re-exported: durations are config's word
from .config_setup import SetupConfig, TeardownConfig, ports_problem, setup_problems
from .errors import ConfigError
from .names import DEFAULT_POLECAT_NAMES, name_problem, prefix_problem

SessionBackend = Literal["auto", "tmux", "process"]
LogLevel = Literal["debug", "info", "warning", "error"]
OnConflict = Literal["reject", "resling"]


AgentKind = Literal["claude", "codex", "generic"]


@dataclass(frozen=True)
class AgentConfig:
    """One agent: what to run, and what kind of CLI it is.

    ``command`` runs in a tmux pane (interactive); ``print_command``, when set, is what the
    ``process`` backend runs instead (one non-interactive turn that exits). The
    ``*resume_command`` variants continue the agent's previous conversation in the same
    worktree (respawn, nudge); without them a respawn starts afresh with a note. ``kind``
    says what gastown prepares for it and how it learns that a turn ended (README, "Agents").
    """

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    kind: AgentKind = "generic"
    resume_command: tuple[str, ...] = ()
    print_command: tuple[str, ...] = ()
    print_resume_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class TownConfig:
    """``town.toml``: town-level bead prefix, default agent, polecat cap, and the tables below."""

    prefix: str
    default_agent: str
    max_polecats: int
    sessions: SessionsConfig
    supervisor: SupervisorConfig
    logging: LoggingConfig
    agents: dict[str, AgentConfig]


@dataclass(frozen=True)
class SessionsConfig:
    """``[sessions]``: where agent sessions run and how long a real agent may take to start
    or sit idle at its prompt."""

    backend: SessionBackend
    start_timeout: Seconds
    idle_turn_after: Seconds


@dataclass(frozen=True)
class SupervisorConfig:
    """``[supervisor]``: how role processes are stopped, and restarted after a crash."""

    stop_timeout: Seconds
    restart_delay: Seconds
    restart_max_delay: Seconds
    max_restarts: int
    restart_period: Seconds
    stable_after: Seconds


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: the level of the role logs and their rotation."""

    level: LogLevel
    max_bytes: int
    backups: int


GATE_TIMEOUT: Seconds = Seconds(600.0)
#: ``merge_queue.land_within``'s default.
LAND_WITHIN: Seconds = Seconds(1.0)


@dataclass(frozen=True)
class GateConfig:
    name: str
    command: str
    timeout: Seconds = GATE_TIMEOUT


@dataclass(frozen=True)
class PolecatsConfig:
    max: int
    names: tuple[str, ...]
    branch_template: str
    max_respawns: int
    stall_timeout: Seconds
    #: Idle worktrees kept ready (detached at the default branch) for the next slings;
    #: 0 = no pool (a sling adds its worktree).
    pool_size: int = 0
    #: The worktree bootstrap (README, "Worktree setup"): before the agent starts, and
    #: before the nuke; ``ports`` ("4100-4199") is split in a block per slot.
    setup: SetupConfig = field(default_factory=SetupConfig)
    teardown: TeardownConfig = field(default_factory=TeardownConfig)
    ports: str = ""


#: ``merge_queue.batch_size``: a positive number of MRs, or ``"auto"`` (grown and shrunk
#: by :class:`~gastown.roles.core.merge_queue.AutoBatch`).
BatchSize = int | Literal["auto"]


@dataclass(frozen=True)
class MergeQueueConfig:
    """``[merge_queue]``: how the refinery gates and lands merge requests."""

    batch_size: BatchSize
    on_conflict: OnConflict
    retry_flaky: int
    push_retries: int
    #: Gate the next batch on top of the running one, in a second checkout.
    speculative: bool = False
    #: With batches of one (and not speculative): how much later a gated MR may land so
    #: that the MRs queued behind it are gated on top of it, each on its own, and pushed
    #: with it (:func:`~gastown.roles.core.merge_queue.chain_limit`); 0: each alone.
    land_within: Seconds = LAND_WITHIN
    #: ``[[merge_queue.gates]]``: the commands a candidate must pass, in order.
    gates: tuple[GateConfig, ...] = ()
    #: Run in the gate checkout before the gates (as a first gate named ``setup``).
    setup: SetupConfig = field(default_factory=SetupConfig)


@dataclass(frozen=True)
class RigConfig:
    repo: str
    default_branch: str
    prefix: str
    polecats: PolecatsConfig
    merge_queue: MergeQueueConfig
    #: ``repo`` is a local working copy with the default branch checked out, and the user
    #: let gastown push to it (``receive.denyCurrentBranch = updateInstead``, set by
    #: ``rig add --push-to-checkout``): pushes update that checkout when it is clean.
    push_to_checkout: bool = False


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float | None:
    """Seconds for ``"10m"``/``"1.5s"``/``"250ms"``/``30``; None when not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return None


def merge_over(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``defaults``: tables merge recursively, other values replace."""
    merged = dict(defaults)
    for key, value in override.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_over(base, value)
        else:
            merged[key] = value
    return merged


def parse_toml(text: str, path: str) -> dict[str, Any]:
    """Parse TOML, turning a syntax error into ``<path>:<line>: malformed TOML: ...``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else None
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        problem = re.sub(r"\s*\(at end of document\)", " at end of file", problem)
        raise ConfigError(path, f"malformed TOML: {problem}", line=line) from None


def _find_line(text: str, table: tuple[str, ...], key: str) -> int | None:
    """Best-effort line number of ``key`` inside ``[table]`` in ``text`` (1-based)."""
    current: tuple[str, ...] = ()
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    assign = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        h = header.match(line)
        if h:
            current = tuple(part.strip().strip("\"'") for part in h.group(1).split("."))
            if current == (*table, key):
                return number
            continue
        if current == table and assign.match(line):
            return number
    return None


T = TypeVar("T")


class _Validator:
    """Converts parsed TOML into dataclass instances, naming the file, key and line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, where: tuple[str, ...], problem: str) -> typing.NoReturn:
        key = ".".join(where) or None
        table = tuple(p for p in where[:-1] if not p.startswith("#"))
        leaf = where[-1] if where else ""
        line = _find_line(self.text, table, leaf) if where else None
        raise ConfigError(self.path, problem, line=line, key=key)

    def build(self, cls: type[T], data: object, where: tuple[str, ...]) -> T:
        if not isinstance(data, Mapping):
            self.fail(where, f"{'.'.join(where) or 'file'} must be a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in fields:
                dotted = ".".join((*where, key))
                known = ", ".join(sorted(fields))
                self.fail((*where, key), f"unknown key '{dotted}' (known: {known})")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.convert(hints[name], data[name], (*where, name))
            elif (f.default is dataclasses.MISSING
                  and f.default_factory is dataclasses.MISSING):
                dotted = ".".join((*where, name))
                raise ConfigError(self.path, f"missing key '{dotted}'", key=dotted)
        return cls(**values)

    def convert(self, tp: Any, value: object, where: tuple[str, ...]) -> Any:
        dotted = ".".join(where)
        if tp == BatchSize:
            if value != "auto" and (not isinstance(value, int) or isinstance(value, bool)):
                self.fail(where, f"'{dotted}' must be a positive integer or \"auto\", "
                                 f"not {value!r}")
            return value
        if tp is Seconds:
            seconds = parse_duration(value)
            if seconds is None:
                self.fail(where, f"'{dotted}' must be a duration such as \"30s\" or \"10m\", "
                                 f"not {value!r}")
            return Seconds(seconds)
        if dataclasses.is_dataclass(tp):
            return self.build(typing.cast(type[Any], tp), value, where)
        origin = get_origin(tp)
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices:
                wanted = " or ".join(repr(c) for c in choices)
                self.fail(where, f"'{dotted}' must be {wanted}, not {value!r}")
            return value
        if origin is tuple:
            (item_tp, _) = get_args(tp)
            if not isinstance(value, list):
                self.fail(where, f"'{dotted}' must be an array, not {_type_name(value)}")
            return tuple(self.convert(item_tp, item, (*where[:-1], where[-1]))
                         for item in value)
        if origin is dict:
            (_, item_tp) = get_args(tp)
            if not isinstance(value, Mapping):
                self.fail(where, f"'{dotted}' must be a table, not {_type_name(value)}")
            return {k: self.convert(item_tp, v, (*where, k)) for k, v in value.items()}
        if origin is types.UnionType:
            raise TypeError(f"unsupported config type {tp!r}")
        expected = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
        if tp in expected:
            ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if not ok:
                self.fail(where, f"'{dotted}' must be {expected[tp]}, not {_type_name(value)}")
            return value
        raise TypeError(f"unsupported config type {tp!r}")


def _type_name(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _check_positive(v: _Validator, where: tuple[str, ...], value: int, *,
                    minimum: int = 1) -> None:
    if value < minimum:
        v.fail(where, f"'{'.'.join(where)}' must be at least {minimum}, not {value}")


def _check_duration(v: _Validator, where: tuple[str, ...], value: float, *,
                    positive: bool = True) -> None:
    if positive and value <= 0:
        v.fail(where, f"'{'.'.join(where)}' must be longer than 0s")


def load_agent_tables(text: str, path: str) -> dict[str, AgentConfig]:
    """Agent presets (``[NAME]`` tables: ``command``, ``kind``, ...), checked like
    town.toml's ``[agents.NAME]``."""
    data = parse_toml(text, path)
    v = _Validator(path, text)
    agents = {name: v.build(AgentConfig, table, (name,)) for name, table in data.items()}
    for name, agent in agents.items():
        if not agent.command:
            v.fail((name, "command"), f"agent {name!r} needs a command list")
    return agents


def load_town_config(text: str, path: str, defaults: str,
                     presets: Collection[str] | None = None) -> TownConfig:
    """Validate a town's ``town.toml`` (``text``) laid over the shipped ``defaults``.

    With ``presets`` (the shipped agent names), ``default_agent`` must name one of them
    or an ``[agents.NAME]`` table of the file.
    """
    data = merge_over(parse_toml(defaults, "<shipped town.toml>"), parse_toml(text, path))
    v = _Validator(path, text)
    config = v.build(TownConfig, data, ())
    if prefix_problem(config.prefix):
        v.fail(("prefix",), f"'prefix' {prefix_problem(config.prefix)}, not {config.prefix!r}")
    _check_positive(v, ("max_polecats",), config.max_polecats)
    _check_positive(v, ("supervisor", "max_restarts"), config.supervisor.max_restarts,
                    minimum=0)
    _check_positive(v, ("logging", "max_bytes"), config.logging.max_bytes, minimum=1024)
    _check_positive(v, ("logging", "backups"), config.logging.backups, minimum=0)
    sup = config.supervisor
    for key in ("stop_timeout", "restart_period"):
        _check_duration(v, ("supervisor", key), getattr(sup, key))
    if sup.restart_max_delay < sup.restart_delay:
        v.fail(("supervisor", "restart_max_delay"),
               f"'supervisor.restart_max_delay' ({sup.restart_max_delay:g}s) must not be "
               f"shorter than 'supervisor.restart_delay' ({sup.restart_delay:g}s)")
    if presets is not None and config.default_agent not in {*presets, *config.agents}:
        known = ", ".join(sorted({*presets, *config.agents}))
        v.fail(("default_agent",), f"'default_agent' {config.default_agent!r} is neither a "
                                   f"preset nor an [agents.NAME] table (known: {known})")
    for name, agent in config.agents.items():
        problem = name_problem("agent", name)
        if problem:
            v.fail(("agents", name), f"agent name {name!r} {problem}")
        if not agent.command:
            v.fail(("agents", name, "command"), f"'agents.{name}.command' must not be empty")
    return config


def _check_branch_template(v: _Validator, config: RigConfig) -> None:
    """``{name}`` in it, and a valid branch, apart from the default branch, for every name
    of the pool: a bad template is found here, not when the first sling fails."""
    where = ("polecats", "branch_template")
    template = config.polecats.branch_template
    if "{name}" not in template:
        v.fail(where, "'polecats.branch_template' must contain {name}")
    main = config.default_branch
    for name in config.polecats.names or DEFAULT_POLECAT_NAMES:
        branch = template.replace("{name}", name)
        problem = name_problem("branch", branch)
        if problem:
            v.fail(where, f"'polecats.branch_template' {template!r} gives the branch "
                          f"{branch!r} for polecat {name!r}, which {problem}")
        if branch == main or branch.startswith(main + "/") or main.startswith(branch + "/"):
            v.fail(where, f"'polecats.branch_template' {template!r} gives the branch "
                          f"{branch!r} for polecat {name!r}, which collides with the "
                          f"default branch {main!r}")


def load_rig_config(text: str, path: str, defaults: str) -> RigConfig:
    """Validate a rig's ``rig.toml`` (``text``) laid over the shipped ``defaults``."""
    data = merge_over(parse_toml(defaults, "<shipped rig.toml>"), parse_toml(text, path))
    v = _Validator(path, text)
    config = v.build(RigConfig, data, ())
    if not config.repo.strip():
        v.fail(("repo",), "'repo' must not be empty")
    if prefix_problem(config.prefix):
        v.fail(("prefix",), f"'prefix' {prefix_problem(config.prefix)}, not {config.prefix!r}")
    problem = name_problem("branch", config.default_branch)
    if problem:
        v.fail(("default_branch",), f"'default_branch' {problem}")
    _check_positive(v, ("polecats", "max"), config.polecats.max)
    _check_positive(v, ("polecats", "max_respawns"), config.polecats.max_respawns, minimum=0)
    for name in config.polecats.names:
        problem = name_problem("polecat", name)
        if problem:
            v.fail(("polecats", "names"), f"polecat name {name!r} {problem}")
    if len(set(config.polecats.names)) != len(config.polecats.names):
        v.fail(("polecats", "names"), "'polecats.names' lists a name twice")
    _check_positive(v, ("polecats", "pool_size"), config.polecats.pool_size, minimum=0)
    _check_branch_template(v, config)
    _check_duration(v, ("polecats", "stall_timeout"), config.polecats.stall_timeout)
    for table, setup in ((("polecats", "setup"), config.polecats.setup),
                         (("merge_queue", "setup"), config.merge_queue.setup)):
        for key, problem in setup_problems(setup):
            v.fail((*table, key), f"'{'.'.join((*table, key))}' {problem}")
    _check_duration(v, ("polecats", "teardown", "timeout"), config.polecats.teardown.timeout)
    problem = ports_problem(config.polecats.ports, config.polecats.max)
    if problem:
        v.fail(("polecats", "ports"), f"'polecats.ports' {problem}")
    mq = config.merge_queue
    if mq.batch_size != "auto":
        _check_positive(v, ("merge_queue", "batch_size"), mq.batch_size)
    _check_positive(v, ("merge_queue", "retry_flaky"), mq.retry_flaky, minimum=0)
    _check_positive(v, ("merge_queue", "push_retries"), mq.push_retries, minimum=0)
    seen: set[str] = set()
    for gate in mq.gates:
        if not gate.name.strip() or any(ord(c) < 0x20 for c in gate.name):
            v.fail(("merge_queue", "gates", "name"), f"gate name {gate.name!r} must be "
                                                     "a non-empty line of text")
        if not gate.command.strip():
            v.fail(("merge_queue", "gates", "command"),
                   f"gate {gate.name!r} has an empty 'command'")
        _check_duration(v, ("merge_queue", "gates", "timeout"), gate.timeout)
        if gate.name in seen:
            v.fail(("merge_queue", "gates", "name"), f"gate name {gate.name!r} is repeated")
        seen.add(gate.name)
    return config

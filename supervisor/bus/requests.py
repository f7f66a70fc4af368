"""The town's bus requests, typed: every method name and the parameters of each.

Layer: bus, pure (no I/O, no trio; imports only :mod:`.errors` and :mod:`.protocol`).
The wire stays ``{"method": M, "params": {...}}`` (:mod:`.protocol`); this module is
the vocabulary on top of it. A sender builds a request object (``Ready(pid=...)``) and
sends it with :meth:`BusClient.call` or :func:`call_sync`; a receiver serves a
:data:`TypedHandler` through :func:`typed_handler`, which turns the wire's method and
params into that object (or answers with the error), so a handler matches on the class
instead of reading a ``dict[str, Any]``.

Who answers what:

- every role and the supervisor (``bus``): :class:`Ping`, :class:`Status`,
  :class:`Shutdown`;
- the supervisor only: :class:`Ready` (a role's readiness), :class:`Outbox` (new store
  events to relay), :class:`Reload`;
- ``mayor``: :class:`Sling` (dispatch this queued sling and answer its outcome),
  :class:`Dispatch` (look at the queue now);
- ``witness:<rig>``: :class:`Settle` (run a pass now);
- ``refinery:<rig>``: :class:`Wake` (look at the merge queue now).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

from .errors import GastownError, ProtocolError
from .protocol import RequestHandler

#: Every request method the town sends.
Method: TypeAlias = Literal["ping", "status", "shutdown", "ready", "outbox", "reload",
                            "sling", "dispatch", "settle", "wake"]

#: What a handler answers: a JSON object.
Reply: TypeAlias = dict[str, object]


@dataclass(frozen=True)
class Ping:
    """Are you alive? Answered ``{"pong": <name>, "pid": <pid>}``."""

    method: ClassVar[Literal["ping"]] = "ping"


@dataclass(frozen=True)
class Status:
    """The answerer's state: a role's own fields, or the supervisor's roles."""

    method: ClassVar[Literal["status"]] = "status"


@dataclass(frozen=True)
class Shutdown:
    """Stop: a role stops its process, the supervisor the whole town."""

    method: ClassVar[Literal["shutdown"]] = "shutdown"


@dataclass(frozen=True)
class Ready:
    """A role tells the supervisor it is up; ``pid`` must be the process it spawned."""

    pid: int
    method: ClassVar[Literal["ready"]] = "ready"


@dataclass(frozen=True)
class Outbox:
    """The store has new events: the supervisor copies them to the feed and the bus."""

    method: ClassVar[Literal["outbox"]] = "outbox"


@dataclass(frozen=True)
class Reload:
    """Re-read the configuration; restart the roles whose part of it changed."""

    method: ClassVar[Literal["reload"]] = "reload"


@dataclass(frozen=True)
class Sling:
    """Dispatch the queued sling ``sling`` (its id) and answer its outcome."""

    sling: int
    method: ClassVar[Literal["sling"]] = "sling"


@dataclass(frozen=True)
class Dispatch:
    """Look at the sling queue now."""

    method: ClassVar[Literal["dispatch"]] = "dispatch"


@dataclass(frozen=True)
class Settle:
    """Run a witness pass now."""

    method: ClassVar[Literal["settle"]] = "settle"


@dataclass(frozen=True)
class Wake:
    """Look at the merge queue now."""

    method: ClassVar[Literal["wake"]] = "wake"


Request: TypeAlias = (Ping | Status | Shutdown | Ready | Outbox | Reload | Sling | Dispatch
                      | Settle | Wake)

_BY_METHOD: Final[dict[str, type[Request]]] = {
    kind.method: kind for kind in (Ping, Status, Shutdown, Ready, Outbox, Reload, Sling,
                                   Dispatch, Settle, Wake)}
assert set(_BY_METHOD) == set(get_args(Method)), "a Method without its request class"

#: The JSON types a parameter may be declared with (annotations are strings here).
_PARAM_TYPES: Final[dict[str, type]] = {"int": int, "str": str, "bool": bool}

#: A typed request's answerer: ``(request, sender name) -> reply``.
TypedHandler: TypeAlias = Callable[[Request, str], Awaitable[Reply]]


class UnknownRequest(GastownError):
    """A request whose method is not one of :data:`Method`."""


def parse_request(method: str, params: Mapping[str, object]) -> Request:
    """The typed request for a wire ``method`` and ``params`` (extra keys are ignored).

    Raises:
        UnknownRequest: ``method`` is not one the town uses.
        ProtocolError: a parameter is missing or has the wrong type.
    """
    kind = _BY_METHOD.get(method)
    if kind is None:
        raise UnknownRequest(f"unknown request {method!r}")
    values: dict[str, object] = {}
    for param in fields(kind):
        expected = _PARAM_TYPES[str(param.type)]
        value = params.get(param.name)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ProtocolError(f"request {method!r} needs {param.name!r}: "
                                f"a value of type {expected.__name__}")
        values[param.name] = value
    return kind(**values)  # type: ignore[arg-type]  # checked against the fields above


def params_of(request: Request) -> dict[str, object]:
    """The wire ``params`` of ``request``."""
    return asdict(request)


def typed_handler(handler: TypedHandler, who: str) -> RequestHandler:
    """A bus :data:`~.protocol.RequestHandler` that hands ``handler`` typed requests.

    A method the town does not use is answered ``"<who> does not know the request 'm'"``;
    malformed params with the :class:`ProtocolError`'s message.
    """

    async def handle(method: str, params: dict[str, Any], sender: str) -> Reply:
        try:
            request = parse_request(method, params)
        except UnknownRequest:
            raise GastownError(f"{who} does not know the request {method!r}") from None
        return await handler(request, sender)

    return handle

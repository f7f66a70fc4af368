"""The town's bus requests, typed: every method name and the parameters of each.

Layer: bus, pure (no I/O, no trio; imports only :mod:`.errors` and :mod:`.protocol`).
The wire stays ``{"method": M, "params": {...}}`` (:mod:`.protocol`); this module is
the vocabulary on top of it. A sender builds a request object (``Ready(pid=...)``) and
sends it with :meth:`BusClient.call` or :func:`call_sync`; a receiver serves a
:data:`TypedHandler` through :func:`typed_handler`, which turns the wire's method and
params into that object (or answers with the error), so a handler matches on the class
instead of reading a ``dict[str, Any]``.

Who answers what (``Bare(m)`` is a request ``m`` without parameters):

- every role and the supervisor (``bus``): ``ping``, ``status``, ``shutdown``;
- the supervisor only: :class:`Ready` (a role's readiness), ``outbox`` (new store
  events to relay), ``reload`` (re-read the configuration);
- ``mayor``: :class:`Sling` (dispatch this queued sling and answer its outcome),
  ``dispatch`` (look at the sling queue now);
- ``witness:<rig>``: ``settle`` (run a pass now);
- ``refinery:<rig>``: ``wake`` (look at the merge queue now).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast, get_args

from .errors import GastownError, ProtocolError
from .protocol import RequestHandler

#: The requests that say nothing but their name.
BareMethod: TypeAlias = Literal["ping", "status", "shutdown", "outbox", "reload", "dispatch",
                                "settle", "wake"]

#: Every request method the town sends.
Method: TypeAlias = BareMethod | Literal["ready", "sling"]

#: What a handler answers: a JSON object.
Reply: TypeAlias = dict[str, object]


@dataclass(frozen=True)
class Bare:
    """A request without parameters, e.g. ``Bare("ping")``; see the module's list."""

    method: BareMethod


@dataclass(frozen=True)
class Ready:
    """A role tells the supervisor it is up; ``pid`` must be the process it spawned."""

    method: ClassVar[Literal["ready"]] = "ready"
    pid: int


@dataclass(frozen=True)
class Sling:
    """Ask the mayor to dispatch the queued sling whose id is ``sling``, and to answer
    its outcome (``state``: queued, dispatched, failed, and its details)."""

    method: ClassVar[Literal["sling"]] = "sling"
    sling: int


Request: TypeAlias = Bare | Ready | Sling

_BARE: Final[frozenset[str]] = frozenset(get_args(BareMethod))
_WITH_PARAMS: Final[dict[str, type[Ready | Sling]]] = {"ready": Ready, "sling": Sling}
#: Every name in :data:`Method`, for code that checks a name at run time.
METHODS: Final[frozenset[str]] = _BARE | frozenset(_WITH_PARAMS)

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
    if method in _BARE:
        return Bare(cast("BareMethod", method))
    kind = _WITH_PARAMS.get(method)
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
    return {} if isinstance(request, Bare) else asdict(request)


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

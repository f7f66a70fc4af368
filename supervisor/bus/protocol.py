"""The bus's messages: their wire shapes, builders, and validation of what arrives.

Layer: bus, pure (no I/O), spoken by the bus's server and clients, the role loops and the
CLI.

Pure: dicts in, typed dicts out; it must never do I/O or import trio. The
server, the trio client and the blocking CLI client all speak through it, so
a shape is defined once.

What a peer sends to the bus (:data:`ClientMessage`):

- ``{"op": "hello", "name": N, "id"?: I, "token"?: T}`` first, once: the peer's
  name for routing and for the ``from`` of what it publishes. A role's name
  (``mayor``, ``witness:<rig>``, ``refinery:<rig>``) is granted only to the
  process the supervisor spawned for it, which presents its per-spawn token
  ``T``; any other claim of such a name is refused with an error reply (when
  the hello has an ``id``) and the connection is closed. A newer granted
  ``hello`` with a held name takes the name over (the older holder is the same
  role's stale connection). With an ``id`` the bus acknowledges, as for ``sub``,
  once requests to ``N`` reach this peer.
- ``{"op": "sub", "topics": [T, ...], "id"?: I}`` adds exact topic names to the
  peer's subscriptions; ``"*"`` means every topic. With an ``id`` the bus
  acknowledges with ``{"op": "rep", "id": I, "result": null}`` once the
  subscription is live, so nothing published after that is missed.
- ``{"op": "pub", "topic": T, "data": {...}}`` publishes to every subscriber
  (the publisher included, if subscribed).
- ``{"op": "req", "id": I, "to": P, "method": M, "params": {...}}`` asks the
  peer named ``P`` (or the bus itself, ``P == "bus"``); ``I`` is the
  requester's own id, an int or a string.
- ``{"op": "rep", "id": I, "result": R}`` or ``{"op": "rep", "id": I, "error": E}``
  answers a request this peer received.
- ``{"op": "cancel", "id": I}``: the requester stopped waiting (timeout,
  cancellation); the bus forgets the request and drops a late reply.

What the bus sends to a peer (:data:`ServerMessage`):

- ``{"op": "msg", "topic": T, "data": {...}, "from": N}``, a publication;
- ``{"op": "req", "id": I, "to": P, "method": M, "params": {...}, "from": N}``,
  a request routed to this peer: ``I`` is the bus's id, not the requester's,
  so two requesters' ids never clash; the bus restores the original on the reply;
- ``{"op": "rep", ...}``, the answer to this peer's request, with its own id;
- ``{"op": "dropped", "count": N}``: this peer read too slowly and lost ``N``
  publications, delivered before the next one it does get.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NotRequired, TypeAlias, TypedDict, cast

from .errors import ProtocolError

#: The peer name under which the bus itself (the supervisor) answers requests.
BUS_PEER: Final = "bus"
#: The subscription that matches every topic.
ALL_TOPICS: Final = "*"
#: The topic under which clients surface a ``dropped`` marker as a :class:`BusMessage`.
DROPPED_TOPIC: Final = "bus.dropped"

RequestId: TypeAlias = int | str

#: Answers a request: ``(method, params, sender name) -> result``. An exception
#: becomes an error reply carrying ``str(exc)``; the result must be JSON.
RequestHandler: TypeAlias = Callable[[str, dict[str, Any], str], Awaitable[Any]]


class Hello(TypedDict):
    op: Literal["hello"]
    name: str
    id: NotRequired[RequestId]
    token: NotRequired[str]


class Sub(TypedDict):
    op: Literal["sub"]
    topics: list[str]
    id: NotRequired[RequestId]


class Pub(TypedDict):
    op: Literal["pub"]
    topic: str
    data: dict[str, Any]


# "from" is a keyword, hence the functional syntax.
Msg = TypedDict("Msg", {"op": Literal["msg"], "topic": str, "data": dict[str, Any],
                        "from": str})
Req = TypedDict("Req", {"op": Literal["req"], "id": RequestId, "to": str, "method": str,
                        "params": dict[str, Any], "from": NotRequired[str]})


class Rep(TypedDict):
    op: Literal["rep"]
    id: RequestId
    result: NotRequired[Any]
    error: NotRequired[str]


class Cancel(TypedDict):
    op: Literal["cancel"]
    id: RequestId


class Dropped(TypedDict):
    op: Literal["dropped"]
    count: int


ClientMessage: TypeAlias = Hello | Sub | Pub | Req | Rep | Cancel
ServerMessage: TypeAlias = Msg | Req | Rep | Dropped


@dataclass(frozen=True)
class BusMessage:
    """One publication as a subscriber sees it.

    A ``dropped`` marker arrives as ``BusMessage(DROPPED_TOPIC, {"count": N}, BUS_PEER)``.
    """

    topic: str
    data: dict[str, Any] = field(hash=False)
    sender: str


# -- builders ---------------------------------------------------------------------------------


def hello(name: str, id: RequestId | None = None,  # noqa: A002 - wire name
          token: str | None = None) -> Hello:
    message: Hello = {"op": "hello", "name": name}
    if id is not None:
        message["id"] = id
    if token is not None:
        message["token"] = token
    return message


def sub(topics: list[str], id: RequestId | None = None) -> Sub:  # noqa: A002 - wire name
    message: Sub = {"op": "sub", "topics": list(topics)}
    if id is not None:
        message["id"] = id
    return message


def pub(topic: str, data: Mapping[str, Any]) -> Pub:
    return {"op": "pub", "topic": topic, "data": dict(data)}


def msg(topic: str, data: dict[str, Any], sender: str) -> Msg:
    return {"op": "msg", "topic": topic, "data": data, "from": sender}


def req(id: RequestId, to: str, method: str,  # noqa: A002 - wire name
        params: Mapping[str, Any] | None = None, *, sender: str | None = None) -> Req:
    message: Req = {"op": "req", "id": id, "to": to, "method": method,
                    "params": dict(params or {})}
    if sender is not None:
        message["from"] = sender
    return message


def rep_result(id: RequestId, result: Any) -> Rep:  # noqa: A002 - wire name
    return {"op": "rep", "id": id, "result": result}


def rep_error(id: RequestId, error: str) -> Rep:  # noqa: A002 - wire name
    return {"op": "rep", "id": id, "error": error}


def cancel(id: RequestId) -> Cancel:  # noqa: A002 - wire name
    return {"op": "cancel", "id": id}


def dropped(count: int) -> Dropped:
    return {"op": "dropped", "count": count}


def to_bus_message(message: Msg | Dropped) -> BusMessage:
    """The subscriber's view of a publication or of a drop marker."""
    if message["op"] == "dropped":
        return BusMessage(DROPPED_TOPIC, {"count": message["count"]}, BUS_PEER)
    return BusMessage(message["topic"], message["data"], message["from"])


# -- validation -------------------------------------------------------------------------------


def _field(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{raw.get('op')!r} message needs a {key!r} of type "
                            f"{getattr(kind, '__name__', kind)}")
    return value


def _name(raw: Mapping[str, Any], key: str) -> str:
    value: str = _field(raw, key, str)
    if not value:
        raise ProtocolError(f"{raw.get('op')!r} message has an empty {key!r}")
    return value


def _topics(raw: Mapping[str, Any]) -> list[str]:
    topics = _field(raw, "topics", list)
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ProtocolError("'sub' message needs 'topics': a non-empty list of names")
    return cast("list[str]", topics)


def _request_id(raw: Mapping[str, Any]) -> RequestId:
    value: RequestId = _field(raw, "id", (int, str))
    return value


def _rep(raw: Mapping[str, Any]) -> Rep:
    has_result, has_error = "result" in raw, "error" in raw
    if has_result == has_error:
        raise ProtocolError("'rep' message needs exactly one of 'result' and 'error'")
    if has_error:
        return rep_error(_request_id(raw), _field(raw, "error", str))
    return rep_result(_request_id(raw), raw["result"])


def parse_client_message(raw: Mapping[str, Any]) -> ClientMessage:
    """Validate a message a peer sent to the bus; return it as its typed shape.

    Unknown extra keys are ignored (newer peers may add fields).

    Raises:
        ProtocolError: unknown ``op`` or a missing or mistyped field; also a
            ``hello`` claiming :data:`BUS_PEER` and a ``pub`` to ``"*"`` or to
            :data:`DROPPED_TOPIC`, names the bus reserves.
    """
    op = raw.get("op")
    if op == "hello":
        name = _name(raw, "name")
        if name == BUS_PEER:
            raise ProtocolError(f"the name {BUS_PEER!r} is reserved for the bus")
        token = raw.get("token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("'hello' message needs 'token' to be a string")
        return hello(name, _request_id(raw) if "id" in raw else None, token)
    if op == "sub":
        return sub(_topics(raw), _request_id(raw) if "id" in raw else None)
    if op == "pub":
        topic = _name(raw, "topic")
        if topic in (ALL_TOPICS, DROPPED_TOPIC):
            raise ProtocolError(f"cannot publish to the reserved topic {topic!r}")
        return pub(topic, _field(raw, "data", dict))
    if op == "req":
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError("'req' message needs 'params' to be an object")
        return req(_request_id(raw), _name(raw, "to"), _name(raw, "method"), params)
    if op == "rep":
        return _rep(raw)
    if op == "cancel":
        return cancel(_request_id(raw))
    raise ProtocolError(f"unknown op {op!r}")


def parse_server_message(raw: Mapping[str, Any]) -> ServerMessage:
    """Validate a message the bus sent to a peer; return it as its typed shape.

    Raises:
        ProtocolError: unknown ``op`` or a missing or mistyped field.
    """
    op = raw.get("op")
    if op == "msg":
        return msg(_name(raw, "topic"), _field(raw, "data", dict), _name(raw, "from"))
    if op == "req":
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError("'req' message needs 'params' to be an object")
        return req(_request_id(raw), _name(raw, "to"), _name(raw, "method"), params,
                   sender=_name(raw, "from"))
    if op == "rep":
        return _rep(raw)
    if op == "dropped":
        count: int = _field(raw, "count", int)
        return dropped(count)
    raise ProtocolError(f"unknown op {op!r}")

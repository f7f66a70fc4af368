"""The typed bus requests: wire method + params to a request object and back."""

from __future__ import annotations

from typing import get_args

import pytest
import trio

from gastown.supervisor.bus import requests
from gastown.supervisor.bus.errors import GastownError, ProtocolError
from gastown.supervisor.bus.requests import (
    Bare,
    Method,
    Ready,
    Reply,
    Request,
    Sling,
    UnknownRequest,
    params_of,
    parse_request,
    typed_handler,
)


def test_every_method_parses_to_its_class_and_back() -> None:
    samples: dict[str, dict[str, object]] = {"ready": {"pid": 42}, "sling": {"sling": 7}}
    assert set(requests.METHODS) == {m for part in get_args(Method) for m in get_args(part)}
    for method in sorted(requests.METHODS):
        request = parse_request(method, samples.get(method, {}))
        assert request.method == method
        assert params_of(request) == samples.get(method, {})


def test_params_are_typed_and_extra_keys_ignored() -> None:
    assert parse_request("ready", {"pid": 42, "newer": "field"}) == Ready(pid=42)
    assert parse_request("sling", {"sling": 3}) == Sling(sling=3)
    assert parse_request("wake", {"anything": 1}) == Bare("wake")


@pytest.mark.parametrize("params", [{}, {"pid": "42"}, {"pid": True}, {"pid": None}])
def test_a_missing_or_mistyped_param_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(ProtocolError, match="request 'ready' needs 'pid': a value of type int"):
        parse_request("ready", params)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(UnknownRequest, match="unknown request 'echo'"):
        parse_request("echo", {})


def test_typed_handler_hands_over_the_request_and_names_itself_for_unknown_ones() -> None:
    seen: list[tuple[Request, str]] = []

    async def handler(request: Request, sender: str) -> Reply:
        seen.append((request, sender))
        return {"ok": True}

    wire = typed_handler(handler, "the mayor")

    async def main() -> None:
        assert await wire("ping", {}, "cli") == {"ok": True}
        with pytest.raises(GastownError, match="the mayor does not know the request 'echo'"):
            await wire("echo", {}, "cli")

    trio.run(main)
    assert seen == [(Bare("ping"), "cli")]
    assert requests.Sling.method == "sling"

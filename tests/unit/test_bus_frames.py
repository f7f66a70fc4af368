"""The bus's pure layers: framing and message validation, with Hypothesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.supervisor.bus import protocol
from gastown.supervisor.bus.errors import FrameError, ProtocolError
from gastown.supervisor.bus.frames import HEADER_SIZE, MAX_FRAME, FrameDecoder, encode_frame
from tests.unit.test_layering import imports_of

BUS = Path(__file__).resolve().parents[2] / "supervisor" / "bus"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    return out


class TestFrames:
    @settings(deadline=None)
    @given(st.lists(json_objects, max_size=6), st.data())
    def test_any_chunking_round_trips(self, messages: list[dict[str, Any]],
                                      data: st.DataObject) -> None:
        """Messages encoded back to back come out equal and in order, however the bytes are cut."""
        stream = b"".join(encode_frame(m) for m in messages)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
        decoder = FrameDecoder()
        assert feed_in_chunks(decoder, stream, cuts) == messages
        assert decoder.buffered == 0

    @settings(deadline=None)
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
    def test_garbage_raises_only_frame_error(self, garbage: bytes, cuts: list[int]) -> None:
        """Arbitrary bytes either decode or raise FrameError, never anything else."""
        decoder = FrameDecoder(max_frame=64)
        try:
            feed_in_chunks(decoder, garbage, [c for c in cuts if c <= len(garbage)])
        except FrameError:
            pass

    @settings(deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_bodies_raise_only_frame_error(self, body: bytes) -> None:
        """A correct header around an arbitrary body yields a dict or raises FrameError."""
        try:
            messages = FrameDecoder().feed(frame(body))
        except FrameError:
            return
        assert len(messages) == 1 and isinstance(messages[0], dict)

    def test_oversized_header_is_refused_before_the_body(self) -> None:
        """The length header alone is enough to refuse a frame over the limit."""
        decoder = FrameDecoder(max_frame=100)
        with pytest.raises(FrameError, match="too large"):
            decoder.feed((101).to_bytes(HEADER_SIZE, "big"))

    def test_frame_at_the_limit_is_accepted(self) -> None:
        """A body of exactly max_frame bytes decodes."""
        body = b'{"k":"' + b"x" * 92 + b'"}'
        assert len(body) == 100
        assert FrameDecoder(max_frame=100).feed(frame(body)) == [{"k": "x" * 92}]

    @pytest.mark.parametrize("body", [
        b"\xff\xfe{}", b"{not json", b"[1, 2]", b'"text"', b"42", b"", b'{"x": NaN}',
        b"[" * 100_000,
    ])
    def test_bad_bodies_raise_frame_error(self, body: bytes) -> None:
        """Invalid UTF-8, invalid or non-strict JSON, deep nesting and non-objects are refused."""
        with pytest.raises(FrameError):
            FrameDecoder().feed(frame(body))

    def test_decoder_stays_poisoned_after_an_error(self) -> None:
        """Once a frame is bad, later bytes are refused too: the boundaries are lost."""
        decoder = FrameDecoder()
        with pytest.raises(FrameError):
            decoder.feed(frame(b"oops"))
        with pytest.raises(FrameError):
            decoder.feed(encode_frame({"op": "hello"}))

    def test_partial_frame_is_reported_as_buffered(self) -> None:
        """Bytes of an incomplete frame show in ``buffered`` (a disconnect mid-frame)."""
        decoder = FrameDecoder()
        assert decoder.feed(encode_frame({"a": 1})[:-2]) == []
        assert decoder.buffered > 0

    def test_encode_refuses_oversized_and_non_json(self) -> None:
        """encode_frame raises FrameError for a body over the limit, a set, or NaN."""
        with pytest.raises(FrameError, match="too large"):
            encode_frame({"x": "y" * MAX_FRAME})
        with pytest.raises(FrameError, match="JSON"):
            encode_frame({"x": {1, 2}})
        with pytest.raises(FrameError, match="JSON"):
            encode_frame({"x": float("nan")})


class TestProtocol:
    @pytest.mark.parametrize("message", [
        protocol.hello("mayor"), protocol.hello("mayor", 0),
        protocol.sub(["mr_created", "*"]), protocol.sub(["x"], 3),
        protocol.pub("merged", {"rig": "web"}),
        protocol.req(7, "mayor", "sling", {"bead": "gt-a1b2c"}),
        protocol.req("abc", "bus", "status"),
        protocol.rep_result(7, [1, 2]), protocol.rep_result(7, None),
        protocol.rep_error("x", "boom"), protocol.cancel(7),
    ])
    def test_client_messages_round_trip(self, message: dict[str, Any]) -> None:
        """What the builders make, validation accepts unchanged."""
        assert protocol.parse_client_message(message) == message

    @pytest.mark.parametrize("message", [
        protocol.msg("merged", {"rig": "web"}, "refinery:web"),
        protocol.req(1, "mayor", "sling", {}, sender="cli"),
        protocol.rep_result(1, {"ok": True}), protocol.dropped(12),
    ])
    def test_server_messages_round_trip(self, message: dict[str, Any]) -> None:
        """What the bus sends, clients accept unchanged."""
        assert protocol.parse_server_message(message) == message

    @pytest.mark.parametrize("raw", [
        {}, {"op": "nope"}, {"op": "hello"}, {"op": "hello", "name": ""},
        {"op": "hello", "name": "bus"}, {"op": "sub", "topics": []},
        {"op": "sub", "topics": "x"}, {"op": "pub", "topic": "*", "data": {}},
        {"op": "pub", "topic": "bus.dropped", "data": {}}, {"op": "pub", "topic": "t"},
        {"op": "req", "id": True, "to": "m", "method": "x"},
        {"op": "req", "id": 1.5, "to": "m", "method": "x"},
        {"op": "req", "id": 1, "to": "m", "method": "x", "params": []},
        {"op": "rep", "id": 1}, {"op": "rep", "id": 1, "result": 1, "error": "e"},
        {"op": "rep", "id": 1, "error": 3},
    ])
    def test_bad_client_messages_are_refused(self, raw: dict[str, Any]) -> None:
        """Unknown ops, missing or mistyped fields and reserved names raise ProtocolError."""
        with pytest.raises(ProtocolError):
            protocol.parse_client_message(raw)

    @settings(deadline=None)
    @given(json_objects)
    def test_validation_raises_only_protocol_error(self, raw: dict[str, Any]) -> None:
        """Any JSON object is either a valid message or a ProtocolError."""
        for parse in (protocol.parse_client_message, protocol.parse_server_message):
            try:
                parse(raw)
            except ProtocolError:
                pass

    def test_drop_marker_becomes_a_bus_message(self) -> None:
        """A ``dropped`` marker surfaces as topic bus.dropped from the bus."""
        assert protocol.to_bus_message(protocol.dropped(3)) == protocol.BusMessage(
            "bus.dropped", {"count": 3}, "bus")


#: What the pure bus modules may import: data modules and each other.
PURE_ALLOWED = frozenset({"__future__", "collections.abc", "dataclasses", "json", "typing",
                          "gastown.roles.core.errors", "gastown.supervisor.bus.errors"})


class TestLayering:

    @pytest.mark.parametrize("module", ["errors.py", "frames.py", "protocol.py"])
    def test_pure_modules_do_no_io(self, module: str) -> None:
        """errors, frames and protocol import only data modules: no trio, os or socket."""
        found = imports_of((BUS / module).resolve())  # relative imports resolved
        assert found <= PURE_ALLOWED, found - PURE_ALLOWED

    def test_package_and_sync_client_import_without_trio(self) -> None:
        """The CLI's entry points into the bus load neither trio nor structlog."""
        code = ("import sys\n"
                "from gastown.supervisor.bus import request_sync, iter_messages_sync, BusError\n"
                "import gastown.supervisor.bus.sync_client\n"
                "print(sorted({'trio', 'structlog'} & set(sys.modules)))\n")
        out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == "[]", out

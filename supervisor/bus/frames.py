"""Framing for the bus: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.

Layer: bus, pure (no I/O), under every other module of the bus.

Pure: bytes in, dicts out. It must never import trio, ``os`` or ``socket``; the
trio server and client and the blocking CLI client all share it.

Why length-prefixed rather than newline-delimited JSON: the reader learns a
frame's size from its first four bytes, so an oversized frame is rejected
*before* its body is buffered (a newline reader has to hold up to the limit
to discover that no newline is coming), and payloads never need escaping.

Each frame holds exactly one JSON object. The JSON is strict: ``NaN`` and
``Infinity`` are refused both ways, so every frame is valid for any JSON
reader (``jq``, other languages).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .errors import FrameError

#: Default upper bound of a frame's body, in bytes (1 MiB).
MAX_FRAME: Final = 1 << 20

#: Size of the length header, in bytes.
HEADER_SIZE: Final = 4

#: Bytes a reader (the server, either client) asks its socket for at a time.
READ_CHUNK: Final = 1 << 16


def encode_frame(msg: Mapping[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """Return the frame (header + body) carrying ``msg``.

    Raises:
        FrameError: the body would exceed ``max_frame`` bytes, or ``msg`` holds
            something JSON cannot represent (a set, NaN, a circular reference).
    """
    try:
        body = json.dumps(msg, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise FrameError(f"message cannot be encoded as JSON: {exc}") from exc
    if len(body) > max_frame:
        raise FrameError(f"message too large for the bus ({len(body)} bytes, "
                         f"limit {max_frame})")
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def _refuse_constant(name: str) -> Any:
    raise FrameError(f"frame holds the non-JSON constant {name}")


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame body into a dict.

    Raises:
        FrameError: the body is not UTF-8, not strict JSON, or not a JSON object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(f"frame is not valid UTF-8: {exc.reason}") from exc
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise FrameError(f"frame is not valid JSON: {exc.msg}") from exc
    except RecursionError as exc:  # "[[[[..." nested deeper than the interpreter allows
        raise FrameError("frame nests JSON too deeply") from exc
    if not isinstance(value, dict):
        raise FrameError(f"frame holds a JSON {type(value).__name__}, not an object")
    return value


class FrameDecoder:
    """Turns a byte stream, in chunks of any size, into the dicts it carries.

    After :meth:`feed` raises :class:`FrameError` the decoder is poisoned: every
    later call raises the same error, because the stream's frame boundaries can
    no longer be trusted. The owner closes the connection.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 2:  # "{}" is the smallest valid body
            raise ValueError(f"max_frame must be at least 2 bytes, got {max_frame}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not yet complete; non-zero at EOF means a disconnect mid-frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data`` and return every message it completed, in order.

        Memory stays bounded by ``max_frame`` plus one chunk: an oversized length
        is rejected from the header alone, before any of its body is kept.

        Raises:
            FrameError: an oversized length header, or a body that is not a
                UTF-8 JSON object. Messages completed earlier in the same
                chunk are lost with it; the connection is going away anyway.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[dict[str, Any]] = []
        try:
            while len(self._buffer) >= HEADER_SIZE:
                length = int.from_bytes(self._buffer[:HEADER_SIZE], "big")
                if length > self.max_frame:
                    raise FrameError(f"frame too large ({length} bytes, "
                                     f"limit {self.max_frame})")
                end = HEADER_SIZE + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[HEADER_SIZE:end])
                del self._buffer[:end]
                messages.append(decode_body(body))
        except FrameError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        return messages

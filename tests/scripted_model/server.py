"""The scripted model server: Anthropic Messages and OpenAI Responses on one loopback port.

``ModelServer`` runs it in a daemon thread for tests; ``python -m tests.scripted_model``
runs it in the foreground. Every request is appended as one JSON line to the log file
(see ``protocol`` for what is answered).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from tests.scripted_model import protocol
from tests.scripted_model.protocol import Decision


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], log_path: Path,
                 dump_dir: Path | None) -> None:
        super().__init__(address, _Handler)
        self.log_path = log_path
        self.dump_dir = dump_dir
        self.log_lock = threading.Lock()
        self.counter = 0

    def record(self, entry: Mapping[str, Any], body: bytes | None) -> None:
        with self.log_lock:
            self.counter += 1
            line = dict(entry, seq=self.counter, time=time.time())
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
            if self.dump_dir is not None and body:
                self.dump_dir.mkdir(parents=True, exist_ok=True)
                (self.dump_dir / f"{self.counter:04d}.json").write_bytes(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Quiet: the JSON log is the record."""

    # --- plumbing -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            return gzip.decompress(raw)
        if encoding == "deflate":
            return zlib.decompress(raw)
        return raw

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        self.close_connection = True

    def _json(self, status: int, data: Mapping[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(data).encode())

    def _not_found(self, body: bytes | None) -> None:
        self.server.record({"api": "other", "method": self.command, "path": self.path,
                            "status": 404}, body)
        self._json(404, {"type": "error", "error": {
            "type": "not_found_error", "message": f"{self.command} {self.path}: not scripted"}})

    # --- routes ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.server.record({"api": "probe", "method": "HEAD", "path": self.path,
                            "status": 200}, None)
        self._send(200, "text/plain", b"")

    def do_GET(self) -> None:
        self._not_found(None)

    def do_POST(self) -> None:
        body = self._read_body()
        path = urlsplit(self.path).path.rstrip("/")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.server.record({"api": "other", "method": "POST", "path": self.path,
                                "status": 400, "error": "body is not a JSON object"}, body)
            self._json(400, {"type": "error", "error": {
                "type": "invalid_request_error", "message": "body is not a JSON object"}})
            return
        if path == "/v1/messages/count_tokens":
            self.server.record({"api": "anthropic", "method": "POST", "path": self.path,
                                "status": 200, "kind": "count_tokens"}, body)
            self._json(200, {"input_tokens": protocol.INPUT_TOKENS})
        elif path == "/v1/messages":
            self._anthropic(data, body)
        elif path == "/v1/responses":
            self._responses(data, body)
        else:
            self._not_found(body)

    def _entry(self, api: str, data: Mapping[str, Any], decision: Decision,
               n_input: int) -> dict[str, Any]:
        return {"api": api, "method": "POST", "path": self.path, "status": 200,
                "model": data.get("model"), "stream": bool(data.get("stream")),
                "kind": decision.kind, "prompt_index": decision.prompt_index,
                "step": decision.step, "n_input": n_input,
                "tool_call": decision.command is not None, "command": decision.command,
                "text": decision.text, "prompt": decision.prompt}

    def _anthropic(self, data: Mapping[str, Any], body: bytes) -> None:
        decision = protocol.anthropic_decide(data)
        model = str(data.get("model") or "scripted")
        self.server.record(self._entry("anthropic", data, decision,
                                       len(data.get("messages") or [])), body)
        if data.get("stream"):
            self._send(200, "text/event-stream",
                       protocol.sse(protocol.anthropic_events(decision, model)))
        else:
            self._json(200, protocol.anthropic_message(decision, model))

    def _responses(self, data: Mapping[str, Any], body: bytes) -> None:
        decision = protocol.responses_decide(data)
        items = data.get("input") or []
        self.server.record(self._entry("responses", data, decision,
                                       len(items) if isinstance(items, list) else 1), body)
        self._send(200, "text/event-stream", protocol.sse(protocol.responses_events(decision)))


def make_server(log_path: Path, *, host: str = "127.0.0.1", port: int = 0,
                dump_dir: Path | None = None) -> _Server:
    """A bound (not yet serving) scripted model server; ``dump_dir`` keeps every body."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    return _Server((host, port), log_path, dump_dir)


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """The logged requests, oldest first."""
    if not log_path.exists():
        return []
    text = log_path.read_text()
    # A line still being written (no newline yet) is left for the next read.
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


class ModelServer:
    """A scripted model server on loopback, serving from a daemon thread while in ``with``."""

    def __init__(self, log_path: Path, *, dump_dir: Path | None = None) -> None:
        self.log_path = log_path
        self._server = make_server(log_path, dump_dir=dump_dir)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="scripted-model", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT`` (Codex wants it with ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """The logged requests so far, oldest first."""
        return read_log(self.log_path)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *,
                 timeout: float = 60.0) -> dict[str, Any]:
        """The first logged request matching ``predicate``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.requests():
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching request in {timeout} s: {self.requests()}")
            time.sleep(0.05)

    def start(self) -> ModelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

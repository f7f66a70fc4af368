"""Logging set-up shared by every gastown process: structlog, JSON lines, context.

Layer: adapters (log files, stderr), configured once by every process: the role process, the
supervisor and the CLI.

Each process calls :func:`configure_logging` once. Every event becomes one JSON line in
``logs/<role>.log`` (rotated by size, keeping N files) and, when asked, a readable line
on stderr. ``role``, ``rig``, ``polecat`` and ``bead`` travel as context variables
(:func:`bind` / :func:`bound`), so a line logged deep inside git plumbing still says
which polecat it was for.

For the CLI's short commands (``lazy``), structlog is imported, and the pipeline built,
at the first line actually logged, not at :func:`configure_logging`: importing structlog
pulls in asyncio (about a fifth of a short command's start-up), and most commands log
nothing. The context lives in
a context variable of this module, so :func:`bind` and :func:`bound` cost no import
either.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    import structlog
    from structlog.typing import EventDict, WrappedLogger

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}

#: The context keys every log line may carry, in the order they are shown.
CONTEXT_KEYS: Final = ("role", "rig", "polecat", "bead")


def log_file_name(role: str) -> str:
    """``witness:web`` -> ``witness-web.log`` (one file per role)."""
    return role.replace(":", "-").replace("/", "-") + ".log"


class RotatingLog:
    """An append-only log file that rotates at ``max_bytes``, keeping ``backups`` old files.

    Several processes may share one file (the CLI's): every write and rotation happens
    under an ``flock`` on the open file, and a writer whose file was rotated away by
    another process reopens the new one.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def _reopen_if_rotated(self) -> None:
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _rotate(self) -> None:
        if self.backups == 0:
            os.truncate(self.path, 0)
            return
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write_line(self, line: str) -> None:
        self._reopen_if_rotated()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            self._file.write(line + "\n")
            self._file.flush()
            if os.fstat(self._file.fileno()).st_size >= self.max_bytes:
                self._rotate()
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self._file.close()


#: Where journald listens for its native protocol; tests point it elsewhere.
JOURNAL_SOCKET_ENV: Final = "GASTOWN_JOURNAL_SOCKET"
#: Set by the supervisor for its roles when it runs under journald (the roles cannot
#: tell by themselves: ``JOURNAL_STREAM`` is scrubbed from every child's environment).
JOURNAL_ENV: Final = "GASTOWN_JOURNAL"
_SYSLOG_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2,
                           "exception": 3}


def under_journald(env: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """Whether stderr is journald's stream (``JOURNAL_STREAM`` names its device:inode)."""
    if env.get(JOURNAL_ENV) == "1":
        return True
    stream = env.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def journal_fields(event_dict: Mapping[str, Any], message: str) -> bytes:
    """One native-protocol datagram: ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER`` and the
    context as fields (``GASTOWN_ROLE``, ``GASTOWN_RIG``, ``GASTOWN_POLECAT``, ``GASTOWN_BEAD``,
    ``GASTOWN_EVENT``), so ``journalctl GASTOWN_RIG=web`` filters and ``-o cat`` reads well."""
    fields: dict[str, str] = {
        "MESSAGE": message,
        "PRIORITY": str(_SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")), 6)),
        "SYSLOG_IDENTIFIER": "gastown",
        "GASTOWN_EVENT": str(event_dict.get("event", "")),
    }
    for key in CONTEXT_KEYS:
        if event_dict.get(key) is not None:
            fields[f"GASTOWN_{key.upper()}"] = str(event_dict[key])
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSink:
    """Sends each log event to journald over its native datagram protocol."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, self.path)
        except OSError:
            pass  # journald restarting or a datagram too large: the file log has it


def readable(event_dict: Mapping[str, Any]) -> str:
    """``role  event  key=value ...``: a line for ``journalctl -o cat``."""
    rec = dict(event_dict)
    for key in ("timestamp", "level"):
        rec.pop(key, None)
    head = " ".join(str(rec.pop(k)) for k in ("role", "event") if k in rec)
    tail = " ".join(f"{k}={v}" for k, v in rec.items())
    return f"{head}  {tail}".rstrip()


class _Tee:
    """Final processor: write the JSON line to the file (and the journal), return the
    console line or drop."""

    def __init__(self, file: RotatingLog | None, console: structlog.dev.ConsoleRenderer | None,
                 json_console: bool, journal: JournalSink | None = None) -> None:
        self.file = file
        self.console = console
        self.json_console = json_console
        self.journal = journal

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        line = json.dumps(event_dict, default=str, ensure_ascii=False)
        if self.file is not None:
            self.file.write_line(line)
        if self.journal is not None:
            self.journal.send(journal_fields(event_dict, readable(event_dict)))
            raise _drop()
        if self.json_console:
            return line
        if self.console is not None:
            return str(self.console(logger, method, dict(event_dict)))
        raise _drop()


def _order_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put ``timestamp``, ``level``, ``event`` and the context keys first in each line."""
    head = ("timestamp", "level", "event", *CONTEXT_KEYS)
    ordered: MutableMapping[str, Any] = {k: event_dict.pop(k) for k in head if k in event_dict}
    ordered.update(event_dict)
    return dict(ordered)


def configure_logging(logs_dir: Path | None, *, role: str, level: str = "info",
                      console: bool | None = None, json_console: bool = False,
                      max_bytes: int = 10 * 1024 * 1024, backups: int = 5,
                      journal: bool | None = None, lazy: bool = False) -> None:
    """Route this process's structlog output to ``logs_dir/<role>.log`` and maybe stderr.

    ``console=None`` means: readable lines on stderr when it is a terminal.
    ``journal=None`` means: to journald (native protocol, context as fields) when running
    under it; stderr then carries nothing, so the journal gets each line once. The log
    file is opened here (a file that cannot be written is the first error a command
    reports). With ``lazy`` (the CLI's short commands) structlog's pipeline is built at
    the first line logged through :func:`get_logger`; long-running processes build it now,
    since some of their modules log through structlog directly.
    """
    global _pending
    if journal is None:
        journal = under_journald(os.environ)
    sink = (JournalSink(os.environ.get(JOURNAL_SOCKET_ENV, "/run/systemd/journal/socket"))
            if journal else None)
    if console is None:
        console = sys.stderr.isatty() and sink is None
    file = (RotatingLog(logs_dir / log_file_name(role), max_bytes, backups)
            if logs_dir is not None else None)
    _context.set({"role": role})
    _pending = lambda: _configure(file, sink, console=console,  # noqa: E731
                                  json_console=json_console, level=level)
    if not lazy or "structlog" in sys.modules:
        _apply_pending()


def _configure(file: RotatingLog | None, sink: JournalSink | None, *, console: bool,
               json_console: bool, level: str) -> None:
    import structlog

    renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if console else None
    structlog.configure(
        processors=[
            _merge_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _order_context,
            _Tee(file, renderer, json_console, sink),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


#: This context's keys (``role``, ``rig``, ``polecat``, ``bead``...), merged into each line.
_context: ContextVar[Mapping[str, str] | None] = ContextVar("gastown_log_context",
                                                            default=None)


def _current() -> Mapping[str, str]:
    return _context.get() or {}


def _drop() -> BaseException:
    """structlog's "drop this line" (structlog is loaded: a line is being logged)."""
    from structlog import DropEvent

    return DropEvent()

#: The configuration :func:`configure_logging` asked for, not built yet.
_pending: Callable[[], None] | None = None


def _apply_pending() -> None:
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending()


def _merge_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The context's keys, under what the call itself passed (the call wins)."""
    return {**_current(), **event_dict}


def bind(**context: str | None) -> None:
    """Add ``rig``/``polecat``/``bead`` (or any key) to every later line of this context."""
    _context.set({**_current(), **{k: v for k, v in context.items() if v is not None}})


@contextmanager
def bound(**context: str | None) -> Iterator[None]:
    """Like :func:`bind`, for the duration of a ``with`` block."""
    token = _context.set({**_current(),
                          **{k: v for k, v in context.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class _FirstUse:
    """A logger that imports structlog and applies the configuration at its first use."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self._initial = initial
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            import structlog

            _apply_pending()
            self._logger = structlog.get_logger(**self._initial)
        return getattr(self._logger, name)


def get_logger(**initial: Any) -> Any:
    """A structlog logger; the configured pipeline applies (built at its first use)."""
    return _FirstUse(initial)

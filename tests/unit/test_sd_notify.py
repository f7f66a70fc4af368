"""sd_notify: one datagram to $NOTIFY_SOCKET, received by a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.supervisor.sd_notify import notify


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, Path]]:
    """A datagram socket standing in for systemd, in a short directory (sun_path is 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="gt-") as directory:
        path = Path(directory) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(10)
            yield sock, path


def test_unset_socket_is_not_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $NOTIFY_SOCKET nothing is sent and the answer is False."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_ready_reaches_the_socket(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, Path]
) -> None:
    """READY=1 arrives as one datagram."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1") is True
    assert sock.recv(4096) == b"READY=1"


def test_lines_are_joined_with_newlines(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, Path]
) -> None:
    """Several assignments travel together in one datagram, one per line."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1", "STATUS=3 roles up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 roles up"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading @ addresses the abstract namespace."""
    name = f"gastown-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_missing_socket_is_not_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A socket that does not exist (systemd restarted, unit misconfigured) gives False."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False

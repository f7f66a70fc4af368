"""The town's CLI fork server runs commands exactly as the command itself would.

Real processes throughout: the server (``python -m gastown.supervisor.cli_server``) on a
real town, and the real ``gastown`` client, whose output, exit status and side effects are
compared with the same command run in its own process (``GASTOWN_CLI_SERVER=0``).
"""

from __future__ import annotations

import json
import marshal
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.supervisor.cli._remote import SOCKET_NAME
from tests.conftest import Cli, make_remote
from tests.e2e.town_helpers import new_town_root, tear_down_town
from tests.waiting import wait_until


def _start_server(root: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "gastown.supervisor.cli_server",
                               "--town", str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    assert "listening" in line, line + server.stdout.read().decode()
    return server


@pytest.fixture
def served(cli: Cli, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A town with one rig and its CLI server (no supervisor: the server needs none)."""
    root = new_town_root()
    cli.ok("install", str(root))
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(make_remote(tmp_path / "remote.git")))
    server = _start_server(root)
    try:
        yield root, server
    finally:
        server.terminate()
        server.wait(10)
        tear_down_town(cli, root)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _titled_children(pid: int, title: bytes) -> list[int]:
    """The children of `pid` whose command line starts with `title` (ones that vanish
    while we look are skipped)."""
    found = []
    for child in _children_of(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(title):
                found.append(child)
        except OSError:
            continue
    return found


def _run(cli: Cli, *args: str, local: bool, cwd: Path | None = None,
         stdin: str | None = None) -> tuple[int, str, str]:
    env = dict(cli.env, GASTOWN_CLI_SERVER="0") if local else cli.env
    proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", *args],
                          cwd=cwd or cli.cwd, env=env, capture_output=True, text=True,
                          input=stdin, timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_commands_print_and_exit_as_when_run_alone(
        cli: Cli, served: tuple[Path, subprocess.Popen[bytes]]) -> None:
    root, _server = served
    bead = cli.ok("bead", "create", "first", "--rig", "web", "-p", "1").strip()
    for args in (["bead", "list"], ["bead", "list", "--json"], ["bead", "show", bead],
                 ["status"], ["status", "--json"], ["rig", "list"], ["config", "show"],
                 ["bead", "show", "web-nope"], ["bead", "frob"], ["sling"],
                 ["polecat", "list", "--json"], ["mq", "list"]):
        remote, alone = _run(cli, *args, local=False), _run(cli, *args, local=True)
        # Ages and uptimes may tick between the two runs: numbers are compared as '#'.
        remote = (remote[0], re.sub(r"\d+", "#", remote[1]), remote[2])
        alone = (alone[0], re.sub(r"\d+", "#", alone[1]), alone[2])
        assert remote == alone, args
    assert _run(cli, "bead", "show", "web-nope", local=False)[0] == 1
    assert _run(cli, "bead", "frob", local=False)[0] == 2
    del root


def test_the_command_runs_with_the_clients_working_directory_and_environment(
        cli: Cli, served: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """(The client's stdin reaches the command too: Claude's Stop hook hands its JSON to
    `gastown agent-hook` on stdin, covered by tests/e2e/test_real_agents.py.)"""
    root, _server = served
    # Found by walking up from the client's working directory: no GASTOWN_TOWN.
    del cli.env["GASTOWN_TOWN"]
    inside = root / "web"
    code, out, err = _run(cli, "bead", "create", "found by cwd", "--rig", "web",
                          local=False, cwd=inside)
    assert code == 0, err
    bead = out.strip()
    # Outside any town, the variable names it: the client's environment counts.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _run(cli, "bead", "list", local=False, cwd=elsewhere)[0] == 1  # no town here
    cli.env["GASTOWN_TOWN"] = str(root)
    listed = json.loads(_run(cli, "bead", "list", "--json", local=False, cwd=elsewhere)[1])
    assert bead in {b["id"] for b in listed}


def test_a_signal_to_the_client_reaches_the_command(
        cli: Cli, served: tuple[Path, subprocess.Popen[bytes]]) -> None:
    _root, server = served
    env = dict(cli.env, GASTOWN_FAULTS="cli@command.start=pause:600")
    client = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "bead", "list"],
                              cwd=cli.cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    children = wait_until(lambda: _titled_children(server.pid, b"gastown bead list"),
                          timeout=30, what="the forked command")
    client.send_signal(signal.SIGINT)
    _out, err = client.communicate(timeout=30)
    assert client.returncode == 130, err
    assert "gastown: interrupted" in err
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
               timeout=30, what="the forked command gone")


def test_a_command_killed_by_a_signal_is_reported_not_run_again(
        cli: Cli, served: tuple[Path, subprocess.Popen[bytes]]) -> None:
    _root, server = served
    before = cli.ok("bead", "list", "--json")
    env = dict(cli.env, GASTOWN_FAULTS="cli@command.start=pause:600")
    client = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "bead", "create",
                               "never", "--rig", "web"], cwd=cli.cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Its title is set after it confirmed its pid to the client: from then on the command
    # is the child's (a child killed before that is the client's to run itself). The
    # server may still have the previous command's child, exiting: pick this one by title.
    (child,) = wait_until(lambda: _titled_children(server.pid, b"gastown bead create"),
                          timeout=30, what="the command to confirm it runs")
    os.kill(child, signal.SIGKILL)
    _out, _err = client.communicate(timeout=30)
    assert client.returncode == 128 + signal.SIGKILL
    assert cli.ok("bead", "list", "--json") == before  # nothing ran a second time


def test_without_a_server_the_command_runs_itself(cli: Cli, tmp_path: Path) -> None:
    """No socket, or a socket nobody listens on (a server that died): the client runs the
    command in its own process, with the same result."""
    root = new_town_root()
    cli.ok("install", str(root))
    cli.env["GASTOWN_TOWN"] = str(root)
    try:
        assert cli("bead", "list").code == 0
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(root / ".runtime" / SOCKET_NAME))
        stale.close()  # the file stays, nobody accepts
        assert cli("bead", "list").code == 0
        assert cli("bead", "show", "web-nope").code == 1
    finally:
        tear_down_town(cli, root)


def test_the_server_leaves_with_its_lifeline(cli: Cli) -> None:
    """The supervisor's lifeline closing (the supervisor was killed) stops the server;
    a command it forked earlier runs on to its end."""
    root = new_town_root()
    cli.ok("install", str(root))
    read_fd, write_fd = os.pipe()
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "gastown.supervisor.cli_server", "--town", str(root)],
            env=dict(os.environ, GASTOWN_LIFELINE_FD=str(read_fd)), pass_fds=(read_fd,),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.close(read_fd)
        assert server.stdout is not None
        assert "listening" in server.stdout.readline().decode()
        os.close(write_fd)
        server.wait(30)
        assert not (root / ".runtime" / SOCKET_NAME).exists()
    finally:
        tear_down_town(cli, root)


def test_a_client_of_another_gastown_version_is_refused_before_anything_runs(
        served: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """A command from another gastown (upgraded while the town is up) is refused before
    a child is forked, so that its client runs it with its own code."""
    root, server = served
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(root / ".runtime" / SOCKET_NAME))
    request = marshal.dumps({"argv": ["bead", "list"], "env": dict(os.environ),
                             "umask": 0o022, "version": "0.0.0-other"})
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        socket.send_fds(conn, [struct.pack(">I", len(request)) + request], [0, 1, 2, cwd])
    finally:
        os.close(cwd)
    assert conn.recv(100) == b"refused 1\n"
    conn.close()
    assert _children_of(server.pid) == []

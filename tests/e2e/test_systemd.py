"""Running under systemd: sd_notify (readiness, status, watchdog, stopping) and reload.

A test plays systemd's part: a datagram socket passed as ``NOTIFY_SOCKET`` collects
what the supervisor says, as systemd would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    new_town_root,
    role_history,
    role_processes,
    roles_by_name,
    tear_down_town,
    wait_until,
)


@pytest.fixture
def town(cli: Cli, tmp_path: Path) -> Iterator[Path]:
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text('[supervisor]\nstop_timeout = "3s"\n'
                                    'restart_delay = "0.05s"\n')
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(make_remote(tmp_path / "web")))
    cli.ok("rig", "add", "api", str(make_remote(tmp_path / "api")))
    yield root
    tear_down_town(cli, root)


class FakeSystemd:
    """Collects sd_notify datagrams on a real AF_UNIX socket, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            with self._arrived:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))
                self._arrived.notify_all()

    def lines(self, prefix: str, after: float = 0.0) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix) and t > after]

    def wait(self, prefix: str, *, count: int = 1, after: float = 0.0,
             timeout: float = 90.0) -> list[tuple[float, str]]:
        """The lines starting with ``prefix`` that arrived after ``after``, once there are
        ``count``; fewer (maybe none) if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(found := self.lines(prefix, after)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
        return found

    def quiet(self, prefix: str, *, gap: float, timeout: float = 90.0) -> float:
        """Wait until no ``prefix`` line arrived for ``gap`` seconds; the time it began."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            since = time.monotonic()
            if not self.wait(prefix, after=since, timeout=gap):
                return since
        raise AssertionError(f"{prefix} lines never stopped for {gap}s within {timeout}s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_sd_notify_ready_status_watchdog_stopping(cli: Cli, town: Path, tmp_path: Path) -> None:
    """READY after the roles are up, STATUS lines, WATCHDOG pings that stop when the
    supervision loop hangs and resume after, STOPPING on SIGTERM; children see none of it."""
    notify_path = Path(tempfile.mkdtemp(prefix="gn", dir="/tmp")) / "notify"
    systemd = FakeSystemd(notify_path)
    hang = tmp_path / "hang"
    env = {**cli.env, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "600000",
           "GASTOWN_FAULTS": f"supervisor@watchdog.tick=hang-while:{hang}"}
    proc = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "up", "--foreground"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert systemd.wait("READY=1"), "no READY=1"
        assert all(r["state"] == "running" for r in roles_by_name(cli).values())
        status = [m for _, m in systemd.lines("STATUS=")]
        assert any("5/5 roles up, 0 polecats working, 0 MRs queued" in m for m in status)
        assert len(systemd.wait("WATCHDOG=1", count=3)) >= 3, "no 3 watchdog pings"
        for pid in role_processes(town).values():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in environ)

        hang.touch()  # the next tick blocks the supervisor's event loop
        # A tick already past its fail point may still ping: the pings stop (none for two
        # intervals), then none comes for 2 s more while the loop is hung.
        hung_from = systemd.quiet("WATCHDOG=1", gap=0.6, timeout=60)
        assert systemd.wait("WATCHDOG=1", after=hung_from, timeout=2.0) == []
        hang.unlink()
        assert systemd.wait("WATCHDOG=1", after=hung_from), "pings did not resume"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        stopping = systemd.lines("STOPPING=1")
        assert stopping and systemd.lines("EXTEND_TIMEOUT_USEC=")
    finally:
        if proc.poll() is None:
            proc.kill()
        systemd.close()
        shutil.rmtree(notify_path.parent, ignore_errors=True)


def test_reload_restarts_only_the_changed_rigs_refinery(cli: Cli, town: Path,
                                                       feed: FeedWaiter) -> None:
    """A new gate command restarts refinery:web only; a broken town.toml is refused."""
    cli.ok("up")
    before = role_processes(town)
    mark = feed.mark()
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + '[[merge_queue.gates]]\nname = "test"\n'
                        'command = "true"\n')
    assert cli.ok("reload").strip() == "reloaded; restarted: refinery:web"
    feed.wait("role_ready", role="refinery:web", after=mark,
              where=lambda e: e["pid"] != before["refinery:web"], what="refinery:web to be back")
    assert roles_by_name(cli)["refinery:web"]["state"] == "running"
    after = role_processes(town)
    assert after["refinery:web"] != before["refinery:web"]
    assert {n: p for n, p in after.items() if n != "refinery:web"} == {
        n: p for n, p in before.items() if n != "refinery:web"}, role_history(cli, "witness")

    good = (town / "town.toml").read_text()
    (town / "town.toml").write_text(good + "max_polecat = 3\n")
    result = cli("reload")
    assert result.code == 1 and "reload refused" in result.err
    assert "max_polecat" in result.err and str(town / "town.toml") in result.err
    assert role_processes(town) == after
    assert all(r["state"] == "running" for r in roles_by_name(cli).values())
    (town / "town.toml").write_text(good)


def test_sighup_reloads(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """SIGHUP to the supervisor (systemctl reload) reloads like 'gastown reload'."""
    cli.ok("up")
    before = role_processes(town)
    mark = feed.mark()
    rig_toml = town / "api" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + "[polecats]\nmax_respawns = 5\n")
    supervisor = int(json.loads(cli.ok("status", "--json"))["supervisor"]["pid"])
    os.kill(supervisor, signal.SIGHUP)
    feed.wait("role_ready", role="witness:api", after=mark,
              where=lambda e: e["pid"] != before["witness:api"],
              what="witness:api to be restarted")
    after = role_processes(town)
    assert after.get("witness:api") not in (None, before["witness:api"])
    assert {n: p for n, p in after.items() if n != "witness:api"} == {
        n: p for n, p in before.items() if n != "witness:api"}
    assert "configuration reloaded" in cli.ok("feed")


def parse_journal(datagram: bytes) -> dict[str, str]:
    """Decode one native-protocol datagram (``KEY=value`` lines and the binary form)."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields[line.decode()] = after[8:8 + size].decode()
            rest = after[8 + size + 1:]
    return fields


def test_journald_gets_fields_for_role_rig_polecat_and_bead(cli: Cli, town: Path,
                                                             tmp_path: Path) -> None:
    """Under journald every process logs natively with role, rig, polecat and bead as
    fields, and nothing twice on stderr."""
    journal_path = Path(tempfile.mkdtemp(prefix="gj", dir="/tmp")) / "journal"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal_path))
    sock.settimeout(0.2)
    received: list[dict[str, str]] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                received.append(parse_journal(sock.recv(1 << 20)))
            except TimeoutError:
                continue

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    (town / "town.toml").write_text((town / "town.toml").read_text() +
                                    '[agents.sleeper]\ncommand = ["sleep", "600"]\n'
                                    '[sessions]\nbackend = "process"\n')
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**cli.env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
               "GASTOWN_JOURNAL_SOCKET": str(journal_path)}
        proc = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "up",
                                 "--foreground"], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        wait_until(lambda: len(role_processes(town)) == 5 and all(
            r["state"] == "running" for r in roles_by_name(cli).values()), what="the town")
        bead = cli.ok("bead", "create", "j", "--rig", "web").strip()
        name = cli.ok("sling", bead, "web", "--agent", "sleeper").split()[0]
        wait_until(lambda: any(f.get("GASTOWN_EVENT") == "polecat_slung" for f in received),
                   what="the mayor's sling line in the journal")
        slung = next(f for f in received if f.get("GASTOWN_EVENT") == "polecat_slung")
        assert slung["GASTOWN_ROLE"] == "mayor" and slung["GASTOWN_RIG"] == "web"
        assert slung["GASTOWN_BEAD"] == bead and slung["GASTOWN_POLECAT"] == name
        assert slung["SYSLOG_IDENTIFIER"] == "gastown" and slung["PRIORITY"] == "6"
        assert slung["MESSAGE"].startswith("mayor polecat_slung") and bead in slung["MESSAGE"]
        file_lines = [json.loads(line) for line in
                      (town / "logs" / "mayor.log").read_text().splitlines()]
        in_file = next(r for r in file_lines if r["event"] == "polecat_slung")
        assert (in_file["role"], in_file["rig"], in_file["bead"], in_file["polecat"]) == (
            "mayor", "web", bead, name)
        roles = {f.get("GASTOWN_ROLE") for f in received}
        assert {"supervisor", "mayor", "witness:web", "refinery:api"} <= roles
        witness = next(f for f in received if f.get("GASTOWN_ROLE") == "witness:web")
        assert witness["GASTOWN_RIG"] == "web"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "role_ready" not in stderr_path.read_text()  # once, in the journal only
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("down", "--all")
        stop.set()
        thread.join(5)
        sock.close()
        shutil.rmtree(journal_path.parent, ignore_errors=True)

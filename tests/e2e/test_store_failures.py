"""A disk or a store that cannot be written: one ``gastown:`` line, exit 1, data intact.

Real failures, not mocks: a small tmpfs filled to the last block (needs ``mount``: root,
skipped elsewhere), the same tmpfs remounted read-only, and ``RLIMIT_FSIZE`` (any user)
so that the kernel refuses every write of the CLI process.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, CliResult, git, make_repo


def _bare_repo(tmp_path: Path) -> Path:
    make_repo(tmp_path / "src")
    git("clone", "-q", "--bare", str(tmp_path / "src"), str(tmp_path / "web.git"), cwd=tmp_path)
    return tmp_path / "web.git"


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, or a skip where this user may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    """Write zeros until the filesystem refuses (ENOSPC)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def _holder(db: Path) -> sqlite3.Connection:
    """A connection reading the store, like a running role: the -wal and -shm stay open."""
    conn = sqlite3.connect(db)
    conn.execute("SELECT COUNT(*) FROM beads").fetchall()
    return conn


def _intact(cli: Cli, db: Path, beads: list[str]) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert [b["id"] for b in json.loads(cli.ok("bead", "list", "--json"))] == beads


def _one_line(result: CliResult, message: str) -> None:
    assert result.code == 1, result
    assert result.err.count("\n") == 1 and result.err.startswith("gastown: "), result.err
    assert message in result.err, result.err


def test_full_disk_is_one_line_and_nothing_is_lost(cli: Cli, small_disk: Path,
                                                  tmp_path: Path) -> None:
    """bead create and sling on a full disk: one line each, exit 1; after space is freed
    every bead is there, the database is sound, and the same commands work."""
    town = small_disk / "town"
    cli.ok("install", str(town))
    cli.env["GASTOWN_TOWN"] = str(town)
    cli.ok("rig", "add", "web", str(_bare_repo(tmp_path)))
    beads = [cli.ok("bead", "create", f"bead {i}", "--rig", "web").strip() for i in range(3)]
    holder = _holder(town / "state.db")
    try:
        _fill(small_disk)
        full = f"gastown: the store at {town / 'state.db'} could not be written: " \
               "database or disk is full\n"
        assert cli("bead", "create", "one more").err == full
        _one_line(cli("bead", "create", "one more"), "database or disk is full")
        _one_line(cli("sling", beads[0], "web"), "database or disk is full")
    finally:
        holder.close()
    # Without a running town's connection SQLite cannot even set up its WAL index.
    _one_line(cli("bead", "create", "one more"), f"the store at {town / 'state.db'} could not")
    (small_disk / "filler").unlink()
    _intact(cli, town / "state.db", beads)
    assert "queued" in cli.ok("sling", beads[0], "web")


def test_read_only_filesystem_is_one_line(cli: Cli, small_disk: Path) -> None:
    """A town on a filesystem remounted read-only: one line naming the first file that
    cannot be written (the CLI's log, opened before the store), exit 1, nothing lost."""
    town = small_disk / "town"
    cli.ok("install", str(town))
    cli.env["GASTOWN_TOWN"] = str(town)
    beads = [cli.ok("bead", "create", "before").strip()]
    assert _mount("-o", "remount,ro", str(small_disk))
    try:
        _one_line(cli("bead", "create", "after"), "Read-only file system")
        _one_line(cli("sling", beads[0], "web"), "Read-only file system")
    finally:
        assert _mount("-o", "remount,rw", str(small_disk))
    _intact(cli, town / "state.db", beads)


def _size_limited(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _limited_cli(cli: Cli, *args: str) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", *args], cwd=cli.cwd,
                          env=cli.env, capture_output=True, text=True, timeout=120,
                          check=False, preexec_fn=lambda: _size_limited(1))
    assert "Traceback" not in proc.stderr, proc.stderr
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_writes_refused_by_the_kernel_are_one_line(cli: Cli, town: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (no root needed): every write of the CLI fails with EFBIG, which SQLite
    reports as an I/O error; bead create and sling say so in one line, nothing is lost."""
    cli.ok("rig", "add", "web", str(_bare_repo(tmp_path)))
    beads = [cli.ok("bead", "create", f"bead {i}", "--rig", "web").strip() for i in range(2)]
    store = f"the store at {town / 'state.db'} could not be"
    _one_line(_limited_cli(cli, "bead", "create", "more"), store + " opened: disk I/O error")
    holder = _holder(town / "state.db")
    try:
        _one_line(_limited_cli(cli, "bead", "create", "more"), store + " written: disk I/O error")
        _one_line(_limited_cli(cli, "sling", beads[1], "web"), store + " written: disk I/O error")
    finally:
        holder.close()
    _intact(cli, town / "state.db", beads)
    assert os.path.getsize(town / "state.db") > 0

"""``gastown service``: the rendered unit passes systemd's own verifier, and the real CLI
writes it where systemd looks, refuses another town's unit, and removes it again.

Nothing here talks to a running systemd: ``systemd-analyze verify`` loads units offline,
and the install tests put a fake ``systemctl`` (or none) first on ``PATH``.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.supervisor.service import Mode, render_unit, town_of_unit, unit_name
from tests.conftest import Cli, CliResult, make_remote

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (CI installs the systemd package)")


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR: ``systemd-analyze --user`` needs one to start."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="gtsd"))
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def verify(unit: Path, mode: Mode, runtime_dir: Path) -> None:
    """Run ``systemd-analyze [--user] verify``; fail on any complaint about ``unit``.

    verify exits 0 even for unknown keys or unparsable values (it only warns), so every
    output line naming the unit counts as a failure too. A ``--user`` run needs a runtime
    directory; where the user manager cannot be set up at all, the unit is verified as a
    system unit instead (the settings are the same; only ``WantedBy=default.target``
    differs, and that target exists in both managers).
    """
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_LOG_LEVEL": "notice"}
    argv = [SYSTEMD_ANALYZE, *(["--user"] if mode == "user" else []), "verify", str(unit)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    if mode == "user" and "Failed to initialize manager" in result.stderr:
        argv.remove("--user")
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                                check=False)
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if unit.name in line]
    assert result.returncode == 0, output
    assert complaints == [], output


def setting(text: str, key: str) -> str:
    """The value of the one ``key=`` line of a unit."""
    values = re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return str(values[0])


def fake_systemctl(bin_dir: Path, *, exit_code: int) -> Path:
    """A ``systemctl`` that records its arguments in ``calls`` beside it and exits."""
    bin_dir.mkdir(exist_ok=True)
    calls = bin_dir / "calls"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n'
                      f'echo "Failed to connect to bus" >&2\nexit {exit_code}\n')
    script.chmod(0o755)
    return calls


@pytest.fixture
def service_cli(cli: Cli, town: Path, tmp_path: Path) -> Cli:
    """``cli`` on ``town`` with no systemctl on PATH and no XDG_CONFIG_HOME."""
    cli.env.pop("XDG_CONFIG_HOME", None)
    cli.env["PATH"] = str(tmp_path / "bin")
    return cli


def user_unit(home: Path, town: Path) -> Path:
    return home / ".config" / "systemd" / "user" / unit_name(town)


@needs_analyze
@pytest.mark.parametrize("mode", ["user", "system"])
def test_rendered_unit_passes_systemd_analyze_verify(
        mode: Mode, town: Path, tmp_path: Path, runtime_dir: Path) -> None:
    """The unit for --user and --system loads without a single complaint from systemd."""
    text = render_unit(python=sys.executable, town=town, mode=mode,
                       user="root" if mode == "system" else None, stop_timeout=10, roles=3)
    unit = tmp_path / "units" / unit_name(town)
    unit.parent.mkdir()
    unit.write_text(text)
    verify(unit, mode, runtime_dir)
    argv = shlex.split(setting(text, "ExecStart"))
    assert argv[0] == sys.executable and Path(argv[0]).is_absolute()
    assert Path(argv[0]).exists()
    assert argv[1:] == ["-m", "gastown.supervisor", "--town", str(town), "up", "--foreground"]
    assert Path(argv[4]).is_absolute() and (Path(argv[4]) / "town.toml").is_file()
    assert setting(text, "Type") == "notify"
    assert setting(text, "KillMode") == "process"
    assert ("User=root" in text.splitlines()) == (mode == "system")
    assert setting(text, "WantedBy") == ("default.target" if mode == "user"
                                         else "multi-user.target")


@needs_analyze
def test_unit_escapes_spaces_and_percent_in_paths(
        cli: Cli, tmp_path: Path, runtime_dir: Path) -> None:
    """Paths with a space and a '%' reach systemd intact: verify finds the interpreter."""
    town = tmp_path / "my town %i"
    cli.ok("install", str(town))
    python_dir = tmp_path / "py env %h"
    python_dir.mkdir()
    (python_dir / "python").symlink_to(sys.executable)
    text = render_unit(python=str(python_dir / "python"), town=town, mode="system",
                       user="root", stop_timeout=10, roles=1)
    unit = tmp_path / unit_name(town)
    unit.write_text(text)
    verify(unit, "system", runtime_dir)
    assert town_of_unit(text) == town


def test_install_dry_run_prints_the_unit_and_writes_nothing(
        service_cli: Cli, town: Path, tmp_path: Path) -> None:
    """``install --dry-run`` prints the unit and its destination, and creates no file."""
    home = tmp_path / "home"
    result = service_cli("service", "install", "--dry-run")
    assert result.code == 0, result.err
    assert result.out.startswith("# Generated by `gastown service install --user`")
    assert f"--town {town} up --foreground" in setting(result.out, "ExecStart")
    assert str(user_unit(home, town)) in result.err
    assert not (home / ".config").exists()


@pytest.mark.parametrize("systemctl", ["absent", "failing", "working"])
def test_install_user_writes_the_unit_and_uninstall_removes_it(
        systemctl: str, service_cli: Cli, town: Path, tmp_path: Path) -> None:
    """``install --user`` writes under $HOME whatever systemctl does; ``uninstall`` removes it."""
    home = tmp_path / "home"
    calls = None
    if systemctl != "absent":
        calls = fake_systemctl(tmp_path / "bin", exit_code=0 if systemctl == "working" else 1)
    expected = service_cli.ok("service", "install", "--dry-run")

    result = service_cli("service", "install", "--user")
    assert result.code == 0, result.err
    path = user_unit(home, town)
    assert path.read_text() == expected
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert "systemctl --user enable --now gastown-town.service" in result.out
    if calls is None:
        assert "systemctl not found" in result.err
    else:
        assert calls.read_text().splitlines() == ["--user daemon-reload"]
        assert ("warning:" in result.err) == (systemctl == "failing")

    wants = path.parent / "default.target.wants"
    wants.mkdir()
    (wants / path.name).symlink_to(path)
    result = service_cli("service", "uninstall")
    assert result.code == 0, result.err
    assert not path.exists()
    assert not (wants / path.name).is_symlink()
    result = service_cli("service", "uninstall")
    assert result.code == 1
    assert result.err.startswith("gastown: no unit at") and result.err.count("\n") == 1


def test_install_refuses_the_unit_of_another_town(
        service_cli: Cli, town: Path, tmp_path: Path) -> None:
    """A second town whose folder has the same name cannot overwrite the first one's unit."""
    service_cli.ok("service", "install")
    path = user_unit(tmp_path / "home", town)
    before = path.read_text()
    other = tmp_path / "elsewhere" / "town"
    service_cli.ok("install", str(other))
    result = service_cli("--town", str(other), "service", "install")
    assert result.code == 1
    assert result.err.startswith("gastown: ") and result.err.count("\n") == 1
    assert "another town" in result.err
    assert path.read_text() == before
    result = service_cli("--town", str(other), "service", "uninstall")
    assert result.code == 1 and path.exists()


def test_stop_timeout_covers_every_role(cli: Cli, town: Path, tmp_path: Path) -> None:
    """With 2 rigs (5 roles) and a 10 s stop_timeout, TimeoutStopSec is at least 5 x 10 s."""
    (town / "town.toml").write_text('[supervisor]\nstop_timeout = "10s"\n')
    for rig in ("web", "api"):
        repo = make_remote(tmp_path / f"{rig}-repo")
        cli.ok("rig", "add", rig, str(repo))
    text = cli.ok("service", "install", "--dry-run")
    timeout = setting(text, "TimeoutStopSec")
    assert timeout.endswith("s")
    assert int(timeout.removesuffix("s")) >= 5 * 10
    assert "5 role(s) x (10s" in text


def cli_with_euid(cli: Cli, euid: int, *args: str) -> CliResult:
    """The real CLI in a child process whose ``os.geteuid()`` answers ``euid``.

    Lets a root test run see what a normal user gets (and the reverse) without
    changing users; the process itself and everything it touches stay the same.
    """
    code = ("import os, sys\n"
            f"os.geteuid = lambda: {euid}\n"
            "from gastown.supervisor.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cli.cwd, env=cli.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_system_install_needs_root(service_cli: Cli) -> None:
    """``install --system`` by a normal user is refused in one line; --dry-run is not."""
    result = cli_with_euid(service_cli, 1000, "service", "install", "--system")
    assert result.code == 1
    assert result.err.startswith(
        "gastown: --system installs in /etc/systemd/system, which needs root")
    assert result.err.count("\n") == 1
    result = cli_with_euid(service_cli, 1000, "service", "install", "--system", "--dry-run")
    assert result.code == 0, result.err
    assert "[Service]" in result.out


def test_system_unit_runs_as_the_invoking_user_who_must_own_the_town(
        service_cli: Cli, town: Path) -> None:
    """Under sudo, User= is $SUDO_USER, and a town that user does not own is refused."""
    owner = pwd.getpwuid(town.stat().st_uid).pw_name
    service_cli.env["SUDO_USER"] = owner
    result = cli_with_euid(service_cli, 0, "service", "install", "--system", "--dry-run")
    assert result.code == 0, result.err
    assert f"User={owner}" in result.out.splitlines()
    stranger = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != town.stat().st_uid)
    service_cli.env["SUDO_USER"] = stranger
    result = cli_with_euid(service_cli, 0, "service", "install", "--system", "--dry-run")
    assert result.code == 1
    assert result.err.startswith(f"gastown: the town {town} belongs to {owner}, but the "
                                 f"service would run as {stranger}")

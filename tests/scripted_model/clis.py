"""The pinned real agent CLIs (Claude Code, Codex) for the tests, installed from npm.

``python -m tests.scripted_model.clis install`` installs them into
``${GASTOWN_AGENT_CLIS:-${XDG_CACHE_HOME:-~/.cache}/gastown/agent-clis}/<claude>+<codex>/``
(never into the repository); ``... clis path`` prints the bin folder. The install is
idempotent (skipped when both binaries answer ``--version`` with the pinned versions) and
atomic: npm installs into a temporary folder that is renamed into place, so an interrupted
install never leaves half a folder behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLAUDE_PACKAGE, CLAUDE_VERSION = "@anthropic-ai/claude-code", "2.1.197"
CODEX_PACKAGE, CODEX_VERSION = "@openai/codex", "0.171.0"

VERSION_TIMEOUT = 60.0
INSTALL_TIMEOUT = 1800.0


@dataclass(frozen=True)
class AgentClis:
    """The installed binaries (``node_modules/.bin/claude`` and ``.../codex``)."""

    bin_dir: Path

    @property
    def claude(self) -> Path:
        return self.bin_dir / "claude"

    @property
    def codex(self) -> Path:
        return self.bin_dir / "codex"


def cache_root() -> Path:
    """Where the pinned installs live (one sub-folder per pair of versions)."""
    explicit = os.environ.get("GASTOWN_AGENT_CLIS")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "gastown" / "agent-clis"


def install_dir() -> Path:
    return cache_root() / f"{CLAUDE_VERSION}+{CODEX_VERSION}"


def bin_dir_of(folder: Path) -> Path:
    return folder / "node_modules" / ".bin"


def _version(binary: Path) -> str:
    env = dict(os.environ, DISABLE_AUTOUPDATER="1")
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, env=env, timeout=VERSION_TIMEOUT,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{exc}>"
    return (result.stdout + result.stderr).strip()


def problem(folder: Path) -> str | None:
    """Why ``folder`` does not hold the pinned CLIs, or None when both answer correctly."""
    clis = AgentClis(bin_dir_of(folder))
    for binary, want in ((clis.claude, f"{CLAUDE_VERSION} (Claude Code)"),
                         (clis.codex, f"codex-cli {CODEX_VERSION}")):
        if not binary.exists():
            return f"{binary} is not installed"
        got = _version(binary)
        if want not in got:
            return f"{binary} --version said {got!r}, expected {want!r}"
    return None


def find() -> AgentClis | None:
    """The installed pinned CLIs, or None."""
    folder = install_dir()
    return AgentClis(bin_dir_of(folder)) if problem(folder) is None else None


class InstallError(Exception):
    """npm is missing or the install failed."""


def _run_postinstall(folder: Path, *, log: bool) -> bool:
    """Run claude-code's postinstall by hand (it links the native binary into bin/).

    Needed when npm skipped install scripts (``ignore-scripts``); without it
    ``bin/claude.exe`` is a stub that only prints an error. True when it ran.
    """
    script = folder / "node_modules" / CLAUDE_PACKAGE / "install.cjs"
    node = shutil.which("node")
    if node is None or not script.exists():
        return False
    if log:
        print(f"agent CLIs: node {script}", file=sys.stderr)
    subprocess.run([node, str(script)], cwd=script.parent, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=INSTALL_TIMEOUT, check=False)
    return True


def install(*, log: bool = True) -> AgentClis:
    """Install the pinned CLIs unless they are already there; returns them."""
    folder = install_dir()
    if problem(folder) is None:
        if log:
            print(f"agent CLIs: already installed in {folder}", file=sys.stderr)
        return AgentClis(bin_dir_of(folder))
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not installed (needed for the agent CLIs)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        command = [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                   "--save-exact", "--loglevel=error",
                   f"{CLAUDE_PACKAGE}@{CLAUDE_VERSION}", f"{CODEX_PACKAGE}@{CODEX_VERSION}"]
        if log:
            print(f"agent CLIs: {' '.join(command[1:])}", file=sys.stderr)
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=INSTALL_TIMEOUT, check=False)
        if result.returncode != 0:
            raise InstallError(f"npm install failed ({result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        why = problem(staging)
        if why is not None and _run_postinstall(staging, log=log):
            why = problem(staging)
        if why is not None:
            raise InstallError(f"npm installed something else: {why}")
        if folder.exists():
            # A broken earlier install, or one finished by a concurrent installer.
            if problem(folder) is None:
                return AgentClis(bin_dir_of(folder))
            shutil.rmtree(folder)
        try:
            staging.rename(folder)
        except OSError:
            if problem(folder) is not None:
                raise
        if log:
            print(f"agent CLIs: installed in {folder}", file=sys.stderr)
        return AgentClis(bin_dir_of(folder))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scripted_model.clis",
                                     description="the pinned agent CLIs for the tests")
    parser.add_argument("action", choices=["install", "path", "check"])
    args = parser.parse_args(argv)
    if args.action == "path":
        print(bin_dir_of(install_dir()))
        return 0
    if args.action == "check":
        why = problem(install_dir())
        print(why or f"ok: {bin_dir_of(install_dir())}")
        return 0 if why is None else 1
    try:
        install()
    except (InstallError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"gastown: agent CLIs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The CLI for people recovering kept work: editing and closing beads, seeing why work was
kept (bead show, mq show), queued slings, commands run from a removed directory, logs by
role kind, and checking a rig's gates on a clean checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli, git, make_repo


def run_in_removed_dir(cli: Cli, tmp_path: Path, *args: str,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``gastown *args`` from a directory removed after the shell entered it."""
    gone = tmp_path / "gone"
    gone.mkdir()
    argv = " ".join(f"'{a}'" for a in [sys.executable, "-m", "gastown.supervisor", *args])
    return subprocess.run(["sh", "-c", f"cd '{gone}' && rmdir '{gone}' && exec {argv}"],
                          env=env if env is not None else cli.env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_commands_work_from_a_removed_directory(cli: Cli, town: Path, tmp_path: Path) -> None:
    """With --town or $GASTOWN_TOWN a removed cwd does not matter; without, one line."""
    bead = cli.ok("bead", "create", "still here").strip()
    no_env = {k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"}
    result = run_in_removed_dir(cli, tmp_path, "--town", str(town), "bead", "show", bead,
                                env=no_env)
    assert result.returncode == 0, result.stderr
    assert "still here" in result.stdout and "Traceback" not in result.stderr
    for command in (["bead", "list"], ["status"], ["mq", "list"], ["feed"]):
        result = run_in_removed_dir(cli, tmp_path, *command)
        assert result.returncode == 0 and "Traceback" not in result.stderr, \
            (command, result.stderr)
    result = run_in_removed_dir(cli, tmp_path, "bead", "list", env=no_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gastown: ")
    assert "current directory no longer exists" in result.stderr
    result = run_in_removed_dir(cli, tmp_path, "done", env=no_env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gastown: ") and "Traceback" not in result.stderr

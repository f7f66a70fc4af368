"""What a short CLI command loads: nothing it does not use (every test and script pays it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli


def test_a_command_that_logs_nothing_does_not_load_structlog(cli: Cli, town: Path) -> None:
    """``bead list`` logs nothing: structlog (and asyncio with it) stay unloaded; ``bead
    create`` logs its line, in the town's CLI log, with the context."""
    code = ("import sys\n"
            "from gastown.supervisor.cli import main\n"
            f"status = main(['--town', {str(town)!r}, 'bead', 'list'])\n"
            "print(sorted({'structlog', 'asyncio', 'trio'} & set(sys.modules)), status)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=cli.env).stdout
    assert out.strip().endswith("[] 0"), out
    bead = cli.ok("bead", "create", "logged").strip()
    lines = [json.loads(line) for line in (town / "logs" / "cli.log").read_text().splitlines()]
    (created,) = [line for line in lines if line["event"] == "bead_created"]
    assert created["bead"] == bead and created["role"] == "cli"

"""``sling`` checks the rig's configuration before it queues anything: a broken rig.toml
is one line naming the file now, not a sling the mayor fails later."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli


def test_sling_refuses_a_broken_rig_toml_and_queues_nothing(
        cli: Cli, town: Path, git_repo: Path) -> None:
    cli.ok("rig", "add", "web", str(git_repo))
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + "\n[polecats]\nmax_polecat = 3\n")
    result = cli("sling", bead, "web")
    assert result.code == 1, result
    assert result.err.count("\n") == 1 and result.err.startswith(f"gastown: {rig_toml}")
    assert "max_polecat" in result.err
    shown = json.loads(cli.ok("bead", "show", bead, "--json"))
    assert shown["status"] == "open"
    assert not shown.get("queued_slings")
    status = json.loads(cli.ok("status", "--json"))
    assert not status.get("queued_slings")

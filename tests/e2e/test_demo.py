"""``make demo``'s program, run as a black box: it succeeds and leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.town_helpers import town_processes
from tests.scripted_model.clis import AgentClis


def test_demo_merges_rejects_and_cleans_up() -> None:
    """The demo exits 0 with the expected outcomes and no process of its town remains."""
    base = Path(tempfile.mkdtemp(prefix="gd", dir="/tmp"))
    try:
        proc = subprocess.run([sys.executable, "-m", "demo", "--dir", str(base)],
                              capture_output=True, text=True, timeout=300, check=False,
                              cwd=Path(__file__).parents[2])
        out = proc.stdout
        assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
        outcomes = out.split("== outcomes ==", 1)[1]
        for title in ("Add subtraction", "Add integer division", "Add power", "Add mean"):
            assert re.search(rf"{title} +merged as [0-9a-f]{{10}}", outcomes), title
        pair = re.findall(r"Release as \S+ +(merged as [0-9a-f]{10}|rejected: conflict: "
                          r"calc/version.py)", outcomes)
        assert sorted(o.split()[0] for o in pair) == ["merged", "rejected:"]
        assert re.search(r"Make add faster +rejected: gate test \(exit 1\)", outcomes)
        assert "all as expected" in out and "demo finished in" in out
        assert "no process of the town is left" in out
        assert town_processes(base / "town") == {}
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.agent_cli
@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_demo_with_a_real_agent_cli(agent: str, agent_clis: AgentClis) -> None:
    """``make demo AGENT=claude|codex``: the same town and outcomes with the real CLI in
    every polecat, driven by the scripted model server (tests/scripted_model/demo.py)."""
    base = Path(tempfile.mkdtemp(prefix="gd", dir="/tmp"))
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.scripted_model.demo", agent,
                               "--dir", str(base)], capture_output=True, text=True,
                              timeout=300, check=False, cwd=Path(__file__).parents[2],
                              env={**os.environ,
                                   "GASTOWN_AGENT_CLIS": str(agent_clis.bin_dir.parents[2])})
        out = proc.stdout
        assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
        assert f'default_agent = "{agent}"' in out
        assert "all as expected" in out and "no process of the town is left" in out
        assert re.search(r"turn \d+ ended: [\d.k]+ in", out), "no agent turn in the feed"
        assert town_processes(base / "town") == {}
    finally:
        shutil.rmtree(base, ignore_errors=True)

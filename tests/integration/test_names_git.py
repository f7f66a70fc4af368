"""Our name rules against git's own: nothing we accept is refused by git."""

from __future__ import annotations

import subprocess

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gastown.roles.core.names import name_problem

NAMEISH = st.text(alphabet=st.sampled_from(list("ab.-/_@{~^:?*[\\ \t\x01é1")), min_size=1,
                  max_size=12)


def git_accepts_branch(name: str) -> bool:
    result = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True,
                            check=False)
    return result.returncode == 0


@given(NAMEISH)
@example("polecat/..")
@example("a.lock/b")
@example("a/.b")
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_accepted_name_is_a_valid_git_branch(name: str) -> None:
    """If we accept a name (as a branch or a polecat), git accepts it as a branch name."""
    for kind in ("branch", "polecat"):
        if name_problem(kind, name) is None:
            assert git_accepts_branch(name), (kind, name)
            assert git_accepts_branch(f"polecat/{name}"), (kind, name)

"""The landed verdict and its phrases, from facts alone (no git)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.adapters.landed import (
    Facts,
    kept_problems,
    nuke_problems,
    plural,
    removal_problems,
)

COMMITS = st.frozensets(st.sampled_from(["a1", "b2", "c3", "d4"]))
FACTS = st.builds(Facts, dirty=st.integers(0, 3), stray=st.booleans(),
                  detached=st.booleans(), not_on_local=COMMITS,
                  not_on_remote=st.none() | COMMITS,
                  missing=st.lists(st.sampled_from(["", "gone"]), max_size=2).map(tuple))


@given(FACTS)
def test_a_commit_is_unlanded_only_when_on_neither_branch(facts: Facts) -> None:
    """Unlanded = not on local and (when the remote was consulted) not on the remote."""
    remote = facts.not_on_remote
    expected = facts.not_on_local if remote is None else facts.not_on_local & remote
    assert facts.unlanded == expected


@given(FACTS)
def test_landed_means_no_phrase_for_every_command(facts: Facts) -> None:
    """Each command refuses (says something) exactly when the verdict is 'not landed'."""
    for problems in (nuke_problems(facts, "polecat/x", "main"),
                     removal_problems(facts, "main"), kept_problems(facts, "polecat/x")):
        assert (problems == []) == facts.landed
        assert all(p and "\n" not in p for p in problems)


@given(FACTS)
def test_landed_on_names_a_branch_holding_every_commit(facts: Facts) -> None:
    """'local' needs every commit on the local branch; 'remote' every one on the remote."""
    where = facts.landed_on
    if facts.missing:
        assert where is None
    elif not facts.not_on_local:
        assert where == "local"
    elif facts.not_on_remote == frozenset():
        assert where == "remote"
    else:
        assert where is None


def test_missing_refs_lose_nothing_but_prove_nothing() -> None:
    """A deleted branch holds nothing to lose; an MR head that is gone has not landed."""
    facts = Facts(missing=("polecat/gone",))
    assert facts.landed and facts.landed_on is None


def test_commits_on_either_branch_are_landed() -> None:
    """One commit only on the local default, one only on the remote: nothing unlanded,
    but no single branch holds both."""
    facts = Facts(not_on_local=frozenset({"b2"}), not_on_remote=frozenset({"a1"}))
    assert facts.unlanded == frozenset() and facts.landed and facts.landed_on is None


def test_each_command_keeps_its_wording() -> None:
    """The polecat nuke, crew removal and doctor phrases, as each has always printed them."""
    one = Facts(dirty=1, not_on_local=frozenset({"a1"}))
    two = Facts(dirty=2, not_on_local=frozenset({"a1", "b2"}))
    assert nuke_problems(one, "polecat/x", "main") == [
        "1 uncommitted change(s)", "1 commit(s) on polecat/x not on main"]
    assert removal_problems(one, "main") == ["1 uncommitted file", "1 commit not on main"]
    assert removal_problems(two, "trunk") == ["2 uncommitted files", "2 commits not on trunk"]
    assert kept_problems(two, "detached 0123456789") == [
        "2 uncommitted changes", "2 unmerged commits on detached 0123456789"]
    assert removal_problems(Facts(stray=True), "main") == [
        "no git worktree in its folder (stray files)"]
    assert plural(1, "commit") == "1 commit" and plural(0, "commit") == "0 commits"

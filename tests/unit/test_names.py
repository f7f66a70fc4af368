"""Name validation and bead-prefix derivation: pure rules, exhaustive tests."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.errors import UsageError
from gastown.roles.core.names import (
    MAX_NAME_LENGTH,
    bead_id,
    derive_prefix,
    name_problem,
    prefix_problem,
    validate_name,
)

#: One example per class of bad name the CLI must refuse (the issue's list, and git's).
BAD_NAMES = {
    "dot-dot traversal": "../x",
    "embedded dot-dot": "a..b",
    "slash": "a/b",
    "absolute path": "/etc",
    "leading dash": "-rf",
    "space": "my rig",
    "tab": "a\tb",
    "newline": "a\nb",
    "control character": "a\x07b",
    "DEL character": "a\x7fb",
    "empty": "",
    "too long": "x" * (MAX_NAME_LENGTH + 1),
    "git: tilde": "a~1",
    "git: caret": "a^b",
    "git: colon": "a:b",
    "git: question mark": "a?",
    "git: asterisk": "a*",
    "git: open bracket": "a[b",
    "git: backslash": "a\\b",
    "git: leading dot": ".hidden",
    "git: trailing dot": "name.",
    "git: .lock suffix": "x.lock",
    "git: @{": "a@{b",
    "git: lone @": "@",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
@pytest.mark.parametrize("kind", ["rig", "polecat", "crew"])
def test_bad_names_are_refused(kind: str, name: str) -> None:
    """Every class of bad name is refused with a UsageError (exit 2) naming the problem."""
    with pytest.raises(UsageError) as info:
        validate_name(kind, name)  # type: ignore[arg-type]
    assert info.value.exit_code == 2
    assert kind in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("name", ["web", "toast", "my-app", "app_2", "A1", "x" * MAX_NAME_LENGTH,
                                  "v1.2", "émile"])
def test_good_names_are_accepted(name: str) -> None:
    """Ordinary names pass unchanged."""
    assert validate_name("rig", name) == name


@pytest.mark.parametrize("branch", ["feature/login", "polecat/toast", "release/1.2/fix"])
def test_branches_may_have_slashes(branch: str) -> None:
    """Branch names may contain '/' between non-empty components, other names may not."""
    assert name_problem("branch", branch) is None
    assert name_problem("polecat", branch) is not None


@pytest.mark.parametrize("branch", ["a//b", "a/", "/a", "polecat/..", "a/.b", "a/b.lock"])
def test_bad_branch_components(branch: str) -> None:
    """Empty, hidden, dot-dot and .lock components are refused in branch names."""
    assert name_problem("branch", branch) is not None


def test_reserved_rig_names() -> None:
    """A rig cannot shadow the town's own folders."""
    assert name_problem("rig", "logs") is not None
    assert name_problem("polecat", "logs") is None


@given(st.text(max_size=80))
@settings(deadline=None)
def test_accepted_names_are_safe_path_components(name: str) -> None:
    """Whatever is accepted is a single, non-hidden path component without whitespace."""
    if name_problem("rig", name) is None:
        assert "/" not in name and ".." not in name and name not in ("", ".")
        assert not name.startswith(("-", "."))
        assert not any(c.isspace() or ord(c) < 0x20 for c in name)
        assert len(name) <= MAX_NAME_LENGTH


@given(st.text(min_size=1, max_size=30), st.sets(st.text(string.ascii_lowercase, min_size=2,
                                                          max_size=4), max_size=200))
@settings(deadline=None)
def test_derived_prefix_is_valid_and_free(rig: str, taken: set[str]) -> None:
    """A derived prefix is 2-4 lowercase letters and never one already taken."""
    prefix = derive_prefix(rig, taken)
    assert prefix_problem(prefix) is None
    assert prefix not in taken


@pytest.mark.parametrize(("rig", "taken", "expected"), [
    ("web", set(), "web"),
    ("gastown", set(), "ga"),
    ("my-app", set(), "ma"),
    ("frontend", {"fr"}, "fro"),
    ("web", {"web"}, "we"),
    ("42", set(), "ra"),
])
def test_prefix_examples(rig: str, taken: set[str], expected: str) -> None:
    """Derivation is predictable: short names as they are, initials, then leading letters."""
    assert derive_prefix(rig, taken) == expected


@given(st.integers(min_value=0))
def test_bead_ids_have_the_documented_shape(n: int) -> None:
    """Bead ids are ``<prefix>-<5 base36>``."""
    bid = bead_id("gt", n)
    assert bid.startswith("gt-") and len(bid) == 8
    assert all(c in string.digits + string.ascii_lowercase for c in bid[3:])


def test_bead_id_is_injective_below_36_pow_5() -> None:
    """Distinct numbers in range give distinct ids."""
    assert len({bead_id("ab", n) for n in range(0, 36**5, 9973)}) == len(range(0, 36**5, 9973))

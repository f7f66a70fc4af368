"""The core's value base: every subclass, direct or not, is a frozen dataclass."""

from __future__ import annotations

import dataclasses

import pytest

from gastown.roles.core.events import BY_KIND, MrStarted, RigAdded
from gastown.roles.core.frozen import Frozen
from gastown.roles.core.lifecycle import Merged, Nuke, Rejected


class _Base(Frozen):
    rig: str


class _Child(_Base):
    count: int = 0


def test_a_subclass_is_a_frozen_dataclass_of_its_fields_and_its_bases() -> None:
    child = _Child("web", 2)
    assert [f.name for f in dataclasses.fields(child)] == ["rig", "count"]
    assert child == _Child(rig="web", count=2) and hash(child) == hash(_Child("web", 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.rig = "api"  # type: ignore[misc]


def test_match_takes_them_apart_like_any_dataclass() -> None:
    def say(event: Merged | Rejected | Nuke) -> str:
        match event:
            case Merged():
                return "merged"
            case Rejected(reason):
                return f"rejected: {reason}"
            case Nuke(force=True):
                return "forced"
            case _:
                return "nuke"

    assert [say(e) for e in (Merged(), Rejected("red"), Nuke(force=True), Nuke())] == [
        "merged", "rejected: red", "forced", "nuke"]


def test_an_event_names_its_kind_where_it_is_declared() -> None:
    assert MrStarted.kind == "mr_started" and BY_KIND["mr_started"] is MrStarted
    assert [f.name for f in dataclasses.fields(MrStarted)] == ["rig", "polecat", "bead", "mr"]
    assert RigAdded("web", "wb", "/r", "main").kind == "rig_added"
    # No two classes share a wire name.
    assert len(BY_KIND) == len({cls.kind for cls in BY_KIND.values()})

"""The typed domain events: one class a kind, and what the events table stores of each.

The contract is the feed's JSON: every kind's wire name and data keys stay what they
were, so an event must survive ``to_row`` -> JSON -> ``from_row`` unchanged, a field
left ``UNSET`` must not be written while a ``None`` must, and no caller may write a
string kind past the dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.adapters.store import open_store
from gastown.roles.core._event_base import COLUMNS, UNSET, Unset
from gastown.roles.core.event_text import TEMPLATES, describe, describe_fields, flat
from gastown.roles.core.events import (
    BY_KIND,
    POLECAT_MOVES,
    BeadStatusChanged,
    DomainEvent,
    PolecatEscalated,
    from_row,
    to_row,
)
from gastown.roles.core.events_town import RoleRestartScheduled
from gastown.roles.core.lifecycle import POLECAT_STATES

ROOT = Path(__file__).resolve().parents[2]
CLASSES = typing.get_args(DomainEvent)


def _strategy(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a field's type that JSON keeps as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return st.one_of(*[_strategy(arg) for arg in typing.get_args(hint)])
    if typing.get_origin(hint) is tuple:
        return st.lists(st.text(max_size=8), max_size=3).map(tuple)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=12), int: st.integers(), bool: st.booleans(),
        float: st.floats(allow_nan=False, allow_infinity=False), type(None): st.none(),
        Unset: st.just(UNSET)}
    return simple[hint]


def _events() -> st.SearchStrategy[DomainEvent]:
    def build(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
        hints = typing.get_type_hints(cls)
        return st.builds(cls, **{f.name: _strategy(hints[f.name])
                                 for f in dataclasses.fields(cls)})
    return st.one_of(*[build(cls) for cls in CLASSES])


def _example(cls: type[DomainEvent]) -> DomainEvent:
    """One event of ``cls`` with every optional key present (and store-safe text)."""
    hints = typing.get_type_hints(cls)
    plain: dict[Any, Any] = {str: "x", int: 3, bool: True, float: 1.5}

    def value(hint: Any) -> Any:
        if typing.get_origin(hint) is tuple:
            return ("a", "b")
        options = [a for a in typing.get_args(hint) if a not in (Unset, type(None))] or [hint]
        return plain[options[0]]
    return cls(**{f.name: value(hints[f.name]) for f in dataclasses.fields(cls)})


def test_kinds_are_unique_and_every_class_has_one() -> None:
    kinds = [cls.kind for cls in CLASSES]
    assert len(kinds) == len(set(kinds)) == len(BY_KIND) == 54
    assert all(BY_KIND[cls.kind] is cls for cls in CLASSES)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)+", kind) for kind in kinds)


def test_every_lifecycle_state_but_spawning_has_its_event() -> None:
    assert set(POLECAT_MOVES) == set(POLECAT_STATES) - {"spawning"}
    assert all(cls.kind == f"polecat_{state}" for state, cls in POLECAT_MOVES.items())


def test_every_kind_but_the_silent_settlement_reads_as_a_sentence() -> None:
    assert {cls.kind for cls in CLASSES} - {cls.kind for cls in TEMPLATES} == {
        "agent_usage_settled"}


@settings(max_examples=400, deadline=None)
@given(_events())
def test_every_event_survives_the_row_and_json(event: DomainEvent) -> None:
    row = to_row(event)
    data = json.loads(json.dumps(row.data, sort_keys=True))
    assert from_row(row.kind, row.rig, row.polecat, row.bead, data) == event
    assert UNSET not in row.data.values()
    assert not set(row.data) & set(COLUMNS)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.kind)
def test_every_kind_round_trips_through_the_store(tmp_path: Path,
                                                  cls: type[DomainEvent]) -> None:
    event = _example(cls)
    with open_store(tmp_path / "state.db") as store:
        seq = store.last_event_seq()
        store.emit(event)
        [stored] = store.events_after(seq)
    assert stored.kind == cls.kind
    assert from_row(stored.kind, stored.rig, stored.polecat, stored.bead, stored.data) == event
    written = json.dumps(stored.as_json() | {"seq": 0, "ts": 0})
    assert written == json.dumps({"seq": 0, "ts": 0} | flat(to_row(event)))
    assert describe(event) == describe_fields(stored.as_json())


def test_an_unset_key_is_absent_and_a_none_is_written() -> None:
    moved = PolecatEscalated(rig="web", polecat="toast", bead=None, old="working",
                             reason=None, mr=None, tail="last words")
    row = to_row(moved)
    assert (row.kind, row.rig, row.polecat, row.bead) == ("polecat_escalated", "web",
                                                           "toast", None)
    assert json.dumps(row.data, sort_keys=True) == (
        '{"mr": null, "old": "working", "reason": null, "tail": "last words"}')
    changed = BeadStatusChanged(rig=None, bead="gt-abcde", polecat="toast", old="open",
                                new="hooked", reason=None)
    assert json.dumps(to_row(changed).data, sort_keys=True) == (
        '{"new": "hooked", "old": "open", "reason": null}')


def test_a_role_event_s_rig_is_its_role_s() -> None:
    event = RoleRestartScheduled(role="witness:web", state="backoff", pid=None, restarts=2,
                                 last_exit=-9, reason=None, delay=0.5)
    row = to_row(event)
    assert (row.kind, row.rig, row.data["role"], row.data["delay"]) == (
        "role_restarting", "web", "witness:web", 0.5)
    assert describe(event) == "witness:web restarting in 0.5s"


def test_no_caller_writes_a_string_kind() -> None:
    """Every event is built from its dataclass: no ``_emit(conn, "kind", ...)`` or
    ``emit("kind", ...)`` (or an f-string kind) anywhere in the package."""
    pattern = re.compile(r"""emit\(\s*(?:conn\s*,\s*)?f?["']""")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("roles", "supervisor")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             if pattern.search(line)]
    assert found == []

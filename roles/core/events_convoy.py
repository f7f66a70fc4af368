"""Pure: the events of convoys: created, beads added or removed, progress, landed, stuck.

Layer: roles/core. A family of kinds of its own (see :mod:`.events`, which lists every
kind in one union). The store writes each in the transaction that causes it: a convoy's
``convoy_progress``/``convoy_landed``/``convoy_stuck`` in the one that changed a bead of
it (see :mod:`.convoy` for which change is which event), exactly once per change.
"""

from __future__ import annotations

from ._event_base import _Event


class _ConvoyEvent(_Event):
    convoy: str
    title: str


class ConvoyCreated(_ConvoyEvent, kind="convoy_created"):
    beads: tuple[str, ...]
    rig: str | None
    state: str
    closed: int
    total: int


class ConvoyChanged(_ConvoyEvent, kind="convoy_changed"):
    """Beads were added to or removed from the convoy by hand."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    state: str
    closed: int
    total: int


class _ConvoyMoved(_ConvoyEvent):
    state: str
    closed: int
    total: int
    old: str


class ConvoyProgress(_ConvoyMoved, kind="convoy_progress"): ...


class ConvoyLanded(_ConvoyMoved, kind="convoy_landed"): ...


class ConvoyStuck(_ConvoyMoved, kind="convoy_stuck"):
    """The convoy is held up by ``bead`` (blocked, or its merge request rejected)."""

    bead: str
    reason: str


CONVOY_EVENTS = (ConvoyCreated, ConvoyChanged, ConvoyProgress, ConvoyLanded, ConvoyStuck)

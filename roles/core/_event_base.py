"""Pure: what every domain event is made of: the base classes, :data:`UNSET`, the columns.

Layer: roles/core. Private to the event modules (:mod:`.events`, :mod:`.events_town`, and
any module that adds a family of kinds); import events from :mod:`.events`, which lists
every kind in one union.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Final


class Unset(enum.Enum):
    UNSET = "unset"


#: A field its writer did not record: the key is absent from the event's data.
UNSET: Final = Unset.UNSET
COLUMNS: Final = ("rig", "polecat", "bead")


@dataclass(frozen=True)
class _Event:
    """A kind that adds no field to its base is a plain subclass (still a dataclass)."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class _RigEvent(_Event):
    rig: str


@dataclass(frozen=True)
class _PolecatEvent(_Event):
    rig: str
    polecat: str
    bead: str | None


@dataclass(frozen=True)
class _MrEvent(_PolecatEvent):
    """A merge request's event; a crew workspace's MR names the workspace as ``polecat``."""

    mr: str

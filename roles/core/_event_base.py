"""Pure: what every domain event is made of: the base classes, :data:`UNSET`, the columns.

Layer: roles/core. Private to the event modules (:mod:`.events`, :mod:`.events_town`, and
any module that adds a family of kinds); import events from :mod:`.events`, which lists
every kind in one union.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

from .frozen import Frozen


class Unset(enum.Enum):
    UNSET = "unset"


#: A field its writer did not record: the key is absent from the event's data.
UNSET: Final = Unset.UNSET
COLUMNS: Final = ("rig", "polecat", "bead")


class _Event(Frozen):
    """Every subclass is a frozen dataclass (:class:`.Frozen`), and names its wire
    ``kind`` where it is declared: ``class MrStarted(_MrEvent, kind="mr_started")``. A
    base that only adds fields (``_MrEvent``) names none."""

    kind: ClassVar[str]

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: object) -> None:
        if kind is not None:
            cls.kind = kind
        super().__init_subclass__(**kwargs)


class _RigEvent(_Event):
    rig: str


class _PolecatEvent(_Event):
    rig: str
    polecat: str
    bead: str | None


class _MrEvent(_PolecatEvent):
    """A merge request's event; a crew workspace's MR names the workspace as ``polecat``."""

    mr: str

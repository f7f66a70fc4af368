"""Pure: the events of bead dependencies: a need added to a bead, or removed from it.

Layer: roles/core. A family of kinds of its own (see :mod:`.events`, which lists every kind
in one union); ``rig`` and ``bead`` are the needing bead's, ``need`` and ``need_rig`` the
needed bead's (a need may be in another rig).
"""

from __future__ import annotations

from ._event_base import _Event


class _NeedEvent(_Event):
    rig: str | None
    bead: str
    need: str
    need_rig: str | None


class BeadNeedAdded(_NeedEvent, kind="bead_need_added"): ...


class BeadNeedRemoved(_NeedEvent, kind="bead_need_removed"): ...

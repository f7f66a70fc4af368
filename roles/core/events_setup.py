"""Pure: the events of the worktree bootstrap: a polecat's setup failed, its teardown failed.

Layer: roles/core. A family of kinds split from :mod:`.events` (which lists every kind in
one union); written by the store when :mod:`gastown.roles.operations.setup` reports.
"""

from __future__ import annotations

from ._event_base import _PolecatEvent


class PolecatSetupFailed(_PolecatEvent, kind="polecat_setup_failed"):
    """``[polecats.setup]`` failed or timed out: the spawn is rolled back."""

    reason: str
    tail: str


class PolecatTeardownFailed(_PolecatEvent, kind="polecat_teardown_failed"):
    """``[polecats.teardown]`` failed or timed out: logged, the nuke went on."""

    reason: str
    tail: str

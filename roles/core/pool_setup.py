"""Pure: which setup a warm pool tree got, whether a sling may skip it, and when a rig's
pool stops preparing trees after failed setups.

Layer: core (pure: facts in, decisions out). The I/O (running the setup in a busy pool
tree, the record beside the tree, the failure count) is
:mod:`gastown.roles.operations.pool_setup`'s.

A pool tree prepared with the rig's ``[polecats.setup]`` carries a *record*: the setup's
fingerprint (its ``command``, ``copy``, ``link``, ``source`` and ``env``, as canonical
JSON: readable, and equal exactly when the settings are) and the commit it was prepared
at. A sling that takes a tree whose record matches the current settings and its new
branch's commit skips the copies, links and command; any other tree gets the setup at
sling, as without a pool.

A setup that fails at preparation is counted per fingerprint; after
:data:`MAX_FAILURES` in a row the pool of that rig stops preparing trees until the
settings change (or ``down --all`` drains the pool), so a setup that always fails does not
run again after every merge: slings then add their worktrees and run the setup
themselves, failing with the reason in the bead as without a pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from .config_setup import SetupConfig

#: Failed preparations in a row (same settings) after which the pool stops preparing.
MAX_FAILURES: Final = 3


@dataclass(frozen=True)
class SetupRecord:
    """What a pool tree was prepared with: the settings' fingerprint, at ``head``."""

    fingerprint: str
    head: str


@dataclass(frozen=True)
class SetupFailures:
    """Failed preparations in a row with the settings ``fingerprint``; the last reason."""

    fingerprint: str
    count: int
    reason: str


def fingerprint(setup: SetupConfig) -> str | None:
    """The settings a prepared tree records; None when there is nothing to set up in
    the pool (no setup, or ``in_pool = false``: it runs at sling)."""
    if not setup.configured or not setup.in_pool:
        return None
    return json.dumps({"command": setup.command, "copy": list(setup.copy),
                       "link": list(setup.link), "source": setup.source,
                       "env": setup.env}, sort_keys=True, separators=(",", ":"))


def render_record(record: SetupRecord) -> str:
    return f"{record.head}\n{record.fingerprint}\n"


def parse_record(text: str) -> SetupRecord | None:
    """A record as :func:`render_record` wrote it; None when it is not one."""
    head, _, rest = text.partition("\n")
    print_ = rest.rstrip("\n")
    if not head or not print_ or "\n" in print_:
        return None
    return SetupRecord(print_, head)


def skip_at_sling(record: SetupRecord | None, current: str | None, head: str | None) -> bool:
    """Whether a sling's taken tree is already set up: prepared with the ``current``
    settings at the commit its new branch starts at (``head``)."""
    return (current is not None and record is not None and head is not None
            and record.fingerprint == current and record.head == head)


def stale(record: SetupRecord | None, current: str | None) -> bool:
    """Whether a ready tree was prepared with other settings (or none, or without a
    setup that now exists): the pool replaces it."""
    return (record.fingerprint if record is not None else None) != current


def after_failure(state: SetupFailures | None, current: str, reason: str) -> SetupFailures:
    """The count after one more failed preparation with the ``current`` settings."""
    count = state.count + 1 if state is not None and state.fingerprint == current else 1
    return SetupFailures(current, count, reason)


def stopped(state: SetupFailures | None, current: str | None) -> bool:
    """Whether the pool stopped preparing trees: :data:`MAX_FAILURES` failures in a row
    with the settings still in force."""
    return (state is not None and current is not None and state.fingerprint == current
            and state.count >= MAX_FAILURES)


def render_failures(state: SetupFailures) -> str:
    return json.dumps({"fingerprint": state.fingerprint, "count": state.count,
                       "reason": state.reason}) + "\n"


def parse_failures(text: str) -> SetupFailures | None:
    """The state :func:`render_failures` wrote; None when unreadable (counts from zero)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fp, count, reason = data.get("fingerprint"), data.get("count"), data.get("reason")
    if not isinstance(fp, str) or not isinstance(count, int) or isinstance(count, bool) \
            or not isinstance(reason, str):
        return None
    return SetupFailures(fp, count, reason)

"""Starting and stopping role processes: the names the supervisor uses, kept here.

Layer: supervisor. The code lives in :mod:`gastown.roles.children` (an adapter the role
processes need too, and roles import nothing from the supervisor); this module re-exports
its public names so that ``gastown.supervisor.children`` keeps working.
"""

from __future__ import annotations

from gastown.roles.children import (
    LIFELINE_ENV,
    LIFELINE_GRACE,
    TOKEN_ENV,
    Lifeline,
    child_env,
    lifeline_fd_from_env,
    open_lifeline,
    read_token,
    start_child,
    start_lifeline_backstop,
    stop_child,
    wait_for_lifeline_eof,
)

__all__ = [
    "LIFELINE_ENV",
    "LIFELINE_GRACE",
    "TOKEN_ENV",
    "Lifeline",
    "child_env",
    "lifeline_fd_from_env",
    "open_lifeline",
    "read_token",
    "start_child",
    "start_lifeline_backstop",
    "stop_child",
    "wait_for_lifeline_eof",
]

"""One supervisor per town, one process per role, a start-up ``down`` can see: the names.

Layer: supervisor. The code lives in :mod:`gastown.roles.town_lock` (the role processes
take their locks with it, and roles import nothing from the supervisor); this module
re-exports its public names so that ``gastown.supervisor.town_lock`` keeps working.
"""

from __future__ import annotations

from gastown.roles.town_lock import (
    LOCK_NAME,
    PID_NAME,
    ROLE_LOCK_TIMEOUT,
    ROLE_LOCKED_EXIT,
    ROLES_DIR,
    START_LOCK_NAME,
    RoleLock,
    RoleLocked,
    SupervisorInfo,
    SupervisorLock,
    SupervisorRunning,
    acquire_role_lock,
    acquire_supervisor_lock,
    hold_start_lock,
    read_supervisor,
    role_lock_holder,
    role_lock_path,
    start_in_progress,
    wait_roles_exit,
    wait_start_settled,
    wait_supervisor_exit,
)

__all__ = [
    "LOCK_NAME",
    "PID_NAME",
    "ROLES_DIR",
    "ROLE_LOCKED_EXIT",
    "ROLE_LOCK_TIMEOUT",
    "START_LOCK_NAME",
    "RoleLock",
    "RoleLocked",
    "SupervisorInfo",
    "SupervisorLock",
    "SupervisorRunning",
    "acquire_role_lock",
    "acquire_supervisor_lock",
    "hold_start_lock",
    "read_supervisor",
    "role_lock_holder",
    "role_lock_path",
    "start_in_progress",
    "wait_roles_exit",
    "wait_start_settled",
    "wait_supervisor_exit",
]

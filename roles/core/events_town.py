"""Pure: the events of the town itself: doctor, the store, the supervisor and its roles.

Layer: roles/core. Split from :mod:`.events` (which re-exports them and lists every kind in
one union) so that each event module stays one family of kinds.
"""

from __future__ import annotations

from ._event_base import _Event


class DoctorFixed(_Event, kind="doctor_fixed"):
    rig: str | None
    polecat: str | None
    check: str
    subject: str
    detail: str
    action: str | None


class StoreCreated(_Event, kind="store_created"):
    path: str


class StoreAdopted(_Event, kind="store_adopted"):
    path: str


class RoleEvent(_Event):
    """A role process changed state; its rig (``witness:<rig>``) is the event's rig."""

    role: str
    state: str
    pid: int | None
    restarts: int
    last_exit: int | None
    reason: str | None

    @property
    def rig(self) -> str | None:
        return self.role.partition(":")[2] or None


class RoleStarted(RoleEvent, kind="role_started"): ...


class RoleReady(RoleEvent, kind="role_ready"): ...


class RoleExited(RoleEvent, kind="role_exited"): ...


class RoleRestartScheduled(RoleEvent, kind="role_restarting"):
    delay: float


class RoleFailed(RoleEvent, kind="role_failed"): ...


class RoleStopped(RoleEvent, kind="role_stopped"): ...


class SupervisorStarted(_Event, kind="supervisor_started"):
    pid: int
    version: str


class TownReloaded(_Event, kind="town_reloaded"):
    reason: str
    restarted: tuple[str, ...]


class ReloadRefused(_Event, kind="reload_refused"):
    reason: str
    error: str


class SupervisorStopRequested(_Event, kind="supervisor_stopping"):
    reason: str


#: A role's change of state, one class a kind.
RoleChanged = (RoleStarted | RoleReady | RoleExited | RoleRestartScheduled | RoleFailed
               | RoleStopped)

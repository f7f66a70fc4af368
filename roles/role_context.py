"""What a role loop is given and what it must provide: its context and its behaviour.

Layer: role loop, the top of ``roles``, below the loops themselves (``mayor``, ``witness``,
``refinery``) and the loop that runs them (:mod:`gastown.roles.role_process`): the loops
import their context from here, and the role process imports the loops, so the graph stays
one way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..supervisor.bus.requests import Reply, Request
from .adapters.town import Town

if TYPE_CHECKING:
    from ..supervisor.bus.client import BusClient


def bus_path(town: Town) -> Path:
    """The town's bus socket."""
    return town.runtime_dir / "bus.sock"


@dataclass
class RoleContext:
    """What a role's behaviour gets: its identity, its town, and the live bus client."""

    name: str
    kind: str
    rig: str | None
    town: Town
    started_at: float = field(default_factory=time.time)
    connected_at: float | None = None
    #: The per-spawn secret that grants this process its name on the bus.
    token: str | None = field(default=None, repr=False)
    exit_code: int = 0


class Behaviour(Protocol):
    """What a role does beyond the shared loop: its main task and its own requests."""

    async def run(self, client: BusClient) -> None:
        """Runs while connected to the bus; cancelled when the connection drops."""

    async def handle(self, request: Request, sender: str) -> Reply:
        """Answer a request; raise ``LookupError`` for a request it does not serve."""

    def status(self) -> Mapping[str, object]:
        """Extra fields for the role's ``status`` answer."""

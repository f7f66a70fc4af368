"""Pure: which roles a configuration change must restart.

Layer: supervisor, pure (no I/O), used by :mod:`.supervisor` on ``gastown reload`` or
SIGHUP.

``gastown reload`` (or SIGHUP) re-reads ``town.toml`` and every ``rig.toml``; only the
roles whose configuration changed are restarted, so a new gate command for one rig
restarts that rig's refinery and nothing else. The supervisor's own settings (restart
policy, stop timeout) apply in place and restart nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..roles.core.config import RigConfig, TownConfig


def roles_to_restart(old_town: TownConfig, new_town: TownConfig,
                     old_rigs: Mapping[str, RigConfig], new_rigs: Mapping[str, RigConfig],
                     ) -> list[str]:
    """Names of the roles to restart, in start order (mayor first, then by rig)."""
    restart: set[str] = set()
    rigs = sorted(set(old_rigs) & set(new_rigs))
    if old_town.logging != new_town.logging:
        restart |= {"mayor", *(f"{kind}:{rig}" for rig in rigs
                               for kind in ("witness", "refinery"))}
    town_for_mayor = replace(old_town, supervisor=new_town.supervisor, logging=new_town.logging)
    if town_for_mayor != new_town:
        # sessions, agents, default_agent, caps, prefix: the mayor (and the witnesses,
        # which respawn sessions) read them.
        restart |= {"mayor", *(f"witness:{rig}" for rig in rigs)}
    for rig in rigs:
        old, new = old_rigs[rig], new_rigs[rig]
        if old == new:
            continue
        identity = (old.repo, old.default_branch, old.prefix) != (
            new.repo, new.default_branch, new.prefix)
        if identity or old.merge_queue != new.merge_queue:
            restart.add(f"refinery:{rig}")
        if identity or old.polecats != new.polecats:
            restart.add(f"witness:{rig}")
    order = ["mayor", *(f"{kind}:{rig}" for rig in rigs for kind in ("witness", "refinery"))]
    return [name for name in order if name in restart]

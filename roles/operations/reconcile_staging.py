"""``gastown doctor``'s check of ``.runtime/staging``: what an interrupted ``rig add`` or
``rig remove`` left there.

Layer: roles operations, called by :mod:`.reconcile` (the driver). A leftover is removed,
or (a removed rig's folder of a rig still registered) moved back; one still in use or
touched recently is left alone.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Final

from ..adapters.files import remove_tree
from ..adapters.processes import paths_in_use
from .reconcile_findings import Ctx, Finding, repair

#: A staging folder younger than this may belong to a ``rig add`` still cloning.
STAGING_GRACE: Final = 300.0


def check_staging_leftovers(ctx: Ctx, rig: str | None) -> list[Finding]:
    """Folders an interrupted ``rig add`` / ``rig remove`` left in ``.runtime/staging``.

    Removed, except: one still in use (a process has a file open or its cwd in it) or
    touched within :data:`STAGING_GRACE` is skipped (a ``rig add`` may still be
    cloning); a ``removed-<rig>`` folder of a rig that is still registered but has no
    folder (the remove was killed between the rename and the store) is moved back.
    """
    staging = ctx.town.runtime_dir / "staging"
    if not staging.is_dir():
        return []
    entries = sorted(staging.iterdir())
    if not entries:
        return []
    registered = {r.name for r in ctx.store.rigs()}
    busy = paths_in_use(entries)
    now = time.time()
    findings = []
    for entry in entries:
        what, owner = _staging_owner(entry.name)
        if rig is not None and owner != rig:
            continue
        if entry in busy or now - _newest_mtime(entry) < STAGING_GRACE:
            continue
        label = owner or "-"
        rig_dir = ctx.town.rig_dir(owner) if owner else None
        if what == "removed" and owner in registered and rig_dir is not None and \
                not rig_dir.exists():
            findings.append(repair(
                ctx, label, "staging_leftover", str(entry),
                f"an interrupted 'rig remove' moved rig {owner}'s folder here, but the rig "
                "is still registered", todo=f"move it back to {rig_dir}",
                done=f"moved back to {rig_dir}",
                do=partial(os.rename, entry, rig_dir)))
            continue
        detail = {"rig": "left by an interrupted 'rig add'",
                  "removed": "left by an interrupted 'rig remove' (the rig is gone)"
                  }.get(what, "unknown leftover of an interrupted rig command")
        findings.append(repair(ctx, label, "staging_leftover", str(entry), detail,
                               todo="remove it", done="removed",
                               do=partial(remove_tree, entry)))
    return findings


def _staging_owner(name: str) -> tuple[str, str | None]:
    """(``rig`` | ``removed`` | ``?``, rig name) of ``rig-<name>-<hex>`` staging folders."""
    for what in ("rig", "removed"):
        prefix = f"{what}-"
        if name.startswith(prefix):
            rest, sep, suffix = name[len(prefix):].rpartition("-")
            if sep and rest and len(suffix) == 8:
                return what, rest
    return "?", None


def _newest_mtime(entry: Path) -> float:
    newest = 0.0
    for path in (entry, entry / "refinery", entry / "refinery" / "rig",
                 entry / "refinery" / "rig" / ".git",
                 entry / "refinery" / "rig" / ".git" / "objects" / "pack"):
        try:
            newest = max(newest, path.lstat().st_mtime)
        except OSError:
            continue
    return newest

"""Fail points: named places where a test can make a process exit, pause or misbehave.

Layer: adapters (the environment, ``os._exit``, a marker file), called from risky steps in
every layer above.

Crash-safety is only believable if it is tested at each step, so the code marks its
risky steps with :func:`fault_point` and tests arm them through the environment:
``GASTOWN_FAULTS="mayor@sling.after_worktree=pause:30;witness:web@start=exit:3"``.
Each entry is ``<process>@<point>=<action>``; ``*`` matches any process. Actions:

- ``exit:N`` -- leave at once with status N (``os._exit``: no clean-up, like a crash);
- ``pause:S`` -- sleep S seconds (a window for a test to ``kill -9`` the process);
- ``ignore-sigterm`` -- from now on SIGTERM does nothing (a stuck process);
- ``hang-while:PATH`` -- block (synchronously: a hung event loop) while PATH exists.

An action ending in ``:once`` fires once per ``$GASTOWN_FAULT_STATE`` folder (a marker file
records it), so a process restarted after a test killed it runs on normally. A fail point
that pauses says so on stderr (``gastown fault: pause at <process>@<point>``), which a
test waits for before it kills.

Unarmed (the normal case) a fail point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import cache
from typing import Final

ENV_VAR: Final = "GASTOWN_FAULTS"


@cache
def _armed(spec: str) -> dict[tuple[str, str], str]:
    armed: dict[tuple[str, str], str] = {}
    for entry in spec.split(";"):
        where, _, action = entry.strip().partition("=")
        process, _, point = where.partition("@")
        if process and point and action:
            armed[(process, point)] = action
    return armed


def fault_action(process: str, point: str) -> str | None:
    """The action armed for ``point`` in ``process``, or None."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None
    armed = _armed(spec)
    return armed.get((process, point)) or armed.get(("*", point))


def _first_time(process: str, point: str) -> bool:
    folder = os.environ.get("GASTOWN_FAULT_STATE")
    if not folder:
        return True
    marker = os.path.join(folder, f"{process}@{point}".replace("/", "_"))
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def fault_point(process: str, point: str) -> None:
    """Carry out the action armed for ``point`` in ``process``, if any (synchronously)."""
    action = fault_action(process, point)
    if action is None:
        return
    if action.endswith(":once"):
        action = action.removesuffix(":once")
        if not _first_time(process, point):
            return
    kind, _, arg = action.partition(":")
    if kind == "exit":
        os._exit(int(arg or "1"))
    elif kind == "pause":
        print(f"gastown fault: pause at {process}@{point}", file=sys.stderr, flush=True)
        time.sleep(float(arg or "3600"))
    elif kind == "hang-while":
        while os.path.exists(arg):
            time.sleep(0.05)
    elif kind == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

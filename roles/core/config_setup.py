"""Pure: the worktree bootstrap settings of a rig (``[polecats.setup]``, ``[polecats.teardown]``,
``[merge_queue.setup]``, ``polecats.ports``) and their checks.

Layer: core (pure). :mod:`.config` (the loader) builds these dataclasses from TOML and
calls :func:`setup_problems` / :func:`ports_problem`; :mod:`.slots` splits the port range;
:mod:`gastown.roles.operations.setup` carries them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NewType

Seconds = NewType("Seconds", float)
"""A duration: written ``"10m"``, ``"1.5s"``, ``"2h"`` or a number of seconds."""


@dataclass(frozen=True)
class SetupConfig:
    """What makes a fresh checkout one that builds, done before anything runs in it.

    ``copy`` (files or folders, relative paths) are copied from ``source`` when present
    there (a missing one is skipped); ``link`` become symlinks to ``source``'s path (shared,
    read-only things such as ``node_modules``); then ``command`` runs (``sh -c``) in the
    checkout, in its own process group, killed whole after ``timeout``. ``env`` is given
    to the command and to the agent; ``{port}`` and ``{slot}`` in its values are the
    polecat's. ``source`` empty: the rig's ``repo`` when it is a local working copy, else the
    canonical clone (a relative ``source`` is relative to the rig's folder). With a warm
    pool, ``[polecats.setup]`` runs when a pool tree is prepared (at a temporary path, no
    slot or port); ``in_pool = false`` keeps it at sling (a setup that writes the tree's
    absolute path, such as ``pip install -e .``).
    """

    command: str = ""
    timeout: Seconds = Seconds(600.0)
    copy: tuple[str, ...] = ()
    link: tuple[str, ...] = ()
    source: str = ""
    env: dict[str, str] = field(default_factory=dict)
    in_pool: bool = True

    @property
    def configured(self) -> bool:
        return bool(self.command.strip() or self.copy or self.link or self.env)


@dataclass(frozen=True)
class TeardownConfig:
    """Run (``sh -c``) in a polecat's worktree before it is nuked; a failure is logged."""

    command: str = ""
    timeout: Seconds = Seconds(120.0)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("port", "slot")


def _path_problem(path: str) -> str | None:
    if not path.strip():
        return "is empty"
    if path.startswith("/"):
        return "must be relative to the checkout"
    if ".." in path.split("/"):
        return "must not contain '..'"
    return None


def setup_problems(setup: SetupConfig) -> list[tuple[str, str]]:
    """``(key, problem)`` for each thing wrong in ``setup`` (keys relative to its table)."""
    found: list[tuple[str, str]] = []
    if setup.timeout <= 0:
        found.append(("timeout", "must be longer than 0s"))
    for key, paths in (("copy", setup.copy), ("link", setup.link)):
        for path in paths:
            problem = _path_problem(path)
            if problem:
                found.append((key, f"path {path!r} {problem}"))
    for name, value in setup.env.items():
        if not _ENV_NAME.match(name):
            found.append(("env", f"{name!r} is not a variable name"))
        for placeholder in _PLACEHOLDER.findall(value):
            if placeholder not in PLACEHOLDERS:
                found.append(("env", f"{name} uses {{{placeholder}}}; only {{port}} and "
                                     "{slot} are known"))
    return found


def ports_problem(ports: str, slots: int) -> str | None:
    """Why ``polecats.ports`` (``"4100-4199"`` or empty) cannot give ``slots`` blocks."""
    from .slots import parse_ports

    if not ports.strip():
        return None
    span = parse_ports(ports)
    if span is None:
        return f"must be a range such as \"4100-4199\" (1024-65535), not {ports!r}"
    if span[1] - span[0] + 1 < slots:
        return (f"{ports!r} holds {span[1] - span[0] + 1} port(s), fewer than "
                f"'polecats.max' ({slots}): each polecat needs a block of its own")
    return None

"""The errors a user can cause, each carrying a message written for that user.

Layer: core (pure), the bottom of ``roles``: every layer raises these; their root,
:class:`GastownError`, comes from the bus (:mod:`gastown.supervisor.bus.errors`).

``gastown.supervisor.cli.main`` is the only place that catches them: it prints
``gastown: <message>`` on one line and exits with :attr:`GastownError.exit_code`.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

# The root class lives at the bottom layer, with the bus (whose errors derive from it).
from ...supervisor.bus.errors import GastownError as GastownError


class UsageError(GastownError):
    """The command line or a name is malformed (exit 2, like argparse)."""

    exit_code = 2


class NotFound(GastownError):
    """A town, rig, bead or polecat named by the user does not exist."""


class Refused(GastownError):
    """The operation would break an invariant (lose work, clobber a town); nothing changed."""


class ConfigError(GastownError):
    """A config file is malformed or holds an unknown key or a wrong type.

    The message always starts with the file (and line when known), so that one
    line tells the user where to look.
    """

    def __init__(self, path: str, problem: str, *, line: int | None = None,
                 key: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.key = key


class StoreError(GastownError):
    """The town's store (``state.db``) cannot be used: unwritable, full, locked too long,
    missing, or not this town's. The message names the file and says what to do;
    ``reason`` is the short cause alone (for ``gastown doctor``)."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class StoreMissing(StoreError):
    """The town recorded a store identity, but its store file is gone."""


class StoreReplaced(StoreError):
    """The file at the store's path is not the store this town recorded."""


class StoreLost(StoreError):
    """The store this process opened was deleted or replaced while it was open."""


class GitError(GastownError):
    """A git command failed; carries the operation, the repository and stderr's tail."""

    def __init__(self, op: str, repo: str, stderr: str) -> None:
        tail = " ".join(stderr.strip().splitlines()[-2:]) or "no error output"
        super().__init__(f"git {op} failed for {repo}: {tail}")
        self.op = op
        self.repo = repo
        self.stderr = stderr

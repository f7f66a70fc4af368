"""What every command needs: the town it acts on, its store, its log, its rig.

Layer: cli, under every command module of :mod:`gastown.supervisor.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...roles.adapters.store import Rig, Store, open_store
from ...roles.adapters.town import Town, find_town


def town_of(args: argparse.Namespace) -> Town:
    """The town named by ``--town``, ``$GASTOWN_TOWN`` or the cwd; sets up the CLI's log.

    The cwd may be gone (the witness removed the worktree a person stood in): an explicit
    town still works, and without one the user gets one line saying so.
    """
    town = find_town(args.town, os.environ, search_dir(args.town))
    _configure_cli_logging(town, verbose=bool(args.verbose),
                           config_optional=getattr(args, "handler", None) in CONFIG_OPTIONAL)
    return town


#: The commands that work on a town whose town.toml is broken, so that it can be looked
#: at and stopped (``reload`` asks the supervisor, which refuses the broken file itself).
#: They print one warning line; every other command stops with the error, on one line.
CONFIG_OPTIONAL = frozenset((
    "_lifecycle:cmd_status", "_lifecycle:cmd_down", "_observe:cmd_logs", "_observe:cmd_feed",
    "_doctor:cmd_doctor"))


def current_dir() -> Path:
    """The cwd, or one line for the user when it no longer exists."""
    from ...roles.core.errors import GastownError

    try:
        return Path.cwd()
    except FileNotFoundError:
        raise GastownError("the current directory no longer exists (was it removed?); "
                           "cd to an existing directory, or pass --town with an absolute "
                           "path") from None


def search_dir(explicit: str | None) -> Path:
    """The cwd to search a town from; when an explicit town is given and the cwd is gone,
    a stand-in that is never consulted (an absolute ``--town``/``$GASTOWN_TOWN`` wins)."""
    chosen = explicit or os.environ.get("GASTOWN_TOWN")
    if chosen and Path(chosen).expanduser().is_absolute():
        try:
            return Path.cwd()
        except FileNotFoundError:
            return Path("/")
    return current_dir()


def _configure_cli_logging(town: Town, *, verbose: bool, config_optional: bool = False) -> None:
    """Log to ``logs/cli.log``. A broken town.toml raises its one-line error, unless the
    command is one of :data:`CONFIG_OPTIONAL`: then it is one warning line and the
    shipped logging defaults."""
    from ...roles.adapters.log import configure_logging
    from ...roles.core.errors import ConfigError

    try:
        logging = town.config.logging
        level, max_bytes, backups = logging.level, logging.max_bytes, logging.backups
    except ConfigError as exc:
        if not config_optional:
            raise
        print(f"gastown: warning: {exc.message}", file=sys.stderr)
        level, max_bytes, backups = "info", 10 * 1024 * 1024, 5
    configure_logging(town.logs_dir if town.logs_dir.is_dir() else None, role="cli",
                      level="debug" if verbose else level, console=verbose,
                      max_bytes=max_bytes, backups=backups, lazy=True)


@contextmanager
def store_of(town: Town) -> Iterator[Store]:
    store = open_store(town.db_path)
    try:
        yield store
    finally:
        store.close()


def require_rig(store: Store, rig: str) -> Rig:
    """The rig named on the command line: a valid name (else exit 2) that exists (else 1)."""
    from ...roles.core.names import validate_name

    return store.rig(validate_name("rig", rig))


def listed_rig(store: Store, rig: str | None) -> str | None:
    """A listing's ``[RIG]``: None (every rig), or the name of a rig that exists."""
    if rig is not None:
        require_rig(store, rig)
    return rig

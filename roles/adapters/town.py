"""Where a town lives on disk, how commands find it, and how one is created.

Layer: adapters (the file system), used by nearly every operation, the role loops, the
supervisor and the CLI.

A town is a directory holding ``town.toml``. Everything else about its layout is
named here once (see the README's "A town on disk"), so no other module builds a
path by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from ..core.config import RigConfig, TownConfig, load_rig_config, load_town_config
from ..core.errors import ConfigError, GastownError, NotFound, Refused

TOWN_FILE = "town.toml"
RIG_FILE = "rig.toml"

_TOWN_TEMPLATE = """\
# gastown town configuration. Every key you leave out takes its shipped default;
# see `gastown config show` or the README's configuration reference.
"""


@dataclass(frozen=True)
class Town:
    """The paths of one town. Cheap to build; reads nothing until asked."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / TOWN_FILE

    @property
    def runtime_dir(self) -> Path:
        """Owner-only (0700): bus socket, supervisor pid and lock, session pid files."""
        return self.root / ".runtime"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    def rig_dir(self, rig: str) -> Path:
        return self.root / rig

    def rig_config_path(self, rig: str) -> Path:
        return self.root / rig / RIG_FILE

    def refinery_clone(self, rig: str) -> Path:
        """The rig's canonical clone; every polecat worktree shares its ``.git``."""
        return self.root / rig / "refinery" / "rig"

    def polecats_dir(self, rig: str) -> Path:
        return self.root / rig / "polecats"

    def pool_dir(self, rig: str) -> Path:
        """Idle worktrees of the rig's warm pool (``polecats.pool_size``)."""
        return self.root / rig / "pool"

    def crew_dir(self, rig: str) -> Path:
        return self.root / rig / "crew"

    @cached_property
    def config(self) -> TownConfig:
        return read_town_config(self.config_path)

    def rig_config(self, rig: str) -> RigConfig:
        path = self.rig_config_path(rig)
        if not path.is_file():
            raise NotFound(f"rig {rig!r} has no {path}")
        return read_rig_config(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None


#: Validated configurations by file, with the file's identity when it was read: a file is
#: parsed again only when it changed (a role reads its rig's config at every operation; a
#: command forked from the CLI server finds the town's already read there).
_read: dict[Path, tuple[tuple[int, int, int], TownConfig | RigConfig]] = {}

C = TypeVar("C", TownConfig, RigConfig)


def _once_per_change(path: Path, load: Callable[[], C]) -> C:
    """``load()``'s config for ``path``, parsed again only when the file changed (its
    identity is taken before the read: a change during it shows at the next call). A file
    that cannot be read or validated is not remembered: its error comes every time."""
    try:
        st = path.stat()
    except OSError:
        return load()  # reading it says why
    identity = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _read.get(path)
    if hit is not None and hit[0] == identity:
        return hit[1]  # type: ignore[return-value]  # a path holds one kind of config
    config = load()
    _read[path] = (identity, config)
    return config


def read_town_config(path: Path) -> TownConfig:
    from ...config import default_text
    from ..core.config import parse_toml

    def load() -> TownConfig:
        presets = parse_toml(default_text("agents.toml"), "<shipped agents.toml>")
        return load_town_config(_read_text(path), str(path), default_text(TOWN_FILE),
                                presets=list(presets))

    return _once_per_change(path, load)


def read_rig_config(path: Path) -> RigConfig:
    from ...config import default_text

    return _once_per_change(path, lambda: load_rig_config(_read_text(path), str(path),
                                                          default_text(RIG_FILE)))


def default_town_path(env: Mapping[str, str]) -> Path:
    """``$GASTOWN_TOWN`` when set, else ``~/gt``."""
    if env.get("GASTOWN_TOWN"):
        return Path(env["GASTOWN_TOWN"]).expanduser()
    return Path("~/gt").expanduser()


def find_town(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Town:
    """The town a command acts on: ``--town``, else ``$GASTOWN_TOWN``, else walk up from ``cwd``.

    Raises :class:`NotFound` with one line when none of them leads to a ``town.toml``.
    """
    if explicit:
        root = Path(explicit).expanduser().absolute()
        if not (root / TOWN_FILE).is_file():
            raise NotFound(f"{root} is not a town (no {TOWN_FILE}); create one with "
                           f"'gastown install {explicit}'")
        return Town(root)
    if env.get("GASTOWN_TOWN"):
        root = Path(env["GASTOWN_TOWN"]).expanduser().absolute()
        if not (root / TOWN_FILE).is_file():
            raise NotFound(f"$GASTOWN_TOWN={env['GASTOWN_TOWN']} is not a town "
                           f"(no {TOWN_FILE})")
        return Town(root)
    here = cwd.absolute()
    for candidate in (here, *here.parents):
        if (candidate / TOWN_FILE).is_file():
            return Town(candidate)
    raise NotFound("not inside a town (no town.toml here or above); pass --town PATH, "
                   "set GASTOWN_TOWN, or create one with 'gastown install'")


def install_town(path: Path) -> tuple[Town, bool]:
    """Create a town at ``path``, or complete an existing one; returns (town, created).

    Idempotent: on an existing town it only adds what is missing and never rewrites
    ``town.toml``. Refuses a non-empty directory that is not a town, so that a typo
    cannot scatter a town through someone's home directory.
    """
    from .store import open_store

    root = path.expanduser().absolute()
    town = Town(root)
    try:
        created = _lay_out(town)
    except OSError as exc:
        raise GastownError(f"cannot create a town at {root}: {_os_reason(exc, root)}") from None
    open_store(town.db_path).close()
    return town, created


def _os_reason(exc: OSError, root: Path) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename and str(exc.filename) != str(root):
        return f"{exc.filename}: {reason}"
    return reason


def _lay_out(town: Town) -> bool:
    """Create what is missing of ``town``'s folders and ``town.toml``; True when new."""
    root = town.root
    created = False
    if root.exists() and not root.is_dir():
        raise Refused(f"{root} exists and is not a directory")
    if not town.config_path.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise Refused(f"{root} is not empty and is not a town; choose an empty or "
                          "new directory")
        root.mkdir(parents=True, exist_ok=True)
        tmp = town.config_path.with_suffix(".toml.tmp")
        tmp.write_text(_TOWN_TEMPLATE, encoding="utf-8")
        os.replace(tmp, town.config_path)
        created = True
    else:
        town.config  # noqa: B018 - validates the existing config before touching anything
    town.runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(town.runtime_dir, 0o700)
    town.logs_dir.mkdir(exist_ok=True)
    return created

"""Shipped defaults: ``town.toml`` and ``rig.toml`` templates and, later, the systemd unit.

Layer: config, the bottom of the town: it imports nothing from gastown; the config loader
(:mod:`gastown.roles.core.config`, through :mod:`gastown.roles.adapters.town`) and the agent
presets read its files.

The TOML files here are the single source of every default value: the config loader
overlays a user's file on them, so a key documented here is a key that exists.
"""

from functools import cache
from importlib.resources import files
from pathlib import Path


@cache
def default_text(name: str) -> str:
    """The text of a shipped file such as ``"town.toml"``: read once per process (the
    files ship with the code, which a running process does not see change either)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def default_path(name: str) -> Path:
    """A readable path to a shipped file (the package is always installed unzipped)."""
    return Path(str(files(__name__).joinpath(name)))

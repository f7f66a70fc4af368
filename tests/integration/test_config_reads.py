"""A configuration file is parsed again only when it changed (roles read their rig's
config at every operation; commands forked from the CLI server find it read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gastown.roles.adapters.town import read_rig_config, read_town_config
from gastown.roles.core.errors import ConfigError


def test_an_unchanged_file_is_not_parsed_again_and_a_changed_one_is(tmp_path: Path) -> None:
    town = tmp_path / "town.toml"
    town.write_text("max_polecats = 3\n")
    first = read_town_config(town)
    assert read_town_config(town) is first
    town.write_text("max_polecats = 4\n")  # same size: the mtime or inode tells
    os.utime(town, ns=(town.stat().st_atime_ns, town.stat().st_mtime_ns + 1_000_000))
    assert read_town_config(town).max_polecats == 4
    replacement = tmp_path / "new.toml"
    replacement.write_text("max_polecats = 5\n")
    os.replace(replacement, town)  # an editor's atomic save: another inode
    assert read_town_config(town).max_polecats == 5
    rig = tmp_path / "rig.toml"
    rig.write_text('repo = "/r.git"\ndefault_branch = "main"\nprefix = "web"\n')
    assert read_rig_config(rig) is read_rig_config(rig)


def test_a_broken_file_is_reported_every_time_not_remembered(tmp_path: Path) -> None:
    town = tmp_path / "town.toml"
    town.write_text("max_polecats = 7\n")
    assert read_town_config(town).max_polecats == 7
    town.write_text("max_polecats = \n")
    for _ in range(2):
        with pytest.raises(ConfigError):
            read_town_config(town)
    town.write_text("max_polecats = 9\n")
    assert read_town_config(town).max_polecats == 9

"""Config loading: shipped defaults, overlays, and one precise line for every mistake."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gastown.config import default_text
from gastown.roles.config import (
    GateConfig,
    Seconds,
    load_rig_config,
    load_town_config,
    merge_over,
    parse_duration,
)
from gastown.roles.errors import ConfigError

TOWN_DEFAULTS = default_text("town.toml")
RIG_DEFAULTS = default_text("rig.toml")
RIG_REQUIRED = 'repo = "/srv/web"\ndefault_branch = "main"\nprefix = "web"\n'


def town(text: str) -> object:
    return load_town_config(text, "/t/town.toml", TOWN_DEFAULTS)


def rig(text: str) -> object:
    return load_rig_config(RIG_REQUIRED + text, "/t/web/rig.toml", RIG_DEFAULTS)


def error_of(loader: object, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loader(text)  # type: ignore[operator]
    assert "\n" not in info.value.message
    return info.value


class TestDefaults:
    def test_empty_town_file_gets_shipped_defaults(self) -> None:
        """An empty town.toml is valid and takes every default from config/town.toml."""
        config = load_town_config("", "/t/town.toml", TOWN_DEFAULTS)
        assert config.prefix == "gt"
        assert config.max_polecats == 25
        assert config.sessions.backend == "auto"
        assert config.supervisor.stop_timeout == 10.0
        assert config.agents == {}

    def test_rig_needs_only_its_identity(self) -> None:
        """A rig.toml with repo, default_branch and prefix is complete."""
        config = load_rig_config(RIG_REQUIRED, "/t/web/rig.toml", RIG_DEFAULTS)
        assert config.polecats.max == 10
        assert config.polecats.branch_template == "polecat/{name}"
        assert config.merge_queue.gates == ()
        assert config.merge_queue.on_conflict == "reject"

    def test_overrides_merge_table_by_table(self) -> None:
        """Setting one key of a table keeps the table's other defaults."""
        config = load_town_config("[supervisor]\nmax_restarts = 9\n", "t", TOWN_DEFAULTS)
        assert config.supervisor.max_restarts == 9
        assert config.supervisor.restart_period == 60.0

    def test_gates_and_agents(self) -> None:
        """Arrays of gate tables and agent tables load into typed values."""
        config = load_rig_config(
            RIG_REQUIRED + '[[merge_queue.gates]]\nname = "test"\ncommand = "pytest"\n'
            'timeout = "90s"\n[[merge_queue.gates]]\nname = "lint"\ncommand = "ruff ."\n',
            "r", RIG_DEFAULTS)
        assert config.merge_queue.gates == (GateConfig("test", "pytest", Seconds(90.0)),
                                            GateConfig("lint", "ruff .", Seconds(600.0)))
        tconfig = load_town_config(
            '[agents.mybot]\ncommand = ["mybot", "{prompt}"]\nenv = { MODE = "auto" }\n',
            "t", TOWN_DEFAULTS)
        assert tconfig.agents["mybot"].command == ("mybot", "{prompt}")
        assert tconfig.agents["mybot"].env == {"MODE": "auto"}


class TestErrors:
    def test_unknown_top_level_key_names_file_key_and_line(self) -> None:
        """A typo'd key is reported with the file, its line and the key."""
        err = error_of(town, 'prefix = "gt"\nmax_polecat = 3\n')
        assert err.message.startswith("/t/town.toml:2: unknown key 'max_polecat'")
        assert err.key == "max_polecat"

    def test_unknown_key_in_a_table(self) -> None:
        """A typo inside a table names the dotted key and the line."""
        err = error_of(rig, "[polecats]\nmax = 3\nmax_respwans = 1\n")
        assert "/t/web/rig.toml:6:" in err.message
        assert "unknown key 'polecats.max_respwans'" in err.message

    def test_unknown_key_in_a_gate(self) -> None:
        """A typo inside an array of tables is found too."""
        err = error_of(rig, '[[merge_queue.gates]]\nname = "t"\ncomand = "x"\n')
        assert "unknown key 'merge_queue.gates.comand'" in err.message
        assert ":6:" in err.message

    def test_unknown_table(self) -> None:
        """A whole unknown table is an unknown key."""
        err = error_of(town, "[sesions]\nbackend = 'tmux'\n")
        assert "unknown key 'sesions'" in err.message and ":1:" in err.message

    @pytest.mark.parametrize(("text", "expected"), [
        ("max_polecats = 'many'", "'max_polecats' must be an integer, not a string"),
        ("max_polecats = true", "'max_polecats' must be an integer, not a boolean"),
        ("[sessions]\nbackend = 'screen'", "'sessions.backend' must be 'auto' or 'tmux' or "
                                            "'process', not 'screen'"),
        ("[supervisor]\nstop_timeout = 'soon'", "'supervisor.stop_timeout' must be a duration"),
        ("sessions = 3", "sessions must be a table"),
        ("prefix = 'GT'", "'prefix' must be 2-4 lowercase letters"),
        ("max_polecats = 0", "'max_polecats' must be at least 1"),
        ("[agents.bot]\ncommand = []", "'agents.bot.command' must not be empty"),
        ("[agents.bot]\ncommand = 'bot'", "'agents.bot.command' must be an array"),
    ])
    def test_wrong_types_and_values(self, text: str, expected: str) -> None:
        """Wrong types and out-of-range values say which key and what was expected."""
        assert expected in error_of(town, text).message

    @pytest.mark.parametrize(("text", "expected"), [
        ("[merge_queue]\non_conflict = 'merge'", "'merge_queue.on_conflict' must be"),
        ("[merge_queue]\nbatch_size = 0", "'merge_queue.batch_size' must be at least 1"),
        ("[polecats]\nbranch_template = 'x'", "must contain {name}"),
        ("[polecats]\nnames = ['ok', '../bad']", "polecat name '../bad'"),
        ("[[merge_queue.gates]]\ncommand = 'x'", "missing key 'merge_queue.gates.name'"),
        ("[[merge_queue.gates]]\nname='a'\ncommand='x'\n[[merge_queue.gates]]\nname='a'\n"
         "command='y'", "gate name 'a' is repeated"),
    ])
    def test_rig_values(self, text: str, expected: str) -> None:
        """Rig-level mistakes are caught at load time, not at merge time."""
        assert expected in error_of(rig, text).message

    def test_missing_required_rig_key(self) -> None:
        """A rig.toml without repo says so."""
        with pytest.raises(ConfigError, match="missing key 'repo'"):
            load_rig_config('default_branch = "main"\nprefix = "web"\n', "r", RIG_DEFAULTS)

    def test_malformed_toml_gives_the_line(self) -> None:
        """A TOML syntax error names the file and line, without tomllib's column noise."""
        err = error_of(town, 'prefix = "gt"\n\nmax_polecats = = 3\n')
        assert err.message.startswith("/t/town.toml:3: malformed TOML:")
        assert err.line == 3


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("1.5s", 1.5), ("250ms", 0.25), ("2h", 7200.0), ("1d", 86400.0),
    (30, 30.0), (0.5, 0.5), ("45", 45.0),
])
def test_durations(text: object, seconds: float) -> None:
    """Durations accept the usual units and bare seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1s", "ten", "", True, [1], "5 minutes"])
def test_bad_durations(text: object) -> None:
    """Anything else is not a duration."""
    assert parse_duration(text) is None


@given(st.dictionaries(st.text(max_size=3), st.integers() | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=3), max_size=4),
       st.dictionaries(st.text(max_size=3), st.integers() | st.dictionaries(
           st.text(max_size=3), st.integers(), max_size=3), max_size=4))
def test_merge_over_keeps_every_override(defaults: dict[str, object],
                                         override: dict[str, object]) -> None:
    """Every overriding leaf wins, and every default the override does not touch survives."""
    merged = merge_over(defaults, override)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            assert merged[key] == {**defaults[key], **value}  # type: ignore[dict-item]
        else:
            assert merged[key] == value
    for key in defaults.keys() - override.keys():
        assert merged[key] == defaults[key]

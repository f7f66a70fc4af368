"""Config loading: shipped defaults, overlays, and one precise line for every mistake."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gastown.config import default_text
from gastown.roles.core.config import (
    GateConfig,
    Seconds,
    load_rig_config,
    load_town_config,
    merge_over,
    parse_duration,
)
from gastown.roles.core.errors import ConfigError

TOWN_DEFAULTS = default_text("town.toml")
RIG_DEFAULTS = default_text("rig.toml")
RIG_REQUIRED = 'repo = "/srv/web"\ndefault_branch = "main"\nprefix = "web"\n'


PRESETS = ("claude", "codex", "gemini", "aider", "script")


def town(text: str) -> object:
    return load_town_config(text, "/t/town.toml", TOWN_DEFAULTS, presets=PRESETS)


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


class TestValuesCheckedAtLoad:
    """Values that used to get through to sling or merge time are refused at load, with
    the file, the key and why."""

    @pytest.mark.parametrize(("text", "expected"), [
        ("[polecats]\nbranch_template = '../{name}'",
         "'polecats.branch_template' '../{name}' gives the branch '../toast' for polecat "
         "'toast', which must not contain '..'"),
        ("[polecats]\nbranch_template = '-{name}'", "which must not start with '-'"),
        ("[polecats]\nbranch_template = '/{name}'", "which has a component that"),
        ("[polecats]\nbranch_template = 'pc/{name}.lock'", "gives the branch 'pc/toast.lock'"),
        ("[polecats]\nbranch_template = 'a b/{name}'", "must not contain whitespace"),
        ("[polecats]\nbranch_template = 'main/{name}'",
         "collides with the default branch 'main'"),
        ("[polecats]\nnames = ['main']\nbranch_template = '{name}'",
         "gives the branch 'main' for polecat 'main', which collides"),
        ("[polecats]\nnames = ['a', 'a']", "'polecats.names' lists a name twice"),
        ("[polecats]\nmax = -3", "'polecats.max' must be at least 1, not -3"),
        ("[polecats]\nmax_respawns = -1", "'polecats.max_respawns' must be at least 0"),
        ("[polecats]\nstall_timeout = '0s'", "'polecats.stall_timeout' must be longer than 0s"),
        ("[polecats]\nstall_timeout = -5", "'polecats.stall_timeout' must be a duration"),
        ("[merge_queue]\nretry_flaky = -1", "'merge_queue.retry_flaky' must be at least 0"),
        ("[[merge_queue.gates]]\nname = 't'\ncommand = '  '", "gate 't' has an empty 'command'"),
        ("[[merge_queue.gates]]\nname = ''\ncommand = 'x'", "gate name '' must be"),
        ("[[merge_queue.gates]]\nname = 't'\ncommand = 'x'\ntimeout = '0s'",
         "'merge_queue.gates.timeout' must be longer than 0s"),
        ("repo = ''", "'repo' must not be empty"),
    ])
    def test_rig_values(self, text: str, expected: str) -> None:
        body = text if text.startswith("[") else ""
        if text.startswith("repo"):
            err = error_of(lambda t: load_rig_config(t, "/t/web/rig.toml", RIG_DEFAULTS),
                           'repo = ""\ndefault_branch = "main"\nprefix = "web"\n')
        else:
            err = error_of(rig, body)
        assert err.message.startswith("/t/web/rig.toml:"), err.message
        assert expected in err.message, err.message

    def test_a_good_template_and_pool_load(self) -> None:
        config = rig("[polecats]\nbranch_template = 'work/{name}'\nnames = ['ada', 'bob']")
        assert config.polecats.branch_template == "work/{name}"  # type: ignore[attr-defined]

    @pytest.mark.parametrize(("text", "expected"), [
        ("default_agent = 'claud'", "/t/town.toml:1: 'default_agent' 'claud' is neither a "
                                    "preset nor an [agents.NAME] table (known: aider, claude"),
        ("[supervisor]\nstop_timeout = 0", "'supervisor.stop_timeout' must be longer than 0s"),
        ("[supervisor]\nrestart_period = '0s'", "'supervisor.restart_period' must be longer"),
        ("[supervisor]\nstop_timeout = inf", "'supervisor.stop_timeout' must be a duration"),
        ("[supervisor]\nrestart_delay = '2m'\nrestart_max_delay = '1m'",
         "'supervisor.restart_max_delay' (60s) must not be shorter than "
         "'supervisor.restart_delay' (120s)"),
        ("max_polecats = -1", "'max_polecats' must be at least 1, not -1"),
        ("[logging]\nbackups = -2", "'logging.backups' must be at least 0"),
    ])
    def test_town_values(self, text: str, expected: str) -> None:
        assert expected in error_of(town, text).message

    def test_default_agent_may_name_a_table_of_the_file(self) -> None:
        config = town("default_agent = 'bot'\n[agents.bot]\ncommand = ['bot']\n")
        assert config.default_agent == "bot"  # type: ignore[attr-defined]
        assert town("default_agent = 'script'").default_agent == "script"  # type: ignore[attr-defined]

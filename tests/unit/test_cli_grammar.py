"""The command-line grammar (supervisor/cli/_grammar.py) and the parser built from it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from gastown.supervisor.cli import _grammar
from gastown.supervisor.cli._grammar import Command, Group
from gastown.supervisor.cli._parser import build_parser


def commands(entries: tuple[Command | Group, ...] = _grammar.COMMANDS,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    for entry in entries:
        if isinstance(entry, Group):
            yield from commands(entry.commands, (*path, entry.name))
        else:
            yield (*path, entry.name), entry


def test_every_handler_is_a_function_of_the_cli_package() -> None:
    found = list(commands())
    assert len(found) > 40
    for words, command in found:
        module, _, function = command.handler.partition(":")
        handler = getattr(importlib.import_module(f"gastown.supervisor.cli.{module}"),
                          function, None)
        assert callable(handler), f"gastown {' '.join(words)}: no {command.handler}"


def test_each_command_parses_to_its_handler() -> None:
    parser = build_parser()
    for words, command in commands():
        # Positionals a command requires, filled with a placeholder each.
        needed = [a for a in command.args if isinstance(a, _grammar.Arg)
                  and not a.names[0].startswith("-") and a.options.get("nargs") not in
                  ("?", "*") and "choices" not in a.options]
        choices = [a.options["choices"][0] for a in command.args
                   if isinstance(a, _grammar.Arg) and "choices" in a.options
                   and not a.names[0].startswith("-")]
        required = [part for a in command.args if isinstance(a, _grammar.Arg)
                    and a.options.get("required") for part in (a.names[0], "x")]
        args = parser.parse_args([*words, *choices, *("x" for _ in needed), *required])
        assert args.handler == command.handler, words


def test_shared_arguments_mean_the_same_everywhere() -> None:
    parser = build_parser()
    assert parser.parse_args(["mq", "show", "mr-1", "--json"]).json is True
    assert parser.parse_args(["polecat", "nuke", "web/toast"]).target == "web/toast"
    assert parser.parse_args(["nudge", "web/toast", "hi"]).target == "web/toast"
    assert parser.parse_args(["convoy", "sling", "c1", "--agent", "codex"]).agent == "codex"
    assert parser.parse_args(["sling", "gt-1", "web", "--agent", "codex"]).agent == "codex"
    assert parser.parse_args(["bead", "dep", "remove", "a", "b"]).need == "b"
    assert parser.parse_args(["bead", "reopen", "a", "--reason", "r"]).reason == "r"
    assert parser.parse_args(["bead", "update", "a", "-p", "0"]).priority == 0
    assert parser.parse_args(["bead", "create", "t"]).priority == 2


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_a_service_unit_is_the_user_s_unless_system_and_never_both(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["service", command]).mode == "user"
    assert parser.parse_args(["service", command, "--system"]).mode == "system"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["service", command, "--user", "--system"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_bad_priority_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bead", "create", "t", "-p", "7"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("gastown: argument -p/--priority: priority must be "
                                       "0-4, not 7 (see 'gastown bead create --help')\n")

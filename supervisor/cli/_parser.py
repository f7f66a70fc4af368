"""The command-line parser, built from the grammar in :mod:`._grammar`; and the call of a
command's handler, imported only when its command runs.

Layer: cli, used by :func:`gastown.supervisor.cli.main` and the CLI server only.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from functools import cache
from typing import cast

from .. import __version__
from ._grammar import COMMANDS, Command, Group, OneOf

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gastown: <message>`` and exit 2, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gastown: {message} (see '{self.prog} --help')\n")


def _subcommands(parser: argparse.ArgumentParser,
                 title: str) -> argparse._SubParsersAction[_Parser]:
    """``parser``'s sub-commands; ``parser`` alone prints its own help."""
    parser.set_defaults(handler=None, help_parser=parser)
    return parser.add_subparsers(title=title, metavar="COMMAND", parser_class=_Parser)


def _add(sub: argparse._SubParsersAction[_Parser], entry: Command | Group) -> None:
    if isinstance(entry, Group):
        parser = sub.add_parser(entry.name, help=entry.help, description=entry.description)
        inner = _subcommands(parser, f"{entry.name} commands")
        for each in entry.commands:
            _add(inner, each)
        return
    parser = sub.add_parser(entry.name, help=entry.help, description=entry.help)
    parser.set_defaults(handler=entry.handler, **entry.defaults)
    for item in entry.args:
        target: argparse._ActionsContainer = parser
        if isinstance(item, OneOf):
            target = parser.add_mutually_exclusive_group()
        for one in item.args if isinstance(item, OneOf) else (item,):
            target.add_argument(*one.names, **one.options)


@cache
def build_parser() -> _Parser:
    """The whole command line's parser; built once per process (the CLI server builds it
    before it forks, so that no command pays for it)."""
    parser = _Parser(
        prog="gastown",
        description="Run many AI coding agents on one repository: each in its own git "
                    "worktree, merged through a queue, cleaned up after.",
    )
    parser.add_argument("--version", action="version", version=f"gastown {__version__}")
    parser.add_argument("--town", metavar="PATH",
                        help="the town to act on (default: $GASTOWN_TOWN, else the "
                             "town.toml above the current directory)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show log lines on stderr")
    sub = _subcommands(parser, "commands")
    for entry in COMMANDS:
        _add(sub, entry)
    return parser


def run_handler(args: argparse.Namespace) -> int:
    module_name, _, function = cast(str, args.handler).partition(":")
    module = importlib.import_module(f".{module_name}", __package__)
    handler = cast(Handler, getattr(module, function))
    return handler(args)

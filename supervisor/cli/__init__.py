"""The ``gastown`` command: parse, call, print one line on error, exit.

This package is imported by every invocation, so it imports only ``argparse`` and the
standard library at module level; each command's module is imported when that
command runs (``gastown --version`` and ``--help`` stay fast).

Exit codes: 0 ok, 1 operation failed, 2 usage error. :func:`main` is the only place
that turns a :class:`~gastown.roles.errors.GastownError` into ``gastown: <message>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``gastown`` command; returns the process exit status."""
    from gastown.supervisor.cli._parser import build_parser, run_handler

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        args.help_parser.print_help(sys.stderr)
        return 2
    from gastown.roles.errors import GastownError

    try:
        return run_handler(args)
    except GastownError as exc:
        print(f"gastown: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gastown: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``gastown bead list | head``): not an error worth a line.
        sys.stderr.close()
        return 0

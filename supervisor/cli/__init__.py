"""The ``gastown`` command: parse, call, print one line on error, exit.

Layer: cli, at the top of the town with the rest of ``supervisor``: it may import anything,
and nothing but ``python -m gastown.supervisor`` imports it.

This package is imported by every invocation, so it imports only ``argparse`` and the
standard library at module level; each command's module is imported when that
command runs (``gastown --version`` and ``--help`` stay fast).

Exit codes: 0 ok, 1 operation failed, 2 usage error. :func:`main` is the only place
that turns a :class:`~gastown.roles.core.errors.GastownError` into ``gastown: <message>``.
"""

from __future__ import annotations

import sys

#: ``typing.TYPE_CHECKING`` without importing typing (every command pays for its imports);
#: type checkers treat a constant of this name as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Sequence


def entry(argv: Sequence[str] | None = None) -> int:
    """The ``gastown`` executable: the command runs in the town's CLI fork server when
    the town runs one (:mod:`._remote`: the same :func:`main`, without the start-up
    cost), else in this process."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:  # what argparse would print, without building the parser
        from .. import __version__

        print(f"gastown {__version__}")
        return 0
    from ._remote import run_remote

    status = run_remote(words)
    return main(words) if status is None else status


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``gastown`` command; returns the process exit status."""
    from ._parser import build_parser, run_handler

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        args.help_parser.print_help(sys.stderr)
        return 2
    from ...roles.adapters.faults import fault_point
    from ...roles.core.errors import GastownError

    try:
        fault_point("cli", "command.start")
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
    except Exception as exc:
        message = _environment_failure(exc)
        if message is None:
            raise  # a bug: keep its traceback
        print(f"gastown: {message}", file=sys.stderr)
        return 1


#: OS errors that say the machine, not gastown, is in trouble: a full disk or quota, a
#: file over the size limit, a read-only filesystem, an I/O error.
_ENVIRONMENT_ERRNOS = frozenset({"ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO"})


def _environment_failure(exc: Exception) -> str | None:
    """One line for a failure of the disk or of SQLite that no handler turned into a
    :class:`~gastown.roles.core.errors.GastownError` (the store names its file itself)."""
    import errno

    if isinstance(exc, OSError) and errno.errorcode.get(exc.errno or 0) in _ENVIRONMENT_ERRNOS:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror)
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        return f"the town's store could not be used: {exc}"
    return None

"""``python -m gastown.supervisor`` is the same as the ``gastown`` command.

Layer: supervisor, the top of the town: the ``gastown`` command's other way in; it only
calls the CLI's :func:`~gastown.supervisor.cli.entry`.
"""

from .cli import entry

raise SystemExit(entry())

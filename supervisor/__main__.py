"""``python -m gastown.supervisor`` is the same as the ``gastown`` command."""

from gastown.supervisor.cli import main

raise SystemExit(main())

"""``python -m gastown.supervisor`` is the same as the ``gastown`` command."""

from .cli import main

raise SystemExit(main())

"""``python -m gastown.roles ROLE --town PATH``: one role process (started by the supervisor)."""

from .role_process import main

raise SystemExit(main())

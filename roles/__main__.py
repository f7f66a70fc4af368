"""``python -m gastown.roles ROLE --town PATH``: one role process (started by the supervisor).

Layer: entry point, at the top of ``roles``: the supervisor's role runner starts it, and it
imports only :mod:`.role_process`.
"""

from .role_process import main

raise SystemExit(main())

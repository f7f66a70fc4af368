"""The town's domain: mayor, witness and refinery, and what they share.

Layer: core, as far as its own code goes: only ``__version__``, which
:mod:`.adapters.town_lock` records in the lock files; the package holds every layer of
``roles``, listed below.

Layering, top to bottom (imports only flow downward), one folder a layer:
- the role process (``role_process``, run by ``python -m gastown.roles``), which runs
  one role loop: ``mayor``, ``witness``, ``refinery`` (they get a ``role_context``);
  these are the modules at the top (the embedded ``script`` agent, a client of the
  command line, is ``gastown.supervisor.script_agent``);
- ``operations/``: what the roles and the CLI do to the town (sling and nuke in
  ``polecats``, ``rigs``, ``crew``, ``gates``, ``reconcile``, the agent watch);
- ``adapters/``: one kind of I/O each: ``store`` (SQLite), ``git`` (over ``git_command``),
  ``tmux`` (the only module that runs tmux; ``sessions`` and ``tmux_input`` above it),
  ``processes`` (the only one that reads ``/proc`` and stops process trees), ``children``
  (role processes, lifelines), ``town_lock`` and ``role_lock`` (the supervisor, start and
  role locks, over ``flocks``), ``files``, ``log``;
- ``core/``: pure decisions with no I/O: ``lifecycle``, ``merge_queue``, ``turn_end``,
  ``names``, ``config``, ``errors``, ``agent_screen``.
Below ``roles`` is only the bus (``gastown.supervisor.bus``, where :class:`GastownError`
is defined) and the shipped defaults (``gastown.config``); nothing here imports the rest
of ``gastown.supervisor``. ``tests/unit/test_layering.py`` checks the graph.
"""

#: gastown's version (``gastown.supervisor.__version__`` is this one): it is defined at
#: this layer because the town's lock files record it, and roles import nothing above.
__version__ = "0.1.0"

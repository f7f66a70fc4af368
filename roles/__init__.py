"""The town's domain: mayor, witness and refinery, and what they share.

Layering, top to bottom (imports only flow downward):

- the role process (``role_process``, run by ``python -m gastown.roles``), which runs
  one role loop: ``mayor``, ``witness``, ``refinery`` (they get a ``role_context``);
- operations the CLI and the roles share: ``town``, ``rigs``;
- adapters that touch the world: ``store`` (SQLite), ``git``, ``log``, ``children``
  (role processes, lifelines), ``town_lock`` (the supervisor, role and start locks);
- pure cores with no I/O: ``names``, ``config``, ``errors``.

Below ``roles`` is only the bus (``gastown.supervisor.bus``, where :class:`GastownError`
is defined) and the shipped defaults (``gastown.config``); nothing here imports the rest
of ``gastown.supervisor``. ``tests/unit/test_layering.py`` checks the graph.
"""

#: gastown's version (``gastown.supervisor.__version__`` is this one): it is defined at
#: this layer because the town's lock files record it, and roles import nothing above.
__version__ = "0.1.0"

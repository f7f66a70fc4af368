"""The town's domain: mayor, witness and refinery, and what they share.

Layering, top to bottom (imports only flow downward):

- role loops: ``mayor``, ``witness``, ``refinery``;
- operations the CLI and the roles share: ``town``, ``rigs``;
- adapters that touch the world: ``store`` (SQLite), ``git``, ``log``;
- pure cores with no I/O: ``names``, ``config``, ``errors``.
"""

#: gastown's version (``gastown.supervisor.__version__`` is this one): it is defined at
#: this layer because the town's lock files record it, and roles import nothing above.
__version__ = "0.1.0"

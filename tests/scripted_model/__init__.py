"""A scripted model server on loopback for testing the real agent CLIs offline.

See ``protocol`` for the script format and ``server`` for the HTTP side.
"""

from tests.scripted_model.server import ModelServer, read_log

__all__ = ["ModelServer", "read_log"]

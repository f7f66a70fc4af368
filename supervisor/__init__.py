"""Process supervision, the local message bus, sd_notify and the command line.

Layer: supervisor, the top of the town: it imports ``roles``, the bus and ``config``;
nothing imports it but its own modules and the tests.

Nothing here knows what a polecat does; it keeps the role processes alive and
carries their messages. Domain behaviour lives in :mod:`gastown.roles`.
"""

from ..roles import __version__ as __version__

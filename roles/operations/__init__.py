"""What the roles do to the town: sling, nuke, submit, gate, reconcile, watch agents.

Layer: operations, in ``roles`` above the adapters and below the role loops. An operation
combines the cores' decisions with the adapters' I/O; the CLI and the role loops (``mayor``,
``witness``, ``refinery``) call operations, operations never call them.
"""

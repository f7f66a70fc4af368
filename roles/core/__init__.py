"""The pure cores of the town's domain: decisions in, decisions out, no I/O.

Layer: core, the bottom of ``roles``. The polecat lifecycle, the merge queue's plan, turn
ends, names, configuration checks, agent screens and the error types. Nothing here reads a
file, runs a process or opens a socket, so every rule can be tested exhaustively; the layer
test (``tests/unit/test_layering.py``) keeps it so.
"""

"""The town's adapters: each one kind of I/O behind plain functions.

Layer: adapters, in ``roles`` above the cores. git, tmux sessions, process trees and
``/proc``, locks and pid files, the SQLite store, the structured log, agent homes and usage
files. Adapters import the cores and each other, never an operation or a role loop.
"""

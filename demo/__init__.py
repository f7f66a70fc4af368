"""The README's main job (``make demo``): a running town merges, rejects and cleans up.

It builds a small sample project (a ``calc`` package that ships its ``unittest`` tests) with
a bare clone standing for its remote, a town around it whose rig gates every merge on those
tests, and a ledger of ``script`` beads (each bead's description is the shell script its
agent runs): independent good changes, a pair that rewrites the same line, and one change
that breaks the tests. Then it starts the town, slings every bead, follows the live feed
until every bead has settled, checks the outcomes, the remote and the clean-up, and stops
the town. Every ``gastown`` command it runs is the real CLI, echoed with its output.
It lives outside the installed package: it is a driver of the CLI, not part of it.

Sessions use the ``process`` backend (detached process groups, output in
``logs/sessions/``), so the demo needs no tmux.

Run it from the repository's root: ``python -m demo [--agent claude|codex] [--dir D]``
(``make demo``). Layout: :mod:`demo.sample` (the sample project and its beads),
:mod:`demo.town` (driving the town through the real CLI and its live feed),
:mod:`demo.checks` (what the outcome must be), :mod:`demo.__main__` (the run).
"""

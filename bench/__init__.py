"""The benchmark suite (``make bench``, ``python -m bench.run``): see bench/README.md.

Importing the package (any ``python -m bench.X`` does) makes every gastown process the
benchmarks start use compiled bytecode, as an installed gastown does on a user's machine.
This machine's environment sets ``PYTHONDONTWRITEBYTECODE`` (to keep ``__pycache__`` out of
the tree); without a cache each ``gastown`` command, role, launcher and agent would compile
its modules again at every start, a cost no user pays (measured: ~6 ms of a served
``gastown status``'s 28 ms). The compiled files go outside the tree
(``PYTHONPYCACHEPREFIX``, as the test suite does); the baselines (``python -c pass``, the
shell loop, supervisord) are run in the same environment.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    _prefix = Path(tempfile.gettempdir()) / f"gastown-bench-pycache-{os.getuid()}"
    os.environ["PYTHONPYCACHEPREFIX"] = str(_prefix)
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    sys.pycache_prefix = str(_prefix)
    sys.dont_write_bytecode = False

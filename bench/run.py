"""Run every benchmark in ``bench/`` and print its table (``make bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import startup  # noqa: E402


def main() -> None:
    print("== CLI start-up ==")
    startup.main()


if __name__ == "__main__":
    main()

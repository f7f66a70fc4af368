"""Run every benchmark in ``bench/`` and print its table: ``make bench``."""

from __future__ import annotations

from bench import done_latency, restart, startup


def main() -> None:
    print("== CLI start-up ==")
    startup.main()
    print("\n== role restart latency ==")
    restart.main()
    print("\n== done -> merge queue ==")
    done_latency.main()


if __name__ == "__main__":
    main()

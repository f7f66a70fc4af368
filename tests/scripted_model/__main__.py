"""``python -m tests.scripted_model --port 0 --log FILE``: serve until SIGTERM or SIGINT.

Prints ``listening http://127.0.0.1:PORT`` (flushed) once the port is bound.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from tests.scripted_model.server import make_server


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scripted_model",
                                     description="scripted model server (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path, required=True, help="JSON-lines request log")
    parser.add_argument("--dump", type=Path, help="keep every request body in this folder")
    args = parser.parse_args(argv)
    server = make_server(args.log, host=args.host, port=args.port, dump_dir=args.dump)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"listening http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The supervisor's side of the CLI fork server: keep one running for the town's life.

Layer: supervisor, the top of the town; runs in the supervisor's nursery.

The server (:mod:`gastown.supervisor.cli_server`) only makes commands start faster:
clients run a command themselves whenever it is not there. So it is not a role: it has
no place in ``status``, no restart budget and no domain events, and it never holds up
readiness. A server that dies is started again after a pause that doubles up to a
minute (and resets after a minute of health); it is stopped with the town, and its
lifeline makes it exit if the supervisor is killed.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from typing import Final

import trio

from ..roles.adapters import log
from ..roles.adapters.children import Child, Lifeline, start_child, stop_child
from ..roles.adapters.town import Town
from .cli_server import UNUSABLE
from .cli_server_fork import ForkedServer
from .role_forks import RoleForks
from .role_template import CHANNEL_ENV

#: Set to ``0`` (in the supervisor's environment) to run no CLI server.
ENV_SWITCH: Final = "GASTOWN_CLI_SERVER"

FIRST_DELAY: Final = 1.0
MAX_DELAY: Final = 60.0
HEALTHY_AFTER: Final = 60.0


async def keep_cli_server(town: Town, lifeline: Lifeline, env: Mapping[str, str],
                          forks: RoleForks | None = None,
                          first: ForkedServer | None = None) -> None:
    """Run the town's CLI fork server until cancelled, restarting it when it dies; with
    ``forks``, it is also the template roles are forked from (:mod:`.role_forks`).

    ``first``: a server ``up`` already forked (:mod:`.cli_server_fork`), told to serve
    and adopted as the first one; the later ones are started here."""
    if env.get(ENV_SWITCH) == "0":
        if first is not None:
            first.discard()
        return
    logger = log.get_logger()
    argv = [sys.executable, "-m", "gastown.supervisor.cli_server", "--town", str(town.root)]
    stdout_path = town.logs_dir / "cli-server.out"
    delay = FIRST_DELAY
    while True:
        proc: Child | None = None
        pair: tuple[socket.socket, socket.socket | None] | None = None
        try:
            if first is not None:
                proc, channel, first = first, first.channel, None
                proc.channel = None
                proc.go()
                if forks is not None and forks.enabled and channel is not None:
                    pair = (channel, None)
                    forks.starting = True
                elif channel is not None:
                    channel.close()
            else:
                pair = forks.new_channel() if forks is not None else None
                extra = {CHANNEL_ENV: pair[1].fileno()} if pair is not None and pair[1] \
                    else None
                proc = await start_child(argv, env=env, cwd=town.root, lifeline=lifeline,
                                         stdout_path=stdout_path, extra_fds=extra)
            started = trio.current_time()
            logger.info("cli_server_started", pid=proc.pid,
                        how="exec" if isinstance(proc, trio.Process) else "fork")
            async with trio.open_nursery() as nursery:
                if forks is not None and pair is not None:
                    if pair[1] is not None:
                        pair[1].close()
                    nursery.start_soon(forks.serve, pair[0])
                    pair = None
                code = await proc.wait()
                nursery.cancel_scope.cancel()
            proc = None
            if code == UNUSABLE:
                logger.info("cli_server_unusable", town=str(town.root))
                return
            if trio.current_time() - started >= HEALTHY_AFTER:
                delay = FIRST_DELAY
            logger.warning("cli_server_exited", status=code, retry_in=delay)
        except OSError as exc:
            logger.warning("cli_server_not_started", error=str(exc), retry_in=delay)
            if forks is not None:
                forks.abandon()
        finally:
            if pair is not None:
                pair[0].close()
                if pair[1] is not None:
                    pair[1].close()
            if proc is not None:
                with trio.CancelScope(shield=True):
                    await stop_child(proc, 2.0)
        await trio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


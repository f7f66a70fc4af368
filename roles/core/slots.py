"""Pure: a live polecat's slot (a small integer unique in its rig) and its block of ports.

Layer: core (pure). The store allocates the slot with :func:`free_slot` in the transaction
that reserves the polecat; the spawn picks the first free port of :func:`port_block` (the
bind test is the operation's); :func:`expand` fills ``{port}`` and ``{slot}`` in the
``[polecats.setup] env`` values.

``polecats.ports = "4100-4199"`` is split into ``polecats.max`` equal blocks, one per
slot: with ``max = 10`` slot 0 owns 4100-4109, slot 3 owns 4130-4139. A slot at or past
``max`` (a rig holding more rows than its cap: escalated polecats keep theirs) has no
block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RANGE = re.compile(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$")
LOWEST_PORT = 1024
HIGHEST_PORT = 65535


def parse_ports(text: str) -> tuple[int, int] | None:
    """``"4100-4199"`` -> ``(4100, 4199)``; None when malformed or outside 1024-65535."""
    m = _RANGE.match(text)
    if not m:
        return None
    low, high = int(m.group(1)), int(m.group(2))
    if not LOWEST_PORT <= low <= high <= HIGHEST_PORT:
        return None
    return low, high


def free_slot(held: Iterable[int | None]) -> int:
    """The smallest slot (from 0) not in ``held``."""
    taken = {slot for slot in held if slot is not None}
    slot = 0
    while slot in taken:
        slot += 1
    return slot


def port_block(span: tuple[int, int], blocks: int, slot: int) -> range:
    """The ports of ``slot`` when ``span`` is split in ``blocks`` equal blocks (the
    remainder at the end is unused); empty when the slot has no block."""
    size = (span[1] - span[0] + 1) // max(1, blocks)
    if slot < 0 or slot >= blocks or size <= 0:
        return range(0)
    start = span[0] + slot * size
    return range(start, start + size)


def expand(template: str, *, port: int | None, slot: int | None) -> str:
    """``template`` with ``{port}`` and ``{slot}`` replaced (by ``""`` when unknown)."""
    return (template.replace("{port}", "" if port is None else str(port))
            .replace("{slot}", "" if slot is None else str(slot)))

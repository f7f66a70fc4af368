"""What commands print: tables, JSON, short ages and times, a merge request as JSON.

Layer: cli, under every command module of :mod:`gastown.supervisor.cli` (beside
:mod:`._context`, which finds the town and its store).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ...roles.adapters.store import MergeRequest

T = TypeVar("T")


def mr_json(m: MergeRequest) -> dict[str, Any]:
    """A merge request as ``mq list --json``, ``mq show --json`` and ``bead show --json``
    print it."""
    return {"id": m.id, "rig": m.rig, "bead": m.bead, "polecat": m.polecat, "kind": m.kind,
            "branch": m.branch, "state": m.state, "step": m.step, "gate": m.gate,
            "priority": m.priority, "reason": m.reason, "head": m.head, "base": m.base,
            "candidate": m.candidate, "merged_commit": m.merged_commit, "log": m.log_path,
            "tail": m.tail, "steps": list(m.steps), "created_at": m.created_at,
            "updated_at": m.updated_at, "age": round(time.time() - m.created_at, 1)}


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    json.dump(to_jsonable(value), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        parts = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        print("  ".join(parts).rstrip())


def print_json_or_empty(as_json: bool, rows: Sequence[T], as_json_row: Callable[[T], Any],
                        empty: str) -> bool:
    """The start of a listing: with ``--json`` every row (as ``as_json_row`` has it), else
    the line ``empty`` when there is no row. True when that was the whole listing; False
    when the caller prints its table."""
    if as_json:
        print_json([as_json_row(row) for row in rows])
        return True
    if not rows:
        print(empty)
        return True
    return False


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value).replace("\n", " ")


def age(since: float, now: float | None = None) -> str:
    """A short human age: ``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, (now if now is not None else time.time()) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

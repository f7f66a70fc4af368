"""Pure: :class:`Frozen`, the base of the core's small value types (events, effects).

Layer: roles/core. A state machine's inputs and outputs are sums of many small immutable
records, most with one field or none; declared with this base each is a line or two
(``class Merged(LifecycleEvent): ...``) instead of a decorator and a body of ``pass``,
and ``match`` takes them apart like any dataclass. ``dataclass_transform`` tells type
checkers what ``__init_subclass__`` does at run time: every subclass, direct or not, is
a frozen dataclass of its own annotated fields and its bases'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import dataclass_transform


@dataclass_transform(frozen_default=True)
class Frozen:
    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True)(cls)

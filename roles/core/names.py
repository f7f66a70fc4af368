"""Pure rules for the names users and agents give us: validation and derivation.

Layer: core (pure), used by the operations, the store and the CLI wherever a name comes in.

Every command that takes a rig, polecat, crew or branch name validates it here, so
a name that reaches the filesystem, git or tmux has already been checked once, the
same way, with the same message. No I/O: this module imports only the standard
library's data modules.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence, Set
from typing import Final, Literal

from .errors import UsageError

NameKind = Literal["rig", "polecat", "crew", "branch", "agent"]

MAX_NAME_LENGTH: Final = 64

#: Characters git refuses anywhere in a ref (``git help check-ref-format``, rules 4, 5, 10).
_GIT_FORBIDDEN: Final = frozenset(" ~^:?*[\\")

#: Rig names that would collide with the town's own entries.
_RESERVED_RIG_NAMES: Final = frozenset({"logs", "config", "town", "hq", "list", "remove"})

_BASE36: Final = string.digits + string.ascii_lowercase

BEAD_ID_RE: Final = re.compile(r"^[a-z]{2,4}-[0-9a-z]{5}$")


def _component_problem(component: str) -> str | None:
    """Why git would refuse ``component`` as one slash-free part of a ref, or None."""
    if not component:
        return "must not be empty"
    if component.startswith("."):
        return "must not start with '.'"
    if component.endswith(".lock"):
        return "must not end with '.lock'"
    if component.endswith("."):
        return "must not end with '.'"
    return None


def name_problem(kind: NameKind, name: str) -> str | None:
    """The reason ``name`` is not acceptable as a ``kind`` name, or None if it is.

    The rules are the union of what the filesystem, git (as a ref component) and our
    own CLI need: no path traversal, no leading ``-`` (it would read as an option), no
    whitespace or control characters, nothing ``git check-ref-format`` rejects, at most
    64 characters. Only branch names may contain ``/``, between non-empty components.
    """
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    if name.startswith("-"):
        return "must not start with '-'"
    if ".." in name:
        return "must not contain '..'"
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or (0x80 <= ord(ch) < 0xA0):
            return "must not contain control characters"
        if ch.isspace():
            return "must not contain whitespace"
    if kind != "branch" and "/" in name:
        return "must not contain '/'"
    bad = sorted(set(name) & _GIT_FORBIDDEN)
    if bad:
        return "must not contain " + " ".join(repr(c) for c in bad)
    if "@{" in name:
        return "must not contain '@{'"
    if name == "@":
        return "must not be '@'"
    for component in name.split("/"):
        problem = _component_problem(component)
        if problem is not None:
            if kind == "branch" and "/" in name:
                return f"has a component that {problem}"
            return problem
    if kind == "rig" and name.lower() in _RESERVED_RIG_NAMES:
        return "is reserved by the town"
    return None


def validate_name(kind: NameKind, name: str) -> str:
    """Return ``name`` unchanged, or raise :class:`UsageError` saying why it is refused."""
    problem = name_problem(kind, name)
    if problem is not None:
        raise UsageError(f"invalid {kind} name {name!r}: {problem}")
    return name


def _prefix_candidates(rig_name: str) -> Iterator[str]:
    lowered = rig_name.lower()
    letters = "".join(c for c in lowered if c in string.ascii_lowercase)
    parts = [p for p in re.split(r"[^a-z]+", lowered) if p]
    if lowered.isalpha() and lowered.isascii() and 2 <= len(lowered) <= 4:
        yield lowered
    if len(parts) >= 2:
        initials = "".join(p[0] for p in parts)[:4]
        if len(initials) >= 2:
            yield initials
    for n in (2, 3, 4):
        if len(letters) >= n:
            yield letters[:n]
    head = letters[:1] or "r"
    for other in letters[1:]:
        yield head + other
    # Exhaustive fallback: every 2-4 letter string that starts with the rig's first letter,
    # then every other 2-letter string; the town runs out of rigs long before this does.
    for length in (2, 3, 4):
        for n in range(26 ** (length - 1)):
            tail = ""
            for _ in range(length - 1):
                n, r = divmod(n, 26)
                tail = string.ascii_lowercase[r] + tail
            yield head + tail


def derive_prefix(rig_name: str, taken: Set[str]) -> str:
    """A bead prefix for ``rig_name``: 2-4 lowercase ASCII letters, not in ``taken``.

    Deterministic: the same name and the same taken set give the same prefix, so a
    user can predict it (``web`` -> ``web``, ``my-app`` -> ``ma``, ``frontend`` -> ``fr``).
    """
    for candidate in _prefix_candidates(rig_name):
        if candidate not in taken:
            return candidate
    raise UsageError(f"no free bead prefix left for rig {rig_name!r}; pass --prefix")


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` is not a valid bead prefix (2-4 lowercase ASCII letters), or None."""
    if not (2 <= len(prefix) <= 4 and prefix.isascii() and prefix.isalpha()
            and prefix.islower()):
        return "must be 2-4 lowercase letters"
    return None


def bead_id(prefix: str, number: int) -> str:
    """The bead id ``<prefix>-<5 base36 digits>`` for ``number`` (taken modulo 36**5)."""
    number %= 36**5
    digits = ""
    for _ in range(5):
        number, r = divmod(number, 36)
        digits = _BASE36[r] + digits
    return f"{prefix}-{digits}"


#: The built-in polecat name pool: short, distinct, easy to type in ``gastown attach``.
DEFAULT_POLECAT_NAMES: Final = (
    "toast", "alpha", "bravo", "cobalt", "dingo", "ember", "flint", "gizmo", "havoc",
    "indigo", "jolt", "kilo", "lumen", "mango", "nitro", "onyx", "pixel", "quartz", "rivet",
    "sable", "tango", "umber", "vortex", "widget", "xenon", "yonder", "zephyr", "amber",
    "basil", "cinder", "delta", "echo", "fable", "garnet", "hazel", "ivory", "jasper",
    "karma", "lotus", "marble", "nova", "opal", "pepper", "quill", "raven", "sprocket",
    "tinder", "ultra", "velvet", "wren", "yarrow", "zinc", "acorn", "bolt", "cricket",
    "dune", "furiosa", "nux", "slit", "rictus",
)

#: Names that would read as a role or a town folder in paths, sessions and logs.
RESERVED_POLECAT_NAMES: Final = frozenset({"witness", "mayor", "refinery", "crew", "polecats",
                                           "supervisor"})


def next_polecat_name(pool: Sequence[str], held: Set[str]) -> str:
    """The first name of ``pool`` (in order) that is not ``held``; then numbered overflow.

    Overflow names are the numbers after the pool's size (``61``, ``62`` ...), skipping
    any that are held. Pure: the caller passes the held set read inside the same
    transaction that records the new polecat, so two slings can never get one name.
    """
    for name in pool:
        if name not in held and name not in RESERVED_POLECAT_NAMES:
            return name
    n = len(pool) + 1
    while str(n) in held:
        n += 1
    return str(n)

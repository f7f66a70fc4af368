"""What one chaos run does, drawn from its seed: beads, armed fail points, kills.

Pure and deterministic: the same seed gives the same plan. (The run itself is not
deterministic: real processes interleave as the machine schedules them. The seed fixes
*what* is done and *when* it is tried, so a failing seed is a good way back to a bug.)
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Final, Literal

RIG: Final = "web"

#: Kill targets, in the order the summary prints them.
TARGETS: Final = ("supervisor", "mayor", "witness", "refinery", "agent", "gate")

#: The fail points a run may arm (``grep -rn 'fault_point(' roles supervisor``), by the
#: process that passes them. ``cli@crew.after_worktree`` (no crew here),
#: ``supervisor@watchdog.tick`` (only under systemd's watchdog) and ``cli@command.start``
#: (it would pause the harness's own commands) are never armed.
FAIL_POINTS: Final[tuple[tuple[str, str], ...]] = (
    ("supervisor", "start"),
    ("supervisor", "start.locked"),
    ("mayor", "start"),
    (f"witness:{RIG}", "start"),
    (f"refinery:{RIG}", "start"),
    ("mayor", "ready"),
    (f"witness:{RIG}", "ready"),
    (f"refinery:{RIG}", "ready"),
    ("mayor", "sling.after_reserve"),
    ("mayor", "sling.after_worktree"),
    ("mayor", "sling.after_session"),
    ("mayor", "sling.before_session_recorded"),
    (f"refinery:{RIG}", "merge.before_rebase"),
    (f"refinery:{RIG}", "merge.before_gates"),
    (f"refinery:{RIG}", "merge.after_gates"),
    (f"refinery:{RIG}", "merge.after_ff"),
    (f"refinery:{RIG}", "merge.after_push"),
)

#: Fail points the harness knows are unreachable in its towns (see above;
#: ``sling.after_setup`` needs a ``[polecats.setup]`` command, which its rigs lack).
UNREACHED_POINTS: Final = frozenset({"crew.after_worktree", "watchdog.tick", "command.start",
                                     "sling.after_setup"})

#: Fail points only a run with a feature on can reach, armed in addition to the others
#: (drawn from :func:`_features_rng`): the warm pool's and the speculative merge's.
POOL_POINTS: Final[tuple[tuple[str, str], ...]] = (
    ("mayor", "sling.after_pool_take"),
    ("mayor", "pool.after_fill_add"),
    ("mayor", "pool.after_clean_move"),
)
SPECULATION_POINTS: Final[tuple[tuple[str, str], ...]] = (
    (f"refinery:{RIG}", "merge.speculating"),
)

BeadKind = Literal["independent", "conflict", "broken"]
Reaction = Literal["kill-process", "kill-supervisor"]


@dataclass(frozen=True)
class BeadSpec:
    """One bead: ``script`` is its description, which the ``script`` agent runs."""

    key: str
    kind: BeadKind
    script: str


@dataclass(frozen=True)
class Kill:
    """kill -9 of ``target`` about ``at`` seconds after the town first came up."""

    at: float
    target: str


@dataclass(frozen=True)
class ArmedFault:
    """A fail point armed with a pause; when it fires, the harness kills the paused
    process (or, to test that a blocked role cannot outlive it, the supervisor)."""

    process: str
    point: str
    reaction: Reaction
    delay: float  # seconds between the pause and the kill: others run on meanwhile


@dataclass(frozen=True)
class Plan:
    seed: int
    backend: Literal["process", "tmux"]
    on_conflict: Literal["reject", "resling"]
    gate_delay: float
    beads: tuple[BeadSpec, ...]
    slung_before_up: int
    kills: tuple[Kill, ...]
    faults: tuple[ArmedFault, ...]
    #: The throughput features of issue 14, each on in some runs: a warm worktree pool
    #: (``polecats.pool_size``), the adaptive merge batch, the speculative gate.
    pool_size: int = 0
    batch_size: Literal["1", "auto"] = "1"
    speculative: bool = False

    def describe(self) -> str:
        kinds = [b.kind[0] for b in self.beads]
        faults = ",".join(f"{f.process}@{f.point}{'!' if f.reaction != 'kill-process' else ''}"
                          f"{f'+{f.delay:g}s' if f.delay else ''}" for f in self.faults) or "-"
        kills = ",".join(f"{k.target}@{k.at:.1f}" for k in self.kills) or "-"
        return (f"seed={self.seed} backend={self.backend} on_conflict={self.on_conflict} "
                f"pool={self.pool_size} batch={self.batch_size} "
                f"speculative={'yes' if self.speculative else 'no'} "
                f"beads={''.join(kinds)} kills={kills} faults={faults}")


def _script(rng: random.Random, body: str) -> str:
    """A bead script: a pause (a window for kills), then ``body``."""
    delay = rng.choice([0.0, 0.2, 0.5, 1.0, 1.5])
    return f"sleep {delay}\n{body}" if delay else body


def _nonce(rng: random.Random) -> str:
    """Most scripts write something new each time they run: a redo is then a different
    patch, and lost work cannot hide behind an identical redo that landed."""
    return " $(date +%s%N)" if rng.random() < 0.8 else ""


def _beads(rng: random.Random) -> tuple[BeadSpec, ...]:
    beads: list[BeadSpec] = []
    for i in range(rng.randint(4, 6)):
        beads.append(BeadSpec(f"ind{i}", "independent", _script(
            rng, f'echo "independent {i}{_nonce(rng)}" > file{i}.txt')))
    for side in ("a", "b"):
        beads.append(BeadSpec(f"conflict-{side}", "conflict", _script(
            rng, f"sed -i \"s/^line 2$/conflict {side}{_nonce(rng)}/\" shared.txt && "
                 f"grep -q 'conflict {side}' shared.txt")))
    beads.append(BeadSpec("broken", "broken", _script(
        rng, f'touch BROKEN && echo "broken{_nonce(rng)}" > broken.txt')))
    rng.shuffle(beads)
    return tuple(beads)


def _kill_time(rng: random.Random, target: str) -> float:
    if target == "agent":
        return round(rng.uniform(0.3, 4.0), 2)  # agents run early in a run
    if target == "gate":
        return round(rng.uniform(1.0, 8.0), 2)
    return round(rng.uniform(0.2, 9.0), 2)


def make_plan(seed: int, *, tmux_fraction: float = 0.0, max_kills: int = 5,
              max_faults: int = 2) -> Plan:
    """The plan of the run with ``seed``: 7-9 beads, 1..max_kills kills, 0..max_faults
    armed fail points."""
    rng = random.Random(seed)
    beads = _beads(rng)
    weights = {"supervisor": 2, "mayor": 2, "witness": 2, "refinery": 2, "agent": 3, "gate": 3}
    kills = []
    for _ in range(rng.randint(max(1, max_kills // 2), max_kills)):
        target = rng.choices(list(weights), weights=list(weights.values()))[0]
        kills.append(Kill(_kill_time(rng, target), target))
    points = rng.sample(FAIL_POINTS, rng.randint(0, max_faults))
    faults = tuple(ArmedFault(process, point,
                              "kill-supervisor" if rng.random() < 0.25 else "kill-process",
                              rng.choice([0.0, 0.0, 0.5, 1.5, 3.0]))
                   for process, point in points)
    plan = Plan(
        seed=seed,
        backend="tmux" if rng.random() < tmux_fraction else "process",
        on_conflict="resling" if rng.random() < 0.3 else "reject",
        gate_delay=rng.choice([0.2, 0.4, 0.8]),
        beads=beads,
        slung_before_up=rng.randint(0, len(beads)),
        kills=tuple(sorted(kills, key=lambda k: k.at)),
        faults=faults,
    )
    return _with_features(plan, _features_rng(seed), max_faults)


def _features_rng(seed: int) -> random.Random:
    """The features' own draws, apart from the rest of the plan: adding them left the
    beads, kills and fail points of every seed as they were (the CI's seeds among them)."""
    return random.Random(f"features-{seed}")


def _with_features(plan: Plan, rng: random.Random, max_faults: int) -> Plan:
    """``plan`` with the throughput features drawn: each on in about half the runs; with
    a feature on, sometimes one of its fail points armed too."""
    pool_size = 2 if rng.random() < 0.5 else 0
    batch: Literal["1", "auto"] = "auto" if rng.random() < 0.5 else "1"
    speculative = rng.random() < 0.5
    extra: list[tuple[str, str]] = []
    if pool_size and max_faults and rng.random() < 0.4:
        extra.append(rng.choice(POOL_POINTS))
    if speculative and max_faults and rng.random() < 0.4:
        extra.append(rng.choice(SPECULATION_POINTS))
    faults = plan.faults + tuple(
        ArmedFault(process, point, "kill-supervisor" if rng.random() < 0.25 else "kill-process",
                   rng.choice([0.0, 0.5, 1.5])) for process, point in extra)
    return dataclasses.replace(plan, pool_size=pool_size, batch_size=batch,
                               speculative=speculative, faults=faults)

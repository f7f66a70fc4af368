"""When to restart a role that exited, and when to give up: a pure decision.

Layer: supervisor, pure (no I/O), used by :mod:`.role_runner`.

The supervisor records what happened to a role in a :class:`RoleHistory` and asks
:func:`decide_restart` what to do. Time comes in as an argument (the supervisor passes
``trio.current_time()``, a monotonic clock: supervisord needed clock-rollback patches
because it used wall time) and so does randomness (``jitter_sample``), so every
decision can be replayed in a test. This module must never import trio, ``os``,
``time`` or ``random``.

The semantics are the consensus of supervisord, OTP and systemd:

- **Back-off.** The delay before restart number ``k + 1`` of a crash streak is
  ``base_delay * 2**k``, capped at ``max_delay`` (systemd's ``RestartSteps=`` and
  ``RestartMaxDelaySec=``). ``k`` counts the *quick* crashes before the current exit:
  runs shorter than ``stable_after`` seconds (supervisord's ``startsecs``). A run that
  lasted ``stable_after`` resets the streak, so a role that crashes once a day is
  always restarted after ``base_delay``.
- **Jitter.** The delay is multiplied by a factor in ``[1 - jitter, 1 + jitter]``
  drawn from ``jitter_sample``, so roles that crashed together do not restart in lock
  step; the result is still never above ``max_delay``.
- **Intensity limit.** More than ``max_restarts`` exits within the sliding ``period``
  (OTP's intensity/period, systemd's ``StartLimitBurst=``/``StartLimitIntervalSec=``)
  means the role is broken rather than unlucky: :class:`GiveUp`, with a reason the
  user can read ("6 exits in 60s").

A failed spawn (the executable is missing) counts as an exit of a run that never
started, so it is held to the same budget as a crash (circus #1157 flooded its logs
by retrying spawn failures without delay).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: ``2**k`` beyond this exponent is far past any sane ``max_delay``; capping ``k``
#: keeps ``base_delay * 2**k`` a finite float (and ``0 * 2**k`` from becoming NaN).
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How eagerly one role is restarted; all durations are in seconds.

    Args:
        base_delay: delay before the first restart of a streak.
        max_delay: the back-off never waits longer than this.
        max_restarts: the number of exits tolerated within ``period``; one more
            and the supervisor gives up on the role.
        period: the sliding window of the intensity limit.
        stable_after: a run at least this long is healthy and resets the back-off.
        jitter: the relative spread of the delay, in ``[0, 1]``.

    Raises:
        ValueError: when a value is out of range (validated once, here, so that an
            impossible policy cannot exist).
    """

    base_delay: float
    max_delay: float
    max_restarts: int
    period: float
    stable_after: float
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(
                f"need 0 <= base_delay <= max_delay, got {self.base_delay:g} and "
                f"{self.max_delay:g}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.period > 0:
            raise ValueError(f"period must be > 0, got {self.period:g}")
        if not self.stable_after >= 0:
            raise ValueError(f"stable_after must be >= 0, got {self.stable_after:g}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter:g}")


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the role again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop restarting the role; ``reason`` is one line for the user."""

    reason: str


@dataclass(frozen=True, slots=True)
class RoleHistory:
    """What the restart decision needs to know about one role, as a value.

    Attributes:
        exits: times of the role's recent exits, oldest first; only those that can
            still count against the intensity limit are kept.
        started_at: when the current run started, or ``None`` when the role is not
            running (never started, or its exit has been recorded).
        quick_crashes: the length of the current streak of runs shorter than
            ``stable_after``, the last recorded exit included; 0 after a stable run.

    Update it only through :meth:`record_start` and :meth:`record_exit`, which return
    new values.
    """

    exits: tuple[float, ...] = field(default=())
    started_at: float | None = None
    quick_crashes: int = 0

    def record_start(self, now: float) -> RoleHistory:
        """Return the history with a run started at ``now``."""
        return replace(self, started_at=now)

    def record_exit(self, policy: RestartPolicy, now: float) -> RoleHistory:
        """Return the history with an exit at ``now`` (of a run, or of a failed spawn).

        The run that ended is quick when it started less than ``policy.stable_after``
        ago, or never started; a quick run extends the crash streak and a stable
        one resets it. Exits older than ``policy.period`` are forgotten, so the
        history stays small however long the role lives.
        """
        stable = self.started_at is not None and now - self.started_at >= policy.stable_after
        exits = (*(t for t in self.exits if now - t <= policy.period), now)
        return RoleHistory(
            exits=exits,
            started_at=None,
            quick_crashes=0 if stable else self.quick_crashes + 1,
        )


def exits_in_window(policy: RestartPolicy, history: RoleHistory, now: float) -> int:
    """The number of recorded exits within ``policy.period`` seconds before ``now``."""
    return sum(1 for t in history.exits if now - t <= policy.period)


def decide_restart(
    policy: RestartPolicy, history: RoleHistory, now: float, jitter_sample: float
) -> Restart | GiveUp:
    """Decide what to do about a role whose exit was just recorded in ``history``.

    Args:
        policy: the role's restart policy.
        history: the role's history, *after* ``history.record_exit(policy, now)``.
        now: the current monotonic time, on the clock used for the history.
        jitter_sample: a uniform random number in ``[0, 1)``.

    Returns:
        :class:`GiveUp` when more than ``policy.max_restarts`` exits fall within
        ``policy.period``; otherwise :class:`Restart` with a delay in
        ``[0, policy.max_delay]``, ``base_delay * 2**k`` jittered, where ``k`` is the
        number of quick crashes before the last exit in the current streak.
    """
    recent = exits_in_window(policy, history, now)
    if recent > policy.max_restarts:
        return GiveUp(
            f"{recent} exits in {policy.period:g}s "
            f"(more than the {policy.max_restarts} allowed)"
        )
    k = min(max(history.quick_crashes - 1, 0), _MAX_EXPONENT)
    raw = policy.base_delay * 2.0**k
    sample = min(max(jitter_sample, 0.0), 1.0)
    factor = 1.0 - policy.jitter + 2.0 * policy.jitter * sample
    return Restart(delay=min(policy.max_delay, max(0.0, raw * factor)))

"""Pure: the merge queue's order, and batch-then-bisect as a state machine.

Layer: core (pure), driven by the refinery's role loop and
:mod:`gastown.roles.operations.merging`.

The refinery takes MRs in queue order (:func:`next_batch`) and drives a :class:`Plan`
for each batch. It asks :func:`next_action` what to do, does it (all the I/O is
the refinery's), and reports back:

- :class:`Test` ``(mrs)``: stack ``mrs`` in order onto main (main already holds what
  this plan has landed), run the gates, then call :func:`record_test`. If an MR
  cannot even be stacked (a rebase conflict), call :func:`drop` instead and ask again.
- :class:`Land` ``(mrs)``: fast-forward main to the candidate tested green for exactly
  these MRs (the last test, or in a chain the last green one), then call
  :func:`record_done`.
- :class:`Reject` ``(mr, reason)``: report that MR as failed, then :func:`record_done`.
- :class:`Finished`: nothing left.

The algorithm. Gate the whole batch; green lands it all. Red is re-run up to
``retry_flaky`` times (a flaky gate), and a green re-run lands it all. Still red, the
batch is bisected for its longest green prefix: the base (main) is green, the whole
batch is red, and each test of a prefix of half the known-red length either lands that
prefix at once (green: main moves to exactly what was tested, and the search goes on
in the rest on the new base) or becomes the new known-red prefix. When the known-red
prefix is a single MR, that MR is the culprit: it turns a green base red. It is
rejected, and what follows it starts over as a new batch.

Two choices differ from bors and upstream's ``batch.go``, which bisect first and land
the good subset at the end:

- A green prefix lands as soon as it is tested. So every :class:`Land` comes right
  after the green :class:`Test` of that very candidate, no "re-verify the good subset"
  run is needed, and a refinery that dies mid-bisection keeps what already landed.
- ``retry_flaky`` also guards the verdict on a culprit: before an MR is rejected, its
  own candidate (green base + that MR) must have run red ``1 + retry_flaky`` times. A
  flaky red during bisection then costs runs but never rejects a good MR; a bisection
  step's red is otherwise believed the first time.

A chain (``start_plan(..., each=True)``) gates every MR on its own instead: base + the
first MR, then base + the first two, and so on, each candidate one rebase more than the
last. When every candidate ran green the chain lands whole (one push for all); the
first red one (re-run ``retry_flaky`` times) is the culprit at once: the green prefix
before it lands and it is rejected, and the rest starts a new chain. So every commit a
chain puts on main was gated as it lands, as with batches of one, while the remote is
pushed once per chain (:func:`chain_limit` sizes it so that the first MR waits little).

Budget (a deterministic gate, see :func:`max_gate_runs`): with ``n`` MRs of which
``bad`` are bad, at most ``bad * (1 + 2*retry_flaky + ceil(log2 n)) + 1`` gate runs
(no ``+ 1`` when every MR is bad): each culprit costs one batch run and its retries,
at most ``ceil(log2 n)`` bisection runs and the retries confirming it; one more run
lands the good rest. Whatever the gate answers (flaky or not) and whatever is dropped,
a plan finishes within ``max_gate_runs(n, n, retry_flaky)`` runs: every round of
batch + bisection consumes at least one MR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final, Literal, Protocol, TypeVar, cast, overload

from .config import BatchSize
from .frozen import Frozen

# --------------------------------------------------------------------------- queue order

OrderKey = tuple[int, float, str]


def order_key(priority: int, created_at: float, mr_id: str) -> OrderKey:
    """The queue's sort key: priority ascending (0 most urgent), then oldest, then id."""
    return (priority, created_at, mr_id)


class QueuedMR(Protocol):
    """What :func:`next_batch` needs of an MR (the store's ``MergeRequest`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def created_at(self) -> float: ...


def mr_order_key(mr: QueuedMR) -> OrderKey:
    """:func:`order_key` of an MR record."""
    return order_key(mr.priority, mr.created_at, mr.id)


Q = TypeVar("Q", bound=QueuedMR)
T = TypeVar("T")


@overload
def next_batch(queued: Sequence[Q], batch_size: int) -> list[Q]: ...


@overload
def next_batch(queued: Sequence[T], batch_size: int, key: Callable[[T], OrderKey]) -> list[T]: ...


def next_batch(queued: Sequence[T], batch_size: int,
               key: Callable[[T], OrderKey] | None = None) -> list[T]:
    """The first ``batch_size`` of ``queued`` in queue order (by :func:`mr_order_key`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    sort_key = key if key is not None else cast("Callable[[T], OrderKey]", mr_order_key)
    return sorted(queued, key=sort_key)[:batch_size]


# --------------------------------------------------------------------------- batch size

#: The largest batch ``batch_size = "auto"`` grows to.
AUTO_BATCH_CAP: Final = 16


class AutoBatch(Frozen):
    """``batch_size = "auto"``: the size the next batch may have, learnt from the last ones.

    It starts at 1, doubles after a full batch (as many MRs as the size allowed) whose MRs
    all landed, up to ``cap``, and falls back to 1 as soon as a batch had an MR rejected
    (that batch is bisected as any other). A batch that ended without a verdict (the
    remote unreachable, the queue paused) leaves it as it was.
    """

    size: int = 1
    cap: int = AUTO_BATCH_CAP

    def after(self, taken: int, all_landed: bool) -> AutoBatch:
        """The size after a batch of ``taken`` MRs that ``all_landed`` (or not)."""
        if not all_landed:
            return replace(self, size=1)
        if taken >= self.size:
            return replace(self, size=min(self.cap, self.size * 2))
        return self


def batch_limit(batch_size: BatchSize, auto: AutoBatch, ready: int) -> int:
    """How many of the ``ready`` MRs the next batch takes: never more than ``ready``, never
    0 while one is ready, and for ``"auto"`` never more than ``auto.cap``."""
    if ready <= 0:
        return 0
    wanted = auto.size if batch_size == "auto" else batch_size
    if wanted < 1:
        raise ValueError(f"batch_size must be at least 1, not {wanted}")
    return min(wanted, ready)


#: The most MRs a chain takes (:func:`chain_limit`).
CHAIN_CAP: Final = 16


def chain_limit(land_within: float, step_seconds: float | None, ready: int, *,
                cap: int = CHAIN_CAP) -> int:
    """How many of the ``ready`` MRs the next chain takes (``merge_queue.land_within``).

    A chain's first MR lands only once its last is gated, so a chain takes as many as
    can be rebased and gated one after another within ``land_within`` seconds, at
    ``step_seconds`` each (as measured on the last ones; None, not measured yet: one);
    never fewer than one while one is ready, never more than ``cap``.
    """
    if ready <= 0:
        return 0
    if step_seconds is None or land_within <= 0:
        return 1
    if step_seconds * cap <= land_within:
        return min(cap, ready)
    return max(1, min(ready, int(land_within / step_seconds)))


# --------------------------------------------------------------------------- actions

TestKind = Literal["batch", "retry", "bisect", "confirm", "each"]


class Test(Frozen):
    """Gate the candidate: main (with all this plan landed) + ``mrs`` stacked in order.

    ``kind`` is for logs: the whole batch, a re-run of a red batch (or chain step), a
    bisection step, a re-run confirming a culprit, or the next step of a chain.
    """

    __test__ = False  # not a pytest class

    mrs: tuple[str, ...]
    kind: TestKind = "batch"


class Land(Frozen):
    """Fast-forward main to the candidate tested green for exactly ``mrs``: the last
    test, or (in a chain) the last green one."""

    mrs: tuple[str, ...]


class Reject(Frozen):
    """``mr`` will not land: ``reason`` is one line for the MR's record."""

    mr: str
    reason: str


class Finished(Frozen):
    """Every MR of the plan is landed (in queue order) or rejected."""

    landed: tuple[str, ...]
    rejected: tuple[Reject, ...]
    gate_runs: int


Action = Test | Land | Reject | Finished


# --------------------------------------------------------------------------- the plan

class _Batch(Frozen):
    """Gate all of ``pending``; it ran red ``reds`` times so far."""

    reds: int = 0


class _Bisect(Frozen):
    """The base is green, base + ``pending[:red]`` ran red ``reds`` times (``red >= 1``)."""

    red: int
    reds: int


class _Chain(Frozen):
    """Each gated on its own: base + ``pending[:green]`` ran green (``green = 0``: none
    yet), and base + ``pending[:green + 1]`` ran red ``reds`` times so far."""

    green: int = 0
    reds: int = 0


class _Landing(Frozen):
    """base + ``pending[:count]`` ran green: land it, then go on with ``after``."""

    count: int
    after: _Batch | _Bisect | _Chain


_Phase = _Batch | _Bisect | _Chain | _Landing


class Plan(Frozen):
    """One batch's progress. Build it with :func:`start_plan`; never edit it by hand.

    ``pending`` are the MRs neither landed nor rejected, in queue order; the base of
    every candidate is main, which holds ``landed``. ``each``: a chain (every MR gated on
    its own), not a batch.
    """

    pending: tuple[str, ...]
    retry_flaky: int
    each: bool = False
    landed: tuple[str, ...] = ()
    rejected: tuple[Reject, ...] = ()
    gate_runs: int = 0
    phase: _Phase = _Batch()


def start_plan(mr_ids: Sequence[str], *, retry_flaky: int = 0, each: bool = False) -> Plan:
    """A plan for ``mr_ids`` (already in queue order); ``retry_flaky`` re-runs of a red;
    ``each``: a chain, every MR gated on its own, instead of a batch."""
    if retry_flaky < 0:
        raise ValueError(f"retry_flaky must be at least 0, not {retry_flaky}")
    if len(set(mr_ids)) != len(mr_ids):
        raise ValueError("the same MR appears twice in the batch")
    return Plan(pending=tuple(mr_ids), retry_flaky=retry_flaky, each=each,
                phase=_Chain() if each else _Batch())


def _fresh(plan: Plan) -> _Batch | _Chain:
    """The phase that starts over on the pending MRs: a new batch, or a new chain."""
    return _Chain() if plan.each else _Batch()


def _culprit_reason(reds: int) -> str:
    runs = "once" if reds == 1 else f"{reds} times"
    return f"gates fail with this MR on top of a green main (ran red {runs})"


def next_action(plan: Plan) -> Action:
    """What the refinery should do next."""
    phase = plan.phase
    if isinstance(phase, _Landing):
        return Land(plan.pending[:phase.count])
    if not plan.pending:
        return Finished(plan.landed, plan.rejected, plan.gate_runs)
    if isinstance(phase, _Batch):
        return Test(plan.pending, "retry" if phase.reds else "batch")
    if isinstance(phase, _Chain):
        return Test(plan.pending[:phase.green + 1], "retry" if phase.reds else "each")
    if phase.red > 1:
        return Test(plan.pending[:phase.red // 2], "bisect")
    if phase.reds <= plan.retry_flaky:
        return Test(plan.pending[:1], "confirm")
    return Reject(plan.pending[0], _culprit_reason(phase.reds))


def record_test(plan: Plan, passed: bool) -> Plan:
    """The plan after the gates of the :class:`Test` from :func:`next_action` ran."""
    action = next_action(plan)
    if not isinstance(action, Test):
        raise ValueError(f"no test is expected now (expected {type(action).__name__})")
    count = len(action.mrs)
    phase = plan.phase
    new: _Phase
    if isinstance(phase, _Batch):
        if passed:
            new = _Landing(count, _Batch())
        elif phase.reds < plan.retry_flaky:
            new = _Batch(phase.reds + 1)
        else:
            new = _Bisect(count, phase.reds + 1)
    elif isinstance(phase, _Chain):
        if passed:
            new = _Landing(count, _Chain()) if count == len(plan.pending) else _Chain(count)
        elif phase.reds < plan.retry_flaky:
            new = _Chain(phase.green, phase.reds + 1)
        else:
            # The culprit: it turned the green base + pending[:green] red 1 + retry_flaky
            # times. The green prefix lands; then, on that base, it is rejected.
            culprit = _Bisect(1, phase.reds + 1)
            new = _Landing(phase.green, culprit) if phase.green else culprit
    else:
        assert isinstance(phase, _Bisect)
        if passed:
            rest = phase.red - count
            new = _Landing(count, _Bisect(rest, phase.reds) if rest else _fresh(plan))
        elif phase.red == 1:
            new = _Bisect(1, phase.reds + 1)
        else:
            new = _Bisect(count, 1)
    return replace(plan, phase=new, gate_runs=plan.gate_runs + 1)


def record_done(plan: Plan) -> Plan:
    """The plan after the refinery carried out the :class:`Land` or :class:`Reject`."""
    action = next_action(plan)
    if isinstance(action, Land):
        assert isinstance(plan.phase, _Landing)
        count = len(action.mrs)
        return replace(plan, pending=plan.pending[count:], landed=plan.landed + action.mrs,
                       phase=plan.phase.after)
    if isinstance(action, Reject):
        return replace(plan, pending=plan.pending[1:], rejected=(*plan.rejected, action),
                       phase=_fresh(plan))
    raise ValueError(f"nothing to carry out now (expected {type(action).__name__})")


def _without(phase: _Phase, index: int, fresh: _Batch | _Chain) -> _Phase:
    """``phase`` once ``pending[index]`` is gone: what is still known, or ``fresh``."""
    if isinstance(phase, _Bisect) and index >= phase.red:
        return phase
    if isinstance(phase, _Chain) and index >= phase.green:
        # The green prefix stands; the MR under test is another one if it was dropped.
        return phase if index > phase.green else _Chain(phase.green)
    if isinstance(phase, _Landing) and index >= phase.count:
        after = _without(phase.after, index - phase.count, fresh)
        assert not isinstance(after, _Landing)
        return _Landing(phase.count, after)
    return fresh


def drop(plan: Plan, mr_id: str, reason: str) -> Plan:
    """The plan without pending ``mr_id``, rejected for ``reason`` (e.g. a conflict).

    No gate runs: what was learnt about candidates without that MR is kept, anything
    else is forgotten (the rest is gated again as a new batch).
    """
    if mr_id not in plan.pending:
        raise ValueError(f"{mr_id} is not pending in this plan")
    index = plan.pending.index(mr_id)
    return replace(plan, pending=plan.pending[:index] + plan.pending[index + 1:],
                   rejected=(*plan.rejected, Reject(mr_id, reason)),
                   phase=_without(plan.phase, index, _fresh(plan)))


# --------------------------------------------------------------------------- budget

def max_gate_runs(n: int, bad: int, retry_flaky: int) -> int:
    """Most gate runs a plan of ``n`` MRs with ``bad`` culprits needs, gate deterministic.

    ``bad * (1 + 2*retry_flaky + ceil(log2 n)) + (1 if bad < n else 0)``. It also holds
    with ``bad`` = culprits + drops. ``max_gate_runs(n, n, retry_flaky)`` bounds any run,
    however the gate answers.
    """
    if n < 0 or not 0 <= bad <= n or retry_flaky < 0:
        raise ValueError(f"need 0 <= bad <= n and retry_flaky >= 0: {n=} {bad=} {retry_flaky=}")
    if n == 0:
        return 0
    ceil_log2 = (n - 1).bit_length()
    per_culprit = 1 + 2 * retry_flaky + ceil_log2
    return bad * per_culprit + (1 if bad < n else 0)

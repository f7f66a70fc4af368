"""The warm worktree pool's decisions (roles/core/pool.py): plan, take, recycle, clean."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.core.pool import (
    IN_PROGRESS_STATE,
    PoolTree,
    busy_name,
    choose_take,
    clean_problems,
    is_ready_name,
    lock_name,
    plan_pool,
    recycle_fits,
    tree_name,
)

TIP = "a" * 40
OLD = "b" * 40

heads = st.sampled_from([TIP, OLD, "c" * 40, None])
names = st.text("0123456789abcdef", min_size=4, max_size=6)
trees = st.lists(st.builds(PoolTree, names, heads), unique_by=lambda t: t.name, max_size=8)


@given(st.integers(-2, 10), trees)
def test_plan_reaches_the_size_with_every_tree_at_the_tip(size: int, pool: list[PoolTree]
                                                         ) -> None:
    plan = plan_pool(size, pool, TIP)
    names_in = {t.name for t in pool}
    assert set(plan.remove) <= names_in and set(plan.follow) <= names_in
    assert not set(plan.remove) & set(plan.follow)
    kept = [t for t in pool if t.name not in plan.remove]
    # After the plan: exactly max(size, 0) trees, every one detached at the tip.
    assert len(kept) + plan.fill == max(size, 0)
    assert plan.fill >= 0
    assert all(t.head is not None for t in kept)
    assert {t.name for t in kept if t.head != TIP} == set(plan.follow)
    # Nothing fit is removed while the pool is short; trees at the tip go last.
    fit = [t for t in pool if t.head is not None]
    if len(fit) <= max(size, 0):
        assert set(plan.remove) == {t.name for t in pool if t.head is None}
    at_tip_removed = [n for n in plan.remove if next(t for t in pool if t.name == n).head == TIP]
    if at_tip_removed:
        assert not plan.follow


def test_plan_keeps_the_newest_of_a_shrunk_pool() -> None:
    pool = [PoolTree("01", TIP), PoolTree("03", TIP), PoolTree("02", TIP)]
    plan = plan_pool(1, pool, TIP)
    assert plan.remove == ("01", "02") and plan.fill == 0 and plan.follow == ()


def test_plan_of_an_empty_pool_fills_and_size_zero_drains() -> None:
    assert plan_pool(2, [], TIP).fill == 2
    drained = plan_pool(0, [PoolTree("01", TIP), PoolTree("02", None)], TIP)
    assert drained.remove == ("01", "02") and drained.fill == 0


@given(trees, st.sampled_from([TIP, None]))
def test_take_prefers_the_newest_tree_at_the_tip(pool: list[PoolTree], tip: str | None
                                                 ) -> None:
    chosen = choose_take(pool, tip)
    fit = [t for t in pool if t.head is not None]
    if not fit:
        assert chosen is None
        return
    at_tip = [t.name for t in fit if t.head == tip]
    assert chosen == max(at_tip or [t.name for t in fit])


@given(st.integers(0, 5), st.integers(0, 6))
def test_recycle_fits_only_below_the_size(size: int, ready: int) -> None:
    assert recycle_fits(size, ready) == (ready < size)


def test_clean_problems() -> None:
    assert clean_problems([], TIP, TIP, []) == []
    assert clean_problems(["", "  "], TIP, TIP, []) == []
    problems = clean_problems(["!! build.log", "?? new.txt", " M app.py", "A  x", "!! y"],
                              None, TIP, ["rebase-merge"])
    assert problems[0].startswith("5 file(s) left (build.log, new.txt, app.py, ...")
    assert "HEAD is not detached" in problems
    assert any("rebase-merge" in p for p in problems)
    assert clean_problems([], OLD, TIP, []) == [f"HEAD is {OLD[:10]}, not {TIP[:10]}"]
    assert "MERGE_HEAD" in IN_PROGRESS_STATE


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.text("0123456789abcdef", min_size=6,
                                                              max_size=6))
def test_names_sort_by_time_and_busy_names_are_not_ready(t1: int, t2: int, token: str) -> None:
    a, b = tree_name(t1, token), tree_name(t2, token)
    assert (a < b) == (t1 < t2)
    assert is_ready_name(a)
    assert not is_ready_name(busy_name(a)) and not is_ready_name(lock_name(busy_name(a)))
    assert not is_ready_name("")

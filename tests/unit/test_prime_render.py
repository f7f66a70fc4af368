"""How ``gastown prime`` reads to an agent (``roles/operations/prime.py`` ``render``); the e2e tests
in ``tests/e2e/test_prime.py`` run it in a live polecat."""

from __future__ import annotations

from gastown.roles.operations.prime import PrimeContext, render


def test_long_lists_are_cut_with_the_exact_count() -> None:
    context = PrimeContext(rig="web", polecat="toast", bead="web-abc12", title="Fix it",
                           worktree="/t/web/polecats/toast", branch="polecat/toast",
                           default_branch="main", state="working", commits_ahead=12,
                           commits=[f"{i:07x} change {i}" for i in range(10)],
                           dirty=[f"?? f{i}" for i in range(20)], dirty_count=25)
    text = render(context)
    assert "- 12 commit(s) ahead of main:" in text and "    ... and 2 more" in text
    assert "- 25 uncommitted change(s):" in text and "    ... and 5 more" in text
    assert "Work only in this worktree (/t/web/polecats/toast), on branch polecat/toast." \
        in text


def test_what_is_unknown_is_left_out_and_notes_are_said() -> None:
    text = render(PrimeContext(rig="web", polecat="toast", notes=["the town was not found"]))
    assert text.startswith("# gastown: you are polecat toast of rig web\n")
    assert "bead:" not in text and "commit(s) ahead" not in text
    assert "uncommitted" not in text
    assert "- note: the town was not found" in text
    assert "Work only in this worktree." in text and "`gastown done`" in text


def test_a_clean_tree_with_nothing_committed_yet() -> None:
    text = render(PrimeContext(rig="web", polecat="toast", default_branch="main",
                               commits_ahead=0, dirty=[], dirty_count=0))
    assert "- 0 commit(s) ahead of main\n" in text and "- no uncommitted changes" in text

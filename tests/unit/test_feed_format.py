"""How events read in ``gastown feed``: lists as the CLI prints them."""

from __future__ import annotations

from gastown.supervisor.feed import format_event


def test_lists_read_comma_separated_not_as_python() -> None:
    """``restarted`` of a reload reads ``witness:x, refinery:x`` (``nothing`` when empty),
    in a template and in the raw fields of an unknown kind alike."""
    line = format_event({"seq": 1, "ts": 0, "kind": "town_reloaded", "reason": "SIGHUP",
                         "restarted": ["witness:x", "refinery:x"]})
    assert line.endswith("configuration reloaded (SIGHUP); restarted: witness:x, refinery:x")
    assert "[" not in line
    line = format_event({"seq": 1, "ts": 0, "kind": "town_reloaded", "reason": "cli",
                         "restarted": []})
    assert line.endswith("restarted: nothing")
    line = format_event({"seq": 1, "ts": 0, "kind": "something_new", "names": ["a", "b"]})
    assert line.endswith("something_new names=a, b")


def test_where_merged_work_is_reads_as_a_sentence() -> None:
    """The merge queue's pause and the push backlog read as sentences, not raw fields."""
    line = format_event({"seq": 1, "ts": 0, "kind": "push_refused", "rig": "web", "count": 3,
                         "reason": "the remote refused the push (branch is checked out)"})
    assert line.endswith("web: 3 merged commit(s) kept in the refinery's clone, not on the "
                         "remote: the remote refused the push (branch is checked out)")
    line = format_event({"seq": 2, "ts": 0, "kind": "mq_paused", "rig": "web",
                         "reason": "origin/main diverged"})
    assert line.endswith("merge queue of web PAUSED: origin/main diverged")
    line = format_event({"seq": 3, "ts": 0, "kind": "push_caught_up", "rig": "web",
                         "head": "0123456789abcdef"})
    assert line.endswith("web: the remote has every merged commit again (at 0123456789)")

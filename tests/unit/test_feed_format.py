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

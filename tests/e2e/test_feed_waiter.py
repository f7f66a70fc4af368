"""The test helper that waits on a town's feed (``tests/e2e/feed_waiter.py``), against the
real ``gastown feed -f --json`` of a town that is not up: the feed starts with what the
store's outbox holds (new events follow only while a supervisor copies them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.feed_waiter import FeedWaiter


def test_waits_for_a_matching_event_and_names_the_last_seen_on_timeout(
        cli: Cli, town: Path) -> None:
    """An event already recorded is found by kind and fields; one that never comes fails
    with the events seen so far."""
    bead = cli.ok("bead", "create", "a task").strip()
    with FeedWaiter(cli) as feed:
        event = feed.wait("bead_created", bead=bead, timeout=60)
        assert event["title"] == "a task"
        assert feed.wait_each("bead_created", "bead", [bead], timeout=60)[bead] == event
        with pytest.raises(AssertionError) as failed:
            feed.wait("mr_merged", bead=bead, timeout=0.5, what="a merge that never happens")
    message = str(failed.value)
    assert "timed out after 0.5s waiting for a merge that never happens" in message
    assert f'"bead": "{bead}"' in message and "bead_created" in message

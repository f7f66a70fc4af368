"""Fixtures of the e2e tier: following the test town's feed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.feed_waiter import FeedWaiter


@pytest.fixture
def feed(cli: Cli, town: Path) -> Iterator[FeedWaiter]:
    """A :class:`FeedWaiter` on the test's ``town`` (whichever fixture the module gives that
    name), stopped before the town is torn down. It sees what the store held when it
    started, then what a running supervisor copies to ``events.jsonl``: an event recorded
    while the town is down shows up once the town is up."""
    assert cli.env.get("GASTOWN_TOWN") == str(town)
    with FeedWaiter(cli) as waiter:
        yield waiter

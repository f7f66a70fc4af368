"""The warm pool's setup decisions (roles/core/pool_setup.py): the settings' fingerprint,
the record of a prepared tree, when a sling skips the setup, and the failure back-off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.core.config_setup import Seconds, SetupConfig
from gastown.roles.core.pool_setup import (
    MAX_FAILURES,
    SetupFailures,
    SetupRecord,
    after_failure,
    fingerprint,
    parse_failures,
    parse_record,
    render_failures,
    render_record,
    skip_at_sling,
    stale,
    stopped,
)

TIP, OLD = "a" * 40, "b" * 40

text = st.text(max_size=12)
setups = st.builds(SetupConfig, command=text, timeout=st.just(Seconds(60.0)),
                   copy=st.lists(text, max_size=3).map(tuple),
                   link=st.lists(text, max_size=3).map(tuple), source=text,
                   env=st.dictionaries(text, text, max_size=3))


def test_nothing_to_set_up_has_no_fingerprint() -> None:
    assert fingerprint(SetupConfig()) is None
    assert fingerprint(SetupConfig(command="make")) is not None
    assert fingerprint(SetupConfig(command="make", in_pool=False)) is None  # at sling


def test_every_setting_but_the_timeout_changes_the_fingerprint() -> None:
    base = SetupConfig(command="make", copy=(".env",), link=("node_modules",),
                       source="/src", env={"PORT": "{port}"})
    others = [SetupConfig(command="make all", copy=(".env",), link=("node_modules",),
                          source="/src", env={"PORT": "{port}"}),
              SetupConfig(command="make", copy=(), link=("node_modules",), source="/src",
                          env={"PORT": "{port}"}),
              SetupConfig(command="make", copy=(".env",), link=(), source="/src",
                          env={"PORT": "{port}"}),
              SetupConfig(command="make", copy=(".env",), link=("node_modules",),
                          source="/other", env={"PORT": "{port}"}),
              SetupConfig(command="make", copy=(".env",), link=("node_modules",),
                          source="/src", env={"PORT": "1"})]
    assert len({fingerprint(s) for s in [base, *others]}) == 6
    same = SetupConfig(command="make", timeout=Seconds(5.0), copy=(".env",),
                       link=("node_modules",), source="/src", env={"PORT": "{port}"})
    assert fingerprint(same) == fingerprint(base)


@given(setups, setups)
def test_fingerprints_are_equal_exactly_when_the_settings_are(a: SetupConfig,
                                                              b: SetupConfig) -> None:
    def key(s: SetupConfig) -> object:
        return (s.command, s.copy, s.link, s.source, sorted(s.env.items())) \
            if s.configured else None
    assert (fingerprint(a) == fingerprint(b)) == (key(a) == key(b))


@given(setups.filter(lambda s: s.configured), st.sampled_from([TIP, OLD]))
def test_a_record_reads_back_as_written(setup: SetupConfig, head: str) -> None:
    current = fingerprint(setup)
    assert current is not None
    record = SetupRecord(current, head)
    assert parse_record(render_record(record)) == record


def test_an_unreadable_record_is_none() -> None:
    assert parse_record("") is None
    assert parse_record(TIP) is None
    assert parse_record(f"{TIP}\n") is None
    assert parse_record(f"{TIP}\na\nb\n") is None


def test_a_sling_skips_the_setup_only_for_the_current_settings_at_its_commit() -> None:
    current = fingerprint(SetupConfig(command="make"))
    other = fingerprint(SetupConfig(command="make all"))
    assert current is not None and other is not None
    assert skip_at_sling(SetupRecord(current, TIP), current, TIP)
    assert not skip_at_sling(SetupRecord(current, OLD), current, TIP)  # older lockfile
    assert not skip_at_sling(SetupRecord(other, TIP), current, TIP)  # settings changed
    assert not skip_at_sling(None, current, TIP)  # never set up
    assert not skip_at_sling(SetupRecord(current, TIP), None, TIP)  # setup removed
    assert not skip_at_sling(SetupRecord(current, TIP), current, None)


def test_stale_trees_are_those_set_up_otherwise() -> None:
    current = fingerprint(SetupConfig(command="make"))
    assert current is not None
    assert not stale(None, None)  # no setup, no record: the pool as before
    assert not stale(SetupRecord(current, OLD), current)  # behind: followed, not stale
    assert stale(None, current)
    assert stale(SetupRecord(current, TIP), None)
    assert stale(SetupRecord("other", TIP), current)


def test_the_pool_stops_after_max_failures_in_a_row_until_the_settings_change() -> None:
    state: SetupFailures | None = None
    for n in range(1, MAX_FAILURES + 1):
        assert not stopped(state, "fp")
        state = after_failure(state, "fp", f"failure {n}")
        assert state.count == n and state.reason == f"failure {n}"
    assert stopped(state, "fp")
    assert not stopped(state, "changed")  # new settings: tried again
    assert not stopped(state, None)
    assert state is not None and after_failure(state, "changed", "x").count == 1
    assert parse_failures(render_failures(state)) == state


def test_unreadable_failures_count_from_zero() -> None:
    for text in ("", "[]", "{", '{"fingerprint": "f", "count": true, "reason": ""}',
                 '{"fingerprint": 1, "count": 1, "reason": ""}'):
        assert parse_failures(text) is None

"""Slots and port blocks (roles/core/slots.py) and the bootstrap's config checks."""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.core.config import load_rig_config
from gastown.roles.core.errors import ConfigError
from gastown.roles.core.slots import expand, free_slot, parse_ports, port_block

SHIPPED = resources.files("gastown.config").joinpath("rig.toml").read_text()
HEAD = 'repo = "/r"\ndefault_branch = "main"\nprefix = "web"\n'


@given(st.sets(st.integers(min_value=0, max_value=40)))
def test_free_slot_is_the_smallest_not_held(held: set[int]) -> None:
    slot = free_slot([*held, None])
    assert slot not in held
    assert all(s in held for s in range(slot))


@given(st.integers(min_value=1024, max_value=65535), st.integers(min_value=0, max_value=3000),
       st.integers(min_value=1, max_value=64))
def test_port_blocks_are_disjoint_and_inside_the_range(low: int, extra: int,
                                                       blocks: int) -> None:
    high = min(65535, low + extra)
    span = (low, high)
    seen: set[int] = set()
    for slot in range(blocks + 2):
        block = port_block(span, blocks, slot)
        if slot >= blocks:
            assert not block
        for port in block:
            assert low <= port <= high
            assert port not in seen
            seen.add(port)
    if high - low + 1 >= blocks:
        assert all(port_block(span, blocks, s) for s in range(blocks))


@pytest.mark.parametrize(("text", "parsed"), [
    ("4100-4199", (4100, 4199)), (" 5000 - 5000 ", (5000, 5000)), ("4199-4100", None),
    ("80-90", None), ("4100", None), ("4100-70000", None), ("a-b", None)])
def test_parse_ports(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_ports(text) == parsed


def test_expand_fills_port_and_slot() -> None:
    assert expand("db_{slot}:{port}", port=4100, slot=3) == "db_3:4100"
    assert expand("db_{slot}:{port}", port=None, slot=None) == "db_:"


def load(text: str) -> object:
    return load_rig_config(HEAD + text, "rig.toml", SHIPPED)


def test_setup_tables_load_with_defaults_and_values() -> None:
    config = load('[polecats]\nports = "4100-4199"\n[polecats.setup]\ncommand = "make"\n'
                  'copy = [".env"]\nlink = ["node_modules"]\nenv = { PORT = "{port}" }\n'
                  '[polecats.teardown]\ncommand = "make down"\n'
                  '[merge_queue.setup]\ncommand = "make"\n')
    polecats = config.polecats  # type: ignore[attr-defined]
    assert polecats.setup.command == "make" and polecats.setup.copy == (".env",)
    assert polecats.setup.env == {"PORT": "{port}"} and polecats.setup.timeout == 600
    assert polecats.teardown.command == "make down" and polecats.ports == "4100-4199"
    assert config.merge_queue.setup.command == "make"  # type: ignore[attr-defined]
    plain = load("")
    assert not plain.polecats.setup.configured  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "message"), [
    ('[polecats]\nports = "4100"\n', "'polecats.ports' must be a range"),
    ('[polecats]\nports = "4100-4104"\n', "fewer than 'polecats.max'"),
    ('[polecats.setup]\ncopy = ["../x"]\n', "'polecats.setup.copy' path '../x'"),
    ('[polecats.setup]\nlink = ["/abs"]\n', "must be relative"),
    ('[polecats.setup]\nenv = { P = "{nope}" }\n', "only {port} and {slot}"),
    ('[polecats.setup]\ntimeout = "0s"\n', "'polecats.setup.timeout' must be longer"),
    ('[polecats.setup]\nbogus = 1\n', "unknown key 'polecats.setup.bogus'"),
    ('[merge_queue.setup]\ncommand = 3\n', "'merge_queue.setup.command' must be a string"),
])
def test_bad_setup_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert message in str(caught.value)

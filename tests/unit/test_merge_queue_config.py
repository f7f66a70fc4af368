"""``merge_queue.batch_size`` in a rig's configuration: a positive integer or "auto"."""

from __future__ import annotations

from importlib import resources

import pytest

from gastown.roles.core.config import load_rig_config
from gastown.roles.core.errors import ConfigError

BASE = 'repo = "/r"\ndefault_branch = "main"\nprefix = "ab"\n[merge_queue]\n'


def load(batch_size: str) -> object:
    defaults = (resources.files("gastown.config") / "rig.toml").read_text()
    return load_rig_config(BASE + f"batch_size = {batch_size}\n", "rig.toml",
                           defaults).merge_queue.batch_size


@pytest.mark.parametrize(("written", "value"), [('"auto"', "auto"), ("1", 1), ("16", 16)])
def test_batch_size_takes_a_positive_integer_or_auto(written: str, value: object) -> None:
    assert load(written) == value


@pytest.mark.parametrize(("written", "message"), [
    ('"big"', "rig.toml:5: 'merge_queue.batch_size' must be a positive integer or \"auto\", "
              "not 'big'"),
    ("true", "must be a positive integer or \"auto\", not True"),
    ("2.5", "must be a positive integer or \"auto\", not 2.5"),
    ("0", "rig.toml:5: 'merge_queue.batch_size' must be at least 1, not 0"),
    ("-3", "'merge_queue.batch_size' must be at least 1, not -3"),
])
def test_anything_else_is_one_clear_line(written: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(written)
    assert message in str(caught.value) and "\n" not in str(caught.value)

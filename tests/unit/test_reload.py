"""Which roles a configuration change restarts: only the ones it concerns."""

from __future__ import annotations

from gastown.config import default_text
from gastown.roles.core.config import load_rig_config, load_town_config
from gastown.supervisor.reload import roles_to_restart

TOWN = default_text("town.toml")
RIG = default_text("rig.toml")
BASE_RIG = 'repo = "/r"\ndefault_branch = "main"\nprefix = "{p}"\n'
GATE = '[[merge_queue.gates]]\nname = "test"\ncommand = "{c}"\n'


def town(text: str = "") -> object:
    return load_town_config(text, "t", TOWN)


def rig(prefix: str, extra: str = "") -> object:
    return load_rig_config(BASE_RIG.format(p=prefix) + extra, "r", RIG)


def rigs(**extra: str) -> dict[str, object]:
    return {"web": rig("web", extra.get("web", "")), "api": rig("api", extra.get("api", ""))}


def test_nothing_changed_restarts_nothing() -> None:
    """Re-reading identical files restarts no role."""
    assert roles_to_restart(town(), town(), rigs(), rigs()) == []  # type: ignore[arg-type]


def test_gate_change_restarts_only_that_refinery() -> None:
    """A new gate command for web restarts refinery:web and nothing else."""
    old = rigs(web=GATE.format(c="pytest"))
    new = rigs(web=GATE.format(c="pytest -x"))
    assert roles_to_restart(town(), town(), old, new) == ["refinery:web"]  # type: ignore[arg-type]


def test_polecat_settings_restart_the_witness() -> None:
    """max_respawns is the witness's business."""
    new = rigs(api="[polecats]\nmax_respawns = 5\n")
    assert roles_to_restart(town(), town(), rigs(), new) == ["witness:api"]  # type: ignore[arg-type]


def test_supervisor_settings_apply_in_place() -> None:
    """Restart policy and stop timeout change without restarting any role."""
    new = town('[supervisor]\nstop_timeout = "30s"\nmax_restarts = 9\n')
    assert roles_to_restart(town(), new, rigs(), rigs()) == []  # type: ignore[arg-type]


def test_agent_changes_restart_mayor_and_witnesses() -> None:
    """Agents and session settings concern whoever starts sessions."""
    new = town('default_agent = "script"\n')
    assert roles_to_restart(town(), new, rigs(), rigs()) == [  # type: ignore[arg-type]
        "mayor", "witness:api", "witness:web"]


def test_log_level_restarts_everyone_in_start_order() -> None:
    """A new log level reaches every role."""
    new = town('[logging]\nlevel = "debug"\n')
    assert roles_to_restart(town(), new, rigs(), rigs()) == [  # type: ignore[arg-type]
        "mayor", "witness:api", "refinery:api", "witness:web", "refinery:web"]

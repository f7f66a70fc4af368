"""How the agents' events read in ``gastown feed``: turns with their tokens, nudges, and a
merge request the witness recorded."""

from __future__ import annotations

from gastown.supervisor.feed import format_event


def test_a_turn_reads_with_short_token_counts_and_its_cost() -> None:
    event = {"seq": 1, "ts": 0, "kind": "agent_turn_ended", "rig": "web", "polecat": "toast",
             "bead": "gt-abc12", "turn": 2, "tokens_in": 1234, "tokens_out": 80,
             "cost_usd": 0.004, "total_tokens_in": 5000, "total_tokens_out": 100}
    assert format_event(event).endswith("web/toast turn 2 ended: 1.2k in, 80 out, $0.0040")
    event["cost_usd"] = 0.0  # Codex reports no cost
    assert format_event(event).endswith("web/toast turn 2 ended: 1.2k in, 80 out")


def test_a_nudge_reads_with_its_first_line_and_who_sent_it() -> None:
    event = {"seq": 1, "ts": 0, "kind": "polecat_nudged", "rig": "web", "polecat": "toast",
             "text": "run `gastown done`\nthen stop", "by": "witness", "nudges": 1}
    assert format_event(event).endswith("web/toast nudged by witness: run `gastown done`")
    del event["by"]
    assert format_event(event).endswith("web/toast nudged: run `gastown done`")


def test_a_merge_request_recorded_by_the_witness_says_so() -> None:
    event = {"seq": 1, "ts": 0, "kind": "mr_created", "rig": "web", "polecat": "toast",
             "bead": "gt-abc12", "mr": "mr-1a2b3c", "branch": "polecat/toast",
             "done_by": "witness"}
    assert format_event(event).endswith(
        "merge request mr-1a2b3c queued: polecat/toast (gt-abc12) (by witness)")
    event["done_by"] = "agent"
    assert format_event(event).endswith("merge request mr-1a2b3c queued: polecat/toast "
                                        "(gt-abc12)")
    del event["done_by"]  # events written before done_by existed
    assert format_event(event).endswith("(gt-abc12)")

"""Reading what a turn cost from the agent CLIs' own output.

The fixtures in ``agent_output/`` are real output of Claude Code 2.1.197 and Codex 0.171.0
run against the scripted model server (every response: 100 input and 20 output tokens),
trimmed (long strings and lists cut): a two-command script and "Done." (Claude: 3 requests
of the main loop plus one side request without tools; Codex: 3 requests), the same
session resumed with a nudge (2 requests), and a run killed with SIGKILL mid-command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gastown.roles.adapters.agent_usage import (
    Usage,
    claude_print_result,
    claude_transcript,
    codex_exec_events,
    codex_rollout,
    find_codex_rollout,
    json_lines,
    print_turn_completed,
    short_count,
)

OUTPUT = Path(__file__).parent / "agent_output"
CLAUDE_SESSION = "55c63d6e-c5ee-4c39-8ee8-b4e0afbba790"
CODEX_THREAD = "01a247d0-5a4a-7d42-ba4f-b5e497402f30"


def sample(name: str) -> str:
    return (OUTPUT / name).read_text()


# --- Claude print mode ---------------------------------------------------------------

def test_claude_print_result_counts_every_request_of_the_run_and_its_cost() -> None:
    """modelUsage covers the side request too (4 requests: 400 in, 80 out), as the cost does;
    the result's ``usage`` would say 300/60 (main loop only)."""
    usage = claude_print_result(sample("claude_print.jsonl"))
    assert usage == Usage(400, 80, 0.004, CLAUDE_SESSION)


def test_claude_print_result_of_a_resumed_run_is_that_run_only() -> None:
    assert claude_print_result(sample("claude_print_resumed.jsonl")) == \
        Usage(200, 40, 0.002, CLAUDE_SESSION)


def test_claude_print_result_ignores_other_text_and_torn_lines_in_the_log() -> None:
    log = ("gastown: session starting\n" + sample("claude_print.jsonl")
           + '{"type":"assistant","message":{"id":"x", "usa\n' + "Traceback: not json\n")
    assert claude_print_result(log) == claude_print_result(sample("claude_print.jsonl"))


def test_claude_print_result_falls_back_to_usage_without_model_usage() -> None:
    result = json.loads(sample("claude_print.jsonl").splitlines()[-1])
    del result["modelUsage"]
    result["usage"]["cache_read_input_tokens"] = 7
    result["usage"]["cache_creation_input_tokens"] = 5
    assert claude_print_result(json.dumps(result)) == \
        Usage(312, 60, 0.004, CLAUDE_SESSION)


def test_a_killed_claude_run_has_no_result_and_did_not_end_its_turn() -> None:
    killed = sample("claude_print_killed.jsonl")
    assert claude_print_result(killed) is None
    assert not print_turn_completed("claude", killed)
    assert print_turn_completed("claude", sample("claude_print.jsonl"))
    assert print_turn_completed("claude", sample("claude_print_resumed.jsonl"))


def test_in_a_log_of_several_runs_only_the_last_run_counts() -> None:
    """A respawn appends to the session log: a finished first run says nothing of the
    second, killed one."""
    log = sample("claude_print.jsonl") + sample("claude_print_killed.jsonl")
    assert claude_print_result(log) is None
    assert not print_turn_completed("claude", log)
    log = sample("claude_print.jsonl") + sample("claude_print_resumed.jsonl")
    assert claude_print_result(log) == claude_print_result(sample("claude_print_resumed.jsonl"))
    assert print_turn_completed("claude", log)


def test_garbage_is_no_usage() -> None:
    for text in ("", "\n\n", "not json at all", '{"type":"result"', "[1, 2]",
                 '{"type":"result","usage":"lots","total_cost_usd":"free","session_id":3}'):
        usage = claude_print_result(text)
        assert usage is None or usage == Usage(0, 0, 0.0, None)
        assert codex_exec_events(text) is None or codex_exec_events(text) == Usage()


# --- Claude transcripts -------------------------------------------------------------

def test_claude_transcript_sums_the_main_loop_of_every_turn(tmp_path: Path) -> None:
    """Three requests for the script, two for the resumed nudge (side requests are not in
    transcripts)."""
    usage = claude_transcript(OUTPUT / "claude_transcript.jsonl")
    assert usage == Usage(500, 100, 0.0, CLAUDE_SESSION)


def test_claude_transcript_last_turn_is_what_followed_the_last_prompt() -> None:
    usage = claude_transcript(OUTPUT / "claude_transcript.jsonl", last_turn=True)
    assert usage == Usage(200, 40, 0.0, CLAUDE_SESSION)


def test_a_response_written_as_several_lines_counts_once(tmp_path: Path) -> None:
    """Several content blocks of one response are several assistant lines with one
    message.id; its usage counts once (the last seen: the final output count)."""
    lines = sample("claude_transcript.jsonl").splitlines()
    first = next(i for i, line in enumerate(lines) if '"type":"assistant"' in line)
    early = json.loads(lines[first])
    early["message"]["usage"]["output_tokens"] = 1
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([*lines[:first], json.dumps(early), *lines[first:]]) + "\n")
    assert claude_transcript(path) == Usage(500, 100, 0.0, CLAUDE_SESSION)


def test_claude_transcript_of_a_missing_or_torn_file(tmp_path: Path) -> None:
    assert claude_transcript(tmp_path / "missing.jsonl") == Usage()
    text = sample("claude_transcript.jsonl")
    torn = tmp_path / "torn.jsonl"
    torn.write_text(text[: text.rindex('"type":"assistant"') + 30])  # the last response torn
    assert claude_transcript(torn) == Usage(400, 80, 0.0, CLAUDE_SESSION)


# --- Codex exec --------------------------------------------------------------------

def test_codex_exec_events_give_the_thread_total_and_id() -> None:
    assert codex_exec_events(sample("codex_exec.jsonl")) == Usage(300, 60, 0.0, CODEX_THREAD)


def test_codex_reports_the_thread_running_total_after_a_resume() -> None:
    """The resumed run made two requests (200/40) but reports 500/100: a total, so the
    turn's own spending is the difference."""
    first = codex_exec_events(sample("codex_exec.jsonl"))
    resumed = codex_exec_events(sample("codex_exec_resumed.jsonl"))
    assert resumed == Usage(500, 100, 0.0, CODEX_THREAD)
    assert first is not None and resumed is not None
    assert resumed.minus(first) == Usage(200, 40, 0.0, CODEX_THREAD)
    both = sample("codex_exec.jsonl") + sample("codex_exec_resumed.jsonl")
    assert codex_exec_events(both) == resumed  # not summed


def test_a_killed_codex_run_did_not_complete_its_turn() -> None:
    killed = sample("codex_exec_killed.jsonl")
    assert codex_exec_events(killed) is None
    assert not print_turn_completed("codex", killed)
    assert print_turn_completed("codex", sample("codex_exec.jsonl"))
    assert not print_turn_completed("codex", sample("codex_exec.jsonl") + killed)
    assert print_turn_completed("codex", killed + sample("codex_exec_resumed.jsonl"))
    assert not print_turn_completed("script", sample("codex_exec.jsonl"))


# --- Codex rollout files ------------------------------------------------------------

def test_codex_rollout_totals_and_last_turn() -> None:
    path = OUTPUT / "codex_rollout.jsonl"
    assert codex_rollout(path) == Usage(500, 100, 0.0, CODEX_THREAD)
    assert codex_rollout(path, last_turn=True) == Usage(200, 40, 0.0, CODEX_THREAD)


def test_codex_rollout_before_any_token_count_and_torn(tmp_path: Path) -> None:
    lines = sample("codex_rollout.jsonl").splitlines()
    path = tmp_path / "r.jsonl"
    path.write_text(lines[0] + "\n")
    assert codex_rollout(path) == Usage(0, 0, 0.0, CODEX_THREAD)
    counts = [i for i, line in enumerate(lines) if '"token_count"' in line]
    path.write_text("\n".join(lines[: counts[-1]]) + "\n" + lines[counts[-1]][:80])
    assert codex_rollout(path) == Usage(400, 80, 0.0, CODEX_THREAD)
    assert codex_rollout(tmp_path / "missing.jsonl") == Usage()


def test_find_codex_rollout_by_thread_or_newest(tmp_path: Path) -> None:
    assert find_codex_rollout(tmp_path, None) is None
    day = tmp_path / "sessions" / "2026" / "12" / "05"
    day.mkdir(parents=True)
    older = day / f"rollout-2026-12-05T20-06-06-{CODEX_THREAD}.jsonl"
    newer = day / "rollout-2026-12-05T21-00-00-01a247d0-ffff-7120-b4cb-61f6fdfed9c2.jsonl"
    older.write_text(sample("codex_rollout.jsonl"))
    newer.write_text("")
    assert find_codex_rollout(tmp_path, CODEX_THREAD) == older
    assert find_codex_rollout(tmp_path, None) == newer
    assert find_codex_rollout(tmp_path, "no-such-thread") is None


# --- small helpers ------------------------------------------------------------------

def test_json_lines_keeps_objects_only() -> None:
    assert list(json_lines('{"a":1}\n[1]\n"s"\nx{\n  {"b":2}  \n{"c":')) == [{"a": 1}, {"b": 2}]


def test_usage_arithmetic() -> None:
    assert Usage(1, 2, 0.5, "a") + Usage(3, 4, 0.25) == Usage(4, 6, 0.75, "a")
    assert Usage(1, 2, 0.5, "a") + Usage(0, 0, 0.0, "b") == Usage(1, 2, 0.5, "b")
    assert Usage(10, 2, 1.0, "s").minus(Usage(4, 5, 0.5)) == Usage(6, 0, 0.5, "s")


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (999, "999"), (1000, "1.0k"),
                                         (1234, "1.2k"), (12345, "12.3k"),
                                         (999_949, "999.9k"), (999_950, "1.0M"),
                                         (4_500_000, "4.5M")])
def test_short_count(n: int, text: str) -> None:
    assert short_count(n) == text

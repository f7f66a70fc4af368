"""The scripted model server (tests/scripted_model), alone and driven by the real agent CLIs.

The pure protocol is checked on requests shaped like the ones Claude Code 2.1.197 and Codex
0.171.0 really sent (trimmed from a logged run); the server over a real socket; then the real
``claude -p`` and ``codex exec`` run a script in a git repository, and a resumed session
runs the NUDGE section. No gastown involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.adapters.agent_homes import last_conversation
from tests.conftest import git, make_repo
from tests.scripted_model import ModelServer, protocol, read_log
from tests.scripted_model.clis import AgentClis

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60

PROMPT = """Do the task.
SCRIPT-BEGIN
echo hi > hi.txt
git add hi.txt && git commit -qm "add hi"
SCRIPT-END
NUDGE-BEGIN
echo nudged > n.txt
NUDGE-END"""

REMINDER = ("<system-reminder>\nAs you answer the user's questions, you can use the following "
            "context:\n# currentDate\nToday's date is 2026-12-05.\n</system-reminder>")
BASH = {"name": "Bash", "description": "Executes a bash command", "input_schema": {}}


# --- requests shaped like the real ones ----------------------------------------------------

def claude_request(*tail: dict[str, Any], tools: bool = True) -> dict[str, Any]:
    """A Claude Code request: the first prompt as [reminder, text] blocks, then a ``system``
    message (2.1.197 puts its agent list there), then ``tail``."""
    return {"model": "claude-opus-4-8", "stream": True, "max_tokens": 64000,
            "tools": [{"name": "Agent"}, BASH] if tools else [],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": REMINDER},
                                             {"type": "text", "text": PROMPT}]},
                {"role": "system", "content": "Available agent types for the Agent tool: ..."},
                *tail]}


def claude_step(n: int) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{n}",
                                               "name": "Bash", "input": {"command": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{n}",
                                          "content": "(Bash completed with no output)"}]}]


DONE_REPLY = {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}


def codex_request(*tail: dict[str, Any]) -> dict[str, Any]:
    """A Codex request: developer messages, an environment-context user message, the prompt."""
    def msg(role: str, text: str) -> dict[str, Any]:
        return {"type": "message", "role": role,
                "content": [{"type": "input_text", "text": text}]}
    return {"model": "gpt-5-codex", "stream": True,
            "tools": [{"type": "function", "name": "exec_command"},
                      {"type": "function", "name": "write_stdin"}],
            "input": [msg("developer", "You are a coding agent running in the Codex CLI"),
                      msg("developer", "<permissions instructions>\n...\n"
                          "</permissions instructions>"),
                      msg("user", "<environment_context>\n  <cwd>/w</cwd>\n"
                          "</environment_context>"),
                      msg("user", PROMPT), *tail]}


def codex_step(n: int) -> list[dict[str, Any]]:
    return [{"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}",
             "name": "exec_command", "arguments": "{\"cmd\": \"x\"}"},
            {"type": "function_call_output", "call_id": f"call_{n}",
             "output": "Chunk ID: 1\nProcess exited with code 0\nOutput:\n"}]


def parse_sse(payload: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in payload.decode().split("\n\n"):
        if not chunk.strip():
            continue
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line[len("event: "):], json.loads(data_line[len("data: "):])))
    return events


# --- the pure protocol -----------------------------------------------------------------------

def test_script_and_nudge_sections_are_parsed_from_a_prompt() -> None:
    script = protocol.parse_script(PROMPT)
    assert script == protocol.Script(
        ("echo hi > hi.txt", 'git add hi.txt && git commit -qm "add hi"'),
        ("echo nudged > n.txt",))
    inline = protocol.parse_script("go SCRIPT-BEGIN\n  echo a  \n\nSCRIPT-END trailing")
    assert inline == protocol.Script(("echo a",), ())
    assert protocol.parse_script("no script here") is None


def test_claude_requests_follow_the_script_then_the_nudge() -> None:
    first = protocol.anthropic_decide(claude_request())
    assert (first.kind, first.prompt_index, first.step, first.command) == (
        "script", 0, 0, "echo hi > hi.txt")
    second = protocol.anthropic_decide(claude_request(*claude_step(1)))
    assert second.command == 'git add hi.txt && git commit -qm "add hi"'
    done = protocol.anthropic_decide(claude_request(*claude_step(1), *claude_step(2)))
    assert (done.command, done.text) == (None, "Done.")
    # `claude -p --resume ID "please finish"` resends everything; the prompt is a plain string.
    resumed = [*claude_step(1), *claude_step(2), DONE_REPLY,
               {"role": "user", "content": "please finish"}]
    nudge = protocol.anthropic_decide(claude_request(*resumed))
    assert (nudge.kind, nudge.prompt_index, nudge.step, nudge.command, nudge.prompt) == (
        "nudge", 1, 0, "echo nudged > n.txt", "please finish")
    after = protocol.anthropic_decide(claude_request(*resumed, *claude_step(3)))
    assert (after.kind, after.text) == ("nudge", "Done.")


def test_a_tool_result_with_a_reminder_is_not_a_prompt() -> None:
    step = claude_step(1)
    step[1]["content"].append({"type": "text", "text": REMINDER})
    decision = protocol.anthropic_decide(claude_request(*step))
    assert (decision.kind, decision.step) == ("script", 1)


def test_requests_without_a_shell_tool_or_a_script_get_text() -> None:
    title = protocol.anthropic_decide(claude_request(tools=False))
    assert (title.kind, title.command) == ("no-tool", None)
    body = {"tools": [BASH], "messages": [{"role": "user", "content": "hello"}]}
    assert protocol.anthropic_decide(body).text == protocol.NO_SCRIPT_TEXT
    no_nudge = claude_request(*claude_step(1), *claude_step(2), DONE_REPLY,
                              {"role": "user", "content": "again"})
    no_nudge["messages"][0]["content"][1]["text"] = "SCRIPT-BEGIN\necho a\nSCRIPT-END"
    no_nudge["messages"][2:4] = claude_step(1)
    assert protocol.anthropic_decide(no_nudge).text == protocol.NOTHING_TEXT


def test_codex_requests_skip_context_messages_and_count_function_outputs() -> None:
    first = protocol.responses_decide(codex_request())
    assert (first.kind, first.step, first.command) == ("script", 0, "echo hi > hi.txt")
    done = protocol.responses_decide(codex_request(*codex_step(1), *codex_step(2)))
    assert done.text == "Done."
    reply = {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Done."}]}
    nudge_prompt = {"type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "please finish"}]}
    nudge = protocol.responses_decide(
        codex_request(*codex_step(1), *codex_step(2), reply, nudge_prompt))
    assert (nudge.kind, nudge.prompt_index, nudge.command) == (
        "nudge", 1, "echo nudged > n.txt")
    code_mode = codex_request()
    code_mode["tools"] = []
    code_mode["input"].insert(0, {"type": "additional_tools", "role": "developer", "tools": []})
    assert protocol.responses_decide(code_mode).text == protocol.CODE_MODE_TEXT


@given(lines=st.lists(st.from_regex(r"[a-z][a-z ]{0,15}[a-z]", fullmatch=True),
                      min_size=0, max_size=6),
       done=st.integers(min_value=0, max_value=8))
def test_the_step_alone_picks_the_answer(lines: list[str], done: int) -> None:
    prompt = "SCRIPT-BEGIN\n" + "\n".join(lines) + "\nSCRIPT-END"
    steps = [m for n in range(done) for m in claude_step(n)]
    body = {"tools": [BASH], "messages": [{"role": "user", "content": prompt}, *steps]}
    decision = protocol.anthropic_decide(body)
    assert decision.step == done
    if done < len(lines):
        assert decision.command == lines[done]
    else:
        assert decision.text == (protocol.DONE_TEXT if lines else protocol.NOTHING_TEXT)


def test_anthropic_stream_events_carry_the_bash_call_and_usage() -> None:
    decision = protocol.anthropic_decide(claude_request())
    events = parse_sse(protocol.sse(protocol.anthropic_events(decision, "m")))
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert events[1][1]["content_block"]["name"] == "Bash"
    tool_input = json.loads(events[2][1]["delta"]["partial_json"])
    assert tool_input["command"] == "echo hi > hi.txt" and tool_input["description"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 100
    assert events[4][1]["delta"]["stop_reason"] == "tool_use"
    assert events[4][1]["usage"]["output_tokens"] == 20


def test_responses_stream_events_carry_the_exec_command_call() -> None:
    decision = protocol.responses_decide(codex_request())
    events = parse_sse(protocol.sse(protocol.responses_events(decision)))
    assert [name for name, _ in events] == [
        "response.created", "response.output_item.done", "response.completed"]
    item = events[1][1]["item"]
    assert item["name"] == "exec_command"
    assert json.loads(item["arguments"]) == {"cmd": "echo hi > hi.txt"}
    assert events[2][1]["response"]["usage"]["input_tokens"] == 100


# --- the server over a socket ---------------------------------------------------------------

def post(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def test_the_server_answers_both_apis_and_logs_every_request(
        model_server: ModelServer) -> None:
    url = model_server.url
    head = urllib.request.Request(url + "/", method="HEAD")
    with urllib.request.urlopen(head, timeout=30) as response:
        assert response.status == 200
    status, ctype, payload = post(url + "/v1/messages?beta=true", claude_request())
    assert (status, ctype) == (200, "text/event-stream")
    assert parse_sse(payload)[-1][0] == "message_stop"
    plain = dict(claude_request(*claude_step(1), *claude_step(2)), stream=False)
    status, _, payload = post(url + "/v1/messages", plain)
    message = json.loads(payload)
    assert (status, message["stop_reason"], message["content"][0]["text"]) == (
        200, "end_turn", "Done.")
    status, _, payload = post(url + "/v1/messages/count_tokens?beta=true", claude_request())
    assert json.loads(payload) == {"input_tokens": 100}
    status, ctype, payload = post(url + "/v1/responses", codex_request())
    assert (status, ctype) == (200, "text/event-stream")
    status, _, payload = post(url + "/v1/chat/completions", {"messages": []})
    assert status == 404 and json.loads(payload)["type"] == "error"
    assert model_server.wait_for(lambda e: e["api"] == "other")["status"] == 404
    log = model_server.requests()
    assert [(e["api"], e["status"]) for e in log] == [
        ("probe", 200), ("anthropic", 200), ("anthropic", 200), ("anthropic", 200),
        ("responses", 200), ("other", 404)]
    assert log[1]["command"] == "echo hi > hi.txt" and log[1]["tool_call"]
    assert (log[2]["step"], log[2]["text"], log[2]["n_input"]) == (2, "Done.", 6)
    assert log[4]["prompt"].startswith("Do the task.")


def test_a_log_line_still_being_written_is_not_read(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"seq": 1}\n{"seq": 2, "api": "anthr')
    assert read_log(log) == [{"seq": 1}]


def test_the_foreground_server_prints_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.scripted_model", "--port", "0",
                             "--log", str(log)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening http://127.0.0.1:")
        status, _, _ = post(line.split()[1] + "/v1/responses", codex_request())
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e["command"] for e in read_log(log)] == ["echo hi > hi.txt"]


# --- the real CLIs ---------------------------------------------------------------------------

API_KEY = "sk-ant-test-" + "0123456789abcdefghijklmnop"


def agent_env(**extra: str) -> dict[str, str]:
    """The test's environment (fresh HOME, git identity) without any real credentials."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_"))}
    env["DISABLE_AUTOUPDATER"] = "1"
    if os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # claude refuses --dangerously-skip-permissions as root
    env.update(extra)
    return env


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    assert result.returncode == 0, f"{argv[:3]} -> {result.returncode}:\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result


@pytest.mark.agent_cli
def test_claude_runs_the_script_then_a_resumed_session_runs_the_nudge(
        tmp_path: Path, agent_clis: AgentClis, model_server: ModelServer) -> None:
    repo = make_repo(tmp_path / "repo")
    env = agent_env(ANTHROPIC_BASE_URL=model_server.url, ANTHROPIC_API_KEY=API_KEY)
    claude = [str(agent_clis.claude), "-p", "--output-format", "json",
              "--dangerously-skip-permissions"]

    first = json.loads(run([*claude, PROMPT], cwd=repo, env=env).stdout)
    assert first["subtype"] == "success" and first["result"] == "Done."
    assert (repo / "hi.txt").read_text() == "hi\n"
    assert git("log", "-1", "--format=%s", cwd=repo).strip() == "add hi"
    assert git("status", "--porcelain", cwd=repo) == ""
    tokens = first["usage"]["input_tokens"]
    assert tokens > 0 and tokens % 100 == 0

    # By id, as the preset's resume command does (`--resume {conversation}`).
    second = json.loads(run([*claude, "--resume", first["session_id"], "please finish"],
                            cwd=repo, env=env).stdout)
    assert second["session_id"] == first["session_id"] and second["result"] == "Done."
    assert (repo / "n.txt").read_text() == "nudged\n"
    scripted = [(e["kind"], e["prompt_index"], e["step"], e["command"])
                for e in model_server.requests()
                if e["api"] == "anthropic" and e["kind"] in ("script", "nudge")]
    # The nudge is a later prompt of the same conversation: usually the second (index 1),
    # but now and then under load the resumed history Claude Code sends holds one user
    # message more before it (seen twice: index 2, beside a side request of the CLI's own
    # that quotes the session), so its index is not pinned.
    nudge_index = scripted[3][1] if len(scripted) == 5 else None
    assert isinstance(nudge_index, int) and nudge_index >= 1 and scripted == [
        ("script", 0, 0, "echo hi > hi.txt"),
        ("script", 0, 1, 'git add hi.txt && git commit -qm "add hi"'),
        ("script", 0, 2, None),
        ("nudge", nudge_index, 0, "echo nudged > n.txt"),
        ("nudge", nudge_index, 1, None)], [
            (e["kind"], e["prompt_index"], e["step"], e["n_input"], e["prompt"][:160])
            for e in model_server.requests() if e["api"] == "anthropic"]


def codex_config(url: str) -> list[str]:
    """The -c flags that point Codex at the scripted server (a custom Responses provider)."""
    pairs = {"model": '"gpt-5-codex"', "model_provider": '"scripted"',
             "model_providers.scripted.name": '"scripted"',
             "model_providers.scripted.base_url": f'"{url}/v1"',
             "model_providers.scripted.wire_api": '"responses"',
             "model_providers.scripted.env_key": '"SCRIPTED_MODEL_KEY"'}
    return [arg for key, value in pairs.items() for arg in ("-c", f"{key}={value}")]


def codex_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.agent_cli
def test_codex_commits_on_a_linked_worktree_branch_then_a_resumed_session_runs_the_nudge(
        tmp_path: Path, agent_clis: AgentClis, model_server: ModelServer) -> None:
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "wt"
    git("worktree", "add", "-q", "-b", "feat", str(worktree), cwd=repo)
    codex_home = tmp_path / "home" / "codex"  # laid out as a polecat's agent home
    codex_home.mkdir(parents=True)
    env = agent_env(CODEX_HOME=str(codex_home), SCRIPTED_MODEL_KEY="sk-test")
    config = codex_config(model_server.url)

    # -c before the subcommand (a global flag) ...
    first = run([str(agent_clis.codex), *config, "exec", "--json",
                 "--dangerously-bypass-approvals-and-sandbox", PROMPT], cwd=worktree, env=env)
    events = codex_events(first.stdout)
    assert events[-1]["type"] == "turn.completed", first.stdout
    assert events[-1]["usage"]["input_tokens"] % 100 == 0
    messages = [e["item"]["text"] for e in events
                if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert messages == ["Done."]
    assert git("log", "-1", "--format=%s", "feat", cwd=repo).strip() == "add hi"
    assert git("log", "-1", "--format=%s", "main", cwd=repo).strip() == "initial commit"
    assert git("status", "--porcelain", cwd=worktree) == ""

    # ... and after `resume` (the subcommand's own -c) both work; resumed by the id the
    # preset's `{conversation}` gets: the thread named by the latest rollout's file.
    thread = last_conversation("codex", tmp_path / "home")
    assert thread is not None and thread == events[0]["thread_id"]
    second = run([str(agent_clis.codex), "exec", "--json",
                  "--dangerously-bypass-approvals-and-sandbox", "resume", *config, thread,
                  "please finish"], cwd=worktree, env=env)
    resumed = codex_events(second.stdout)
    assert resumed[0]["thread_id"] == events[0]["thread_id"]
    assert (worktree / "n.txt").read_text() == "nudged\n"
    scripted = [(e["kind"], e["prompt_index"], e["step"], e["command"])
                for e in model_server.requests() if e["api"] == "responses"]
    assert scripted == [
        ("script", 0, 0, "echo hi > hi.txt"),
        ("script", 0, 1, 'git add hi.txt && git commit -qm "add hi"'),
        ("script", 0, 2, None),
        ("nudge", 1, 0, "echo nudged > n.txt"),
        ("nudge", 1, 1, None)]

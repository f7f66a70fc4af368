"""The real Claude Code and Codex CLIs run unattended in polecats (issue 12).

No stand-in binaries: the pinned CLIs from the npm registry (``make agent-clis``) run in
the town's sessions, as root in CI, with a fresh ``HOME`` that holds nothing but what the
test gives it, against the scripted model server on loopback (tests/scripted_model), which
answers from the SCRIPT and NUDGE sections of each bead's description.

One town per (agent, backend) runs the whole story at once, to keep the suite's time:
a bead that ends with ``gastown done``; one that commits and forgets it, then obeys the
nudge; one that commits and ignores the nudge (the witness records its MR); one that
escalates with a reason; and one whose agent is killed mid-turn, respawned, and resumes
its conversation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, make_remote
from tests.e2e.town_helpers import (
    beads,
    clone,
    events,
    new_town_root,
    polecats,
    tear_down_town,
    wait_until,
)
from tests.scripted_model import ModelServer
from tests.scripted_model.clis import AgentClis

pytestmark = [pytest.mark.agent_cli]

API_KEY = "sk-ant-test-0123456789abcdefghijklmnopqrstuvwxyz"

#: The user's own Claude settings, which a polecat must never change.
USER_CLAUDE_JSON = {"theme": "light", "numStartups": 41, "projects": {"/home/me/x": {}},
                    "customApiKeyResponses": {"approved": [], "rejected": ["somethingelse"]}}


def _script(lines: list[str], nudge: list[str] | None = None) -> str:
    text = "SCRIPT-BEGIN\n" + "\n".join(lines) + "\nSCRIPT-END\n"
    if nudge is not None:
        text += "NUDGE-BEGIN\n" + "\n".join(nudge) + "\nNUDGE-END\n"
    return text


def _commit(name: str) -> list[str]:
    return [f"echo {name} > {name}.txt", f"git add {name}.txt && git commit -qm 'add {name}'"]


def _real_town(cli: Cli, tmp_path: Path, server: ModelServer, clis: AgentClis, *,
               agent: str, backend: str) -> Path:
    remote = make_remote(tmp_path / "remote.git")
    home = Path(cli.env["HOME"])
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    (home / ".claude.json").write_text(json.dumps(USER_CLAUDE_JSON))
    (home / ".claude" / "settings.json").write_text(json.dumps({"model": "mine"}))
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "scripted"\n'
        '[model_providers.scripted]\nname = "scripted"\n'
        f'base_url = "{server.url}/v1"\nwire_api = "responses"\n'
        'env_key = "SCRIPTED_MODEL_KEY"\n')
    cli.env.update({
        "PATH": f"{clis.bin_dir}{os.pathsep}{cli.env['PATH']}",
        "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": API_KEY,
        "SCRIPTED_MODEL_KEY": "sk-scripted", "DISABLE_AUTOUPDATER": "1",
    })
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text(
        f'default_agent = "{agent}"\n[sessions]\nbackend = "{backend}"\n'
        '[supervisor]\nstop_timeout = "3s"\nrestart_delay = "0.05s"\n')
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(remote))
    return root


@pytest.fixture(params=[("claude", "tmux"), ("claude", "process"), ("codex", "process"),
                        ("codex", "tmux")], ids=lambda p: f"{p[0]}-{p[1]}")
def real_town(request: pytest.FixtureRequest, cli: Cli, tmp_path: Path,
              model_server: ModelServer, agent_clis: AgentClis) -> Any:
    agent, backend = request.param
    root = _real_town(cli, tmp_path, model_server, agent_clis, agent=agent, backend=backend)
    try:
        yield agent, backend, root
    finally:
        tear_down_town(cli, root)


@pytest.mark.timeout(600)
def test_real_agent_lifecycle(real_town: tuple[str, str, Path], cli: Cli, tmp_path: Path,
                              model_server: ModelServer) -> None:
    agent, backend, root = real_town
    cli.ok("up")

    def create(title: str, description: str) -> str:
        return cli.ok("bead", "create", title, "--rig", "web", "-d", description).strip()

    good = create("good", _script([*_commit("good"), "gastown done"]))
    obeys = create("obeys", _script(_commit("obeys"), nudge=["gastown done"]))
    ignores = create("ignores", _script(_commit("ignores"), nudge=["echo not now"]))
    stuck = create("stuck", _script(
        ["gastown done --status escalated --reason 'the spec contradicts itself'"]))
    killed = create("killed", _script(["sleep 600"], nudge=[*_commit("killed"),
                                                            "gastown done"]))
    for bead in (good, obeys, ignores, stuck, killed):
        cli.ok("sling", bead, "web")

    # The killed bead: wait until its agent runs the long step, and its conversation
    # (the CLI's transcript in the polecat's agent home) holds that call, then kill it.
    # Killed any earlier, there is no conversation to resume: another scenario. Both the
    # prompt and the call must be in one transcript (not the CLI's prompt history): the
    # prompt is a conversation entry holding the script's marker (Claude's "user" line,
    # Codex's "response_item"), the call a line naming the command without it. Seen in
    # CI: Claude had written the call's line but not yet the prompt's (its parent), the
    # kill lost the prompt, and the resumed conversation had no task.
    model_server.wait_for(lambda r: r.get("command") == "sleep 600", timeout=120)
    victim = polecats(cli)
    name = next(n for n, p in victim.items() if p["bead"] == killed)
    home = root / ".runtime" / "agent-homes" / "web" / name

    def recorded(path: Path) -> bool:
        lines = path.read_text(errors="replace").splitlines()
        prompt = any("SCRIPT-BEGIN" in line and json.loads(line).get("type") in (
            "user", "response_item") for line in lines if line.startswith("{"))
        return prompt and any("sleep 600" in line and "SCRIPT-BEGIN" not in line
                              for line in lines)

    def call_recorded() -> bool:
        try:  # the CLI creates and removes folders of its home meanwhile (plugin fetches)
            return any(recorded(path) for path in home.rglob("*.jsonl")
                       if path.is_file() and path.name != "history.jsonl")
        except (FileNotFoundError, ValueError):  # ValueError: a line still being written
            return False

    wait_until(call_recorded, timeout=60, what="the long step in the agent's transcript")
    _kill_agent(root, name)

    def settled() -> dict[str, dict[str, object]] | None:
        now = beads(cli)
        merged = (good, obeys, ignores, killed)
        done = all(now[b]["status"] == "closed" for b in merged)
        # And nuked: a polecat's last tokens are settled by its nuke, after the merge.
        nuked = done and not any(p["bead"] in merged for p in polecats(cli).values())
        return now if nuked and now[stuck]["status"] == "blocked" else None

    try:
        # Well under the test's own timeout, so that a stuck town is described below.
        final = wait_until(settled, timeout=float(os.environ.get("REAL_AGENT_WAIT", "360")),
                           what="every bead merged or escalated")
    except AssertionError:
        _describe_town(cli, root)
        _describe_transcripts(home)
        for request in model_server.requests():
            print("model request:", json.dumps(request)[:600])
        raise
    assert final[stuck]["reason"] and "contradicts" in str(final[stuck]["reason"])
    shown = cli.ok("bead", "show", stuck)
    assert "the spec contradicts itself" in shown

    for name in ("good", "obeys", "ignores", "killed"):
        shown_file = subprocess.run(["git", "show", f"main:{name}.txt"], cwd=clone(root),
                                    capture_output=True, text=True, check=True).stdout
        assert shown_file == f"{name}\n"

    feed = events(cli)
    created = {e["bead"]: e for e in feed if e["kind"] == "mr_created"}
    assert created[ignores].get("done_by") == "witness"
    assert created[good].get("done_by") == "agent"
    assert created[obeys].get("done_by") == "agent"
    nudged = {e["bead"] for e in feed if e["kind"] == "polecat_nudged"}
    assert {obeys, ignores} <= nudged
    assert good not in nudged
    turns = [e for e in feed if e["kind"] == "agent_turn_ended"]
    assert turns and all(int(str(e["tokens_in"])) >= 0 for e in turns)
    assert sum(int(str(e["tokens_in"])) for e in turns) > 0

    # The killed agent's respawn continued its conversation: its prompt came as a second
    # prompt of the same conversation, with the first one's tool calls before it.
    resumed = [r for r in model_server.requests()
               if (r.get("prompt_index") or 0) >= 1
               and r.get("command") == "echo killed > killed.txt"]
    assert resumed, "the respawned agent never ran its NUDGE section"

    # Tokens were recorded per bead, and the town's total is in status.
    for bead in (good, obeys, ignores, killed):
        shown_bead = json.loads(cli.ok("bead", "show", bead, "--json"))
        assert shown_bead["tokens_in"] > 0, "\n".join([shown_bead["title"], *(
            " ".join(f"{k}={e.get(k)}" for k in ("ts", "kind", "polecat", "tokens_in",
                                                  "reason"))
            for e in feed if e.get("bead") == bead)])
    assert "agents:" in cli.ok("status")

    # A person nudges the escalated polecat (its agent escalated by itself, so it is still
    # idle at its prompt in tmux): typed at its prompt in tmux, a resumed turn in the
    # process backend; either way the model gets the text as a new prompt.
    stuck_name = next(n for n, p in polecats(cli).items() if p["bead"] == stuck)
    nudge = cli("nudge", f"web/{stuck_name}", "please look at the spec again")
    assert nudge.code == 0, nudge.err
    how = "as a resumed turn" if backend == "process" else "typed at its prompt"
    assert how in nudge.out
    model_server.wait_for(lambda r: "please look at the spec again" in
                          str(r.get("prompt") or ""), timeout=120)
    assert any(e["kind"] == "polecat_nudged" and e.get("by") == "human" for e in events(cli))

    if (agent, backend) == ("claude", "process"):
        # Claude's SessionStart hook ran `gastown prime`: its bead and rules reached the
        # conversation (stream-json records the hook's output).
        logs = "".join(path.read_text(errors="replace")
                       for path in (root / "logs" / "sessions").glob("*.log"))
        primes = [json.loads(line) for line in logs.splitlines()
                  if '"hook_response"' in line and '"SessionStart"' in line]
        assert primes and any(good in str(p.get("stdout")) and "gastown done" in
                              str(p.get("stdout")) for p in primes)

    # The user's own Claude state is untouched.
    home = Path(cli.env["HOME"])
    assert json.loads((home / ".claude.json").read_text()) == USER_CLAUDE_JSON
    assert json.loads((home / ".claude" / "settings.json").read_text()) == {"model": "mine"}
    del agent


def _stand_in_claude_town(cli: Cli, tmp_path: Path, sessions: str, program: str) -> Path:
    """A town (not started) with rig ``web`` whose default agent is ``sh -c program`` in
    tmux, watched as a ``kind = "claude"`` agent: a stand-in for Claude's *screen*."""
    remote = make_remote(tmp_path / "remote.git")
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text(
        'default_agent = "standin"\n[sessions]\nbackend = "tmux"\n' + sessions
        + '[supervisor]\nstop_timeout = "3s"\nrestart_delay = "0.05s"\n'
        '[agents.standin]\nkind = "claude"\n'
        f'command = ["sh", "-c", {json.dumps(program)}]\n')
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(remote))
    return root


def _describe_town(cli: Cli, root: Path) -> None:
    """Print what a stuck run needs to be understood: the beads, the polecats with their
    notes, the feed, each tmux session's screen and each session log's tail."""
    print(cli("bead", "list").out, cli("polecat", "list").out, cli("feed").out[-8000:])
    from gastown.roles.adapters.sessions import tmux_socket_name

    socket = tmux_socket_name(root)
    listed = subprocess.run(["tmux", "-L", socket, "list-sessions", "-F", "#{session_name}"],
                            capture_output=True, text=True)
    for session in listed.stdout.split():
        screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", session],
                                capture_output=True, text=True).stdout
        print(f"--- screen of {session} ---\n{screen.rstrip()}")
    for log in sorted((root / "logs").rglob("*")):
        if log.is_file():
            print(f"--- tail of {log.relative_to(root)} ---\n"
                  f"{log.read_text(errors='replace')[-2500:]}")


def _describe_transcripts(home: Path) -> None:
    """Print every transcript in an agent home: its name, size, mtime, and what its lines
    are (type, uuid, parent), so that a respawn that did not continue its conversation
    can be told apart from one that resumed another or an empty one (seen in CI only)."""
    for path in sorted(home.rglob("*.jsonl")):
        try:
            lines = path.read_text(errors="replace").splitlines()
            stat = path.stat()
        except OSError as exc:
            print(f"--- {path}: {exc}")
            continue
        print(f"--- transcript {path.relative_to(home)}: {stat.st_size} bytes, "
              f"mtime {stat.st_mtime:.3f}, {len(lines)} lines")
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                print(f"    unparsable: {line[:120]!r}")
                continue
            message = entry.get("message") if isinstance(entry, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            kinds = (",".join(str(c.get("type")) for c in content if isinstance(c, dict))
                     if isinstance(content, list) else str(content)[:40])
            print(f"    {entry.get('type')} {str(entry.get('uuid'))[:8]} <- "
                  f"{str(entry.get('parentUuid'))[:8]} session {str(entry.get('sessionId'))[:8]}"
                  f" {kinds}")


def _kill_agent(root: Path, name: str) -> None:
    """SIGKILL the agent's process group (its CLI and the `sleep` it runs)."""
    from gastown.roles.adapters.processes import processes_with_env

    pids = processes_with_env({"GASTOWN_TOWN": str(root), "GASTOWN_POLECAT": name})
    assert pids, f"no process of polecat {name}"
    groups = {os.getpgid(pid) for pid in pids if _alive(pid)}
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cli_is_not_a_stand_in(agent_clis: AgentClis) -> None:
    """The binaries under test are the real, pinned CLIs."""
    out = subprocess.run([str(agent_clis.claude), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("2.1.197")
    out = subprocess.run([str(agent_clis.codex), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert "0.171.0" in out


def test_a_start_stuck_on_an_unknown_screen_is_reported(cli: Cli, tmp_path: Path) -> None:
    """A real agent's start in tmux that stops at a screen nobody knows (a new dialog of a
    new CLI version, say) is noted on the polecat with the screen's last lines, not left
    silent, and no key is pressed at it. The program is a stand-in for the *screen* only:
    what is tested is the witness watching a `kind = "claude"` start."""
    root = _stand_in_claude_town(
        cli, tmp_path, 'start_timeout = "3s"\n',
        r"printf 'Pick a colour scheme for your new terminal\n  (a) ocean\n  (b) forest\n'; "
        "read answer; echo got:$answer; sleep 600")
    try:
        cli.ok("up")
        bead = cli.ok("bead", "create", "odd", "--rig", "web").strip()
        name = cli.ok("sling", bead, "web").split()[0]

        def noted() -> str | None:
            reason = polecats(cli)[name].get("reason")
            return str(reason) if reason and "stuck at start" in str(reason) else None

        reason = wait_until(noted, timeout=120, what="the stuck start noted")
        assert "ocean" in reason or "colour scheme" in reason
        assert polecats(cli)[name]["state"] == "working"
        from gastown.roles.adapters.sessions import tmux_socket_name

        screen = subprocess.run(["tmux", "-L", tmux_socket_name(root), "capture-pane", "-p",
                                 "-t", f"gt-web-{name}"], capture_output=True, text=True,
                                check=False).stdout
        assert "got:" not in screen  # no key was pressed at the unknown screen
    finally:
        tear_down_town(cli, root)


def test_an_agent_idle_at_its_prompt_without_a_turn_end_is_handled(cli: Cli,
                                                                   tmp_path: Path) -> None:
    """A real agent in tmux that sits at its prompt with no turn end from its hook (a
    nudge whose Enter was lost, a hook that failed) is not left for the silence note: the
    witness treats the idle spell as a turn end — a nudge, then, still idle, its committed
    work recorded as its MR and merged. The program stands in for Claude's *screen* only
    (it commits, draws Claude's idle prompt and never reports a turn): what is tested is
    the witness watching a `kind = "claude"` agent."""
    screen = Path(__file__).parents[1] / "unit" / "screens" / "claude_ready_after_turn.txt"
    root = _stand_in_claude_town(
        cli, tmp_path, 'start_timeout = "5s"\nidle_turn_after = "1s"\n',
        "echo idle > idle.txt && git add idle.txt && git commit -qm idle && "
        f"stty -echo && cat {screen} && exec cat >/dev/null")
    try:
        cli.ok("up")
        bead = cli.ok("bead", "create", "quiet", "--rig", "web").strip()
        name = cli.ok("sling", bead, "web").split()[0]
        wait_until(lambda: beads(cli)[bead]["status"] == "closed", timeout=120,
                   what="the idle agent's work merged")
        feed = events(cli)
        assert [e.get("by") for e in feed
                if e["kind"] == "polecat_nudged" and e.get("polecat") == name] == ["witness"]
        created = [e for e in feed if e["kind"] == "mr_created" and e.get("bead") == bead]
        assert [e.get("done_by") for e in created] == ["witness"]
        assert subprocess.run(["git", "show", "main:idle.txt"], cwd=clone(root),
                              capture_output=True, text=True).stdout == "idle\n"
    finally:
        tear_down_town(cli, root)

"""Agent sessions against real tmux servers and real processes, for both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from gastown.roles.adapters.processes import process_start_time
from gastown.roles.adapters.sessions import (
    Backend,
    SessionError,
    SessionInfo,
    SessionSpec,
    attach_argv,
    resolve_backend,
    session_alive,
    start_session,
    stop_session,
    tmux_socket_name,
    town_sessions,
)
from tests.waiting import wait_until

BACKENDS: list[Backend] = ["process", "tmux"]

# Every agent below is this interpreter, so PATH only has to reach `sh` and `sleep`.
PYTHON = sys.executable

# An agent that writes its cwd and environment to argv[1], then waits for argv[2] to exist.
REPORT_AND_WAIT = """
import json, os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"cwd": os.getcwd(), "env": dict(os.environ)}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
"""

# A shell agent with a child in its process group; both must die with the session.
FORKING_AGENT = ["sh", "-c", "sleep 300 & sleep 300"]


def agent_env(**extra: str) -> dict[str, str]:
    """A small complete agent environment; LC_ALL keeps Python from adding LC_CTYPE."""
    return {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8", **extra}


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgrp, session)`` of ``pid`` from ``/proc``, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[2]), int(fields[3])


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be collected."""
    stat = proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def tree_members(leader: int) -> list[int]:
    """Live pids in the process group or the kernel session that ``leader`` leads."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and leader in stat[1:] and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


class Sessions:
    """Starts sessions in one town and stops whatever is left of them at teardown."""

    def __init__(self, town_root: Path) -> None:
        self.town_root = town_root
        self.started: list[SessionInfo] = []

    def spec(self, backend: Backend, argv: list[str], *, name: str = "gt-web-toast",
             env: dict[str, str] | None = None, cwd: Path | None = None) -> SessionSpec:
        return SessionSpec(backend=backend, name=name, argv=argv,
                           cwd=cwd or self.town_root, env=env or agent_env(),
                           log_path=self.town_root / "logs" / "sessions" / f"web-{name}.log",
                           town_root=self.town_root)

    def start(self, spec: SessionSpec) -> SessionInfo:
        info = start_session(spec)
        self.started.append(info)
        return info


@pytest.fixture
def town_root(tmp_path: Path) -> Iterator[Path]:
    """A town directory with its own tmux server, killed at teardown."""
    root = tmp_path / "town"
    root.mkdir()
    yield root
    kill_tmux_server(root)


def kill_tmux_server(town_root: Path) -> None:
    """Kill the town's tmux server and remove the socket file tmux leaves behind."""
    sock = tmux_socket_name(town_root)
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)
    tmpdir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")
    (tmpdir / f"tmux-{os.getuid()}" / sock).unlink(missing_ok=True)


@pytest.fixture
def sessions(town_root: Path) -> Iterator[Sessions]:
    """Starts sessions in ``town_root``; whatever a test leaves running is stopped."""
    helper = Sessions(town_root)
    yield helper
    for info in helper.started:
        stop_session(info, grace=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_gets_cwd_and_exactly_its_env(backend: Backend, sessions: Sessions,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent runs in the worktree with exactly spec.env, nothing of ours or tmux's."""
    monkeypatch.setenv("GASTOWN_TEST_LEAK", "from-the-caller")
    worktree = tmp_path / "rig" / "polecats" / "toast"
    worktree.mkdir(parents=True)
    report, release = tmp_path / "report.json", tmp_path / "release"
    env = agent_env(GASTOWN_POLECAT="toast", ODD="a b;'\"$HOME #{x}", EMPTY="")
    info = sessions.start(sessions.spec(backend, [PYTHON, "-c", REPORT_AND_WAIT, str(report),
                                                  str(release)], env=env, cwd=worktree))
    wait_until(report.exists)
    seen = json.loads(report.read_text())
    assert seen["cwd"] == str(worktree)
    assert seen["env"] == env
    if backend == "tmux":
        # The pane's launcher got the environment through a 0600 file, and deleted it.
        wait_until(lambda: not any((sessions.town_root / ".runtime" / "sessions").iterdir()))
        assert (sessions.town_root / ".runtime").stat().st_mode & 0o777 == 0o700
        # The leak is real: the server we started carries our variable in its global env.
        shown = subprocess.run(["tmux", "-L", tmux_socket_name(sessions.town_root),
                                "show-environment", "-g", "GASTOWN_TEST_LEAK"],
                               capture_output=True, text=True, check=False)
        assert "from-the-caller" in shown.stdout
    release.touch()
    wait_until(lambda: not session_alive(info))


@pytest.mark.parametrize("backend", BACKENDS)
def test_alive_while_running_and_dead_after_exit(backend: Backend, sessions: Sessions,
                                                 tmp_path: Path) -> None:
    """session_alive is true while the agent runs and false once it exits by itself."""
    report, release = tmp_path / "report.json", tmp_path / "release"
    info = sessions.start(sessions.spec(backend, [PYTHON, "-c", REPORT_AND_WAIT, str(report),
                                                  str(release)]))
    wait_until(report.exists)
    assert session_alive(info)
    assert info.start_time == process_start_time(info.pid)
    release.touch()
    wait_until(lambda: not session_alive(info))
    wait_until(lambda: info.name not in town_sessions(sessions.town_root))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_kills_agent_and_children(backend: Backend, sessions: Sessions) -> None:
    """stop_session kills the agent's whole process group and can be repeated."""
    info = sessions.start(sessions.spec(backend, FORKING_AGENT))
    wait_until(lambda: len(tree_members(info.pid)) >= 2)
    members = tree_members(info.pid)
    stop_session(info, grace=2.0)
    assert all(dead(pid) for pid in members), [proc_stat(pid) for pid in members]
    assert not session_alive(info)
    stop_session(info, grace=2.0)
    assert info.name not in town_sessions(sessions.town_root)


# An agent whose child moves to a process group of its own, as job control would do.
REGROUPING_AGENT = """
import os, time
if os.fork() == 0:
    os.setpgid(0, 0)
time.sleep(300)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_kills_children_in_other_process_groups(backend: Backend,
                                                     sessions: Sessions) -> None:
    """A child that left the agent's process group but not its session dies too."""
    info = sessions.start(sessions.spec(backend, [PYTHON, "-c", REGROUPING_AGENT]))

    def regrouped() -> bool:
        stats = [proc_stat(pid) for pid in tree_members(info.pid)]
        return any(s is not None and s[1] != info.pid for s in stats)

    wait_until(regrouped)
    members = tree_members(info.pid)
    stop_session(info, grace=2.0)
    assert all(dead(pid) for pid in members), [proc_stat(pid) for pid in members]


# An agent whose child leaves its kernel session (as Node's `detached: true` does).
SETSID_AGENT = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_kills_a_child_that_left_the_session(backend: Backend, sessions: Sessions,
                                                  tmp_path: Path) -> None:
    """A child of the agent that called setsid is in the agent's tree while the agent
    lives: it dies with the session (before, only a scan of every environ caught it)."""
    report = tmp_path / "child.pid"
    info = sessions.start(sessions.spec(backend, [PYTHON, "-c", SETSID_AGENT, str(report)]))
    wait_until(report.exists)
    child = int(report.read_text())
    assert proc_stat(child) is not None and proc_stat(child)[2] == child  # type: ignore[index]
    stop_session(info, grace=2.0)
    assert dead(child)
    assert dead(info.pid)


# An agent that exits on SIGTERM at once, with a child in its group that ignores it.
ABANDONING_AGENT = ["sh", "-c", "(trap '' TERM; exec sleep 300) & exec sleep 300"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_kills_a_child_that_outlives_the_agent(backend: Backend,
                                                    sessions: Sessions) -> None:
    """The agent dies on SIGTERM; its child ignores SIGTERM and is SIGKILLed after the
    grace, though the agent it was awaited through is gone."""
    info = sessions.start(sessions.spec(backend, ABANDONING_AGENT))
    wait_until(lambda: len(tree_members(info.pid)) >= 2)
    members = tree_members(info.pid)
    stop_session(info, grace=0.3)
    assert all(dead(pid) for pid in members), [proc_stat(pid) for pid in members]


# An agent whose SIGTERM handler takes a while to clean up, then says so.
SLOW_TO_CLEAN_AGENT = """
import signal, sys, time
def clean(*_):
    time.sleep(0.5)
    open(sys.argv[1], "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, clean)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(300)
"""


def test_stop_gives_the_agent_its_grace(sessions: Sessions, tmp_path: Path) -> None:
    """The agent's death is awaited, not assumed: a SIGTERM handler that needs half a
    second finishes before stop_session returns, and is not SIGKILLed."""
    cleaned = tmp_path / "cleaned"
    info = sessions.start(sessions.spec("process", [PYTHON, "-c", SLOW_TO_CLEAN_AGENT,
                                                    str(cleaned)]))
    wait_until(Path(f"{cleaned}.ready").exists)
    stop_session(info, grace=30.0)
    assert cleaned.exists()
    assert dead(info.pid)


def test_stop_after_the_agent_exited_kills_what_it_left(sessions: Sessions) -> None:
    """The agent exited by itself, leaving a child in its group: stopping the session
    still finds and stops the child (the group and session ids outlive the leader)."""
    info = sessions.start(sessions.spec("process", ["sh", "-c", "sleep 300 & exit 0"]))
    wait_until(lambda: not session_alive(info))
    left = tree_members(info.pid)
    assert left
    stop_session(info, grace=2.0)
    assert all(dead(pid) for pid in left)


def test_stop_kills_a_group_that_ignores_sigterm(sessions: Sessions) -> None:
    """An agent that ignores SIGTERM is SIGKILLed after the grace period."""
    info = sessions.start(sessions.spec("process", ["sh", "-c", "trap '' TERM; sleep 300"]))
    wait_until(lambda: len(tree_members(info.pid)) >= 2)
    members = tree_members(info.pid)
    stop_session(info, grace=0.2)
    assert all(dead(pid) for pid in members)


STARTER = """
import sys
from pathlib import Path
from gastown.roles.adapters.sessions import SessionSpec, start_session
town = Path(sys.argv[2])
spec = SessionSpec(backend=sys.argv[1], name="gt-web-nux", argv=["sh", "-c", sys.argv[3]],
                   cwd=town, env={"PATH": sys.argv[4]}, log_path=town / "logs" / "nux.log",
                   town_root=town)
print(start_session(spec).to_json(), flush=True)
sys.stdin.read()  # stay alive until killed, as a role process would
"""


@contextmanager
def started_by_starter(sessions: Sessions, program: str, backend: Backend,
                       command: str) -> Iterator[tuple[int, SessionInfo]]:
    """A session of ``sh -c command`` started by another process (``program``, a
    :data:`STARTER`); the starter's pid and the session. At the end of the block the
    starter's whole group is SIGKILLed."""
    starter = subprocess.Popen(
        [PYTHON, "-c", program, backend, str(sessions.town_root), command,
         os.environ["PATH"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert starter.stdout is not None
    try:
        info = SessionInfo.from_json(starter.stdout.readline())
        sessions.started.append(info)
        yield starter.pid, info
    finally:
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_survives_sigkill_of_starters_group(backend: Backend,
                                                    sessions: Sessions) -> None:
    """A session outlives its starter's process group being SIGKILLed, and stops fully."""
    with started_by_starter(sessions, STARTER, backend, FORKING_AGENT[2]) as (starter, info):
        pass
    wait_until(lambda: len(tree_members(info.pid)) >= 2)
    assert session_alive(info)
    assert info.pid not in (starter, os.getpid())
    members = tree_members(info.pid)
    stop_session(info, grace=2.0)
    assert all(dead(pid) for pid in members)
    assert not session_alive(info)


def test_an_agent_that_ended_is_collected_not_left_a_zombie(sessions: Sessions) -> None:
    """The process backend starts the agent from the caller, which collects it when it
    ends: nothing of it is left, not even a zombie."""
    info = sessions.start(sessions.spec("process", ["sh", "-c", "exit 3"]))
    wait_until(lambda: proc_stat(info.pid) is None, timeout=30,
               what="the ended agent collected (no /proc entry left)")


def _ignored_signals(pid: int) -> int:
    """The ``SigIgn`` mask of ``pid`` (bit N-1 set: signal N ignored)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for {pid}")


IGNORING_STARTER = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
""" + STARTER


def test_a_caller_that_ignores_sighup_still_gives_the_agent_the_default(
        sessions: Sessions) -> None:
    """An ignored signal survives exec: a caller that ignores SIGHUP (``nohup gastown
    up``) has the agent started by the launcher, which resets it; SIGPIPE, which Python
    ignores, is reset either way."""
    with started_by_starter(sessions, IGNORING_STARTER, "process", "sleep 300") as (
            starter, info):
        assert _ignored_signals(starter) & (1 << (signal.SIGHUP - 1))
        ignored = _ignored_signals(info.pid)
        assert not ignored & (1 << (signal.SIGHUP - 1))
        assert not ignored & (1 << (signal.SIGPIPE - 1))


def test_the_agent_gets_sigpipe_at_its_default(sessions: Sessions) -> None:
    """Python ignores SIGPIPE; an agent started from a Python caller does not."""
    info = sessions.start(sessions.spec("process", ["sleep", "300"]))
    assert _ignored_signals(os.getpid()) & (1 << (signal.SIGPIPE - 1))
    assert not _ignored_signals(info.pid) & (1 << (signal.SIGPIPE - 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_output_lands_in_log(backend: Backend, sessions: Sessions) -> None:
    """Whatever the agent prints, stdout and stderr, is appended to log_path."""
    spec = sessions.spec(backend, ["sh", "-c", "echo out-line; echo err-line >&2; sleep 300"])
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("earlier run\n")
    sessions.start(spec)
    wait_until(lambda: "err-line" in spec.log_path.read_text()
               and "out-line" in spec.log_path.read_text())
    assert spec.log_path.read_text().startswith("earlier run\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_command_is_a_one_line_error(backend: Backend, sessions: Sessions) -> None:
    """A command that does not exist fails start_session with one clear line."""
    with pytest.raises(SessionError, match="gastown-no-such-agent") as caught:
        sessions.start(sessions.spec(backend, ["gastown-no-such-agent", "--flag"]))
    assert "\n" not in str(caught.value)
    assert town_sessions(sessions.town_root) == []


def test_unexecutable_command_is_reported(sessions: Sessions) -> None:
    """An exec failure is start_session's error, not an agent that just exits."""
    script = sessions.town_root / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(SessionError, match="Permission denied"):
        sessions.start(sessions.spec("process", [str(script)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_environment_is_an_error(backend: Backend, sessions: Sessions) -> None:
    """A variable name execve would reject fails start_session, not the agent later."""
    with pytest.raises(SessionError, match="invalid environment variable 'A=B'"):
        sessions.start(sessions.spec(backend, ["true"], env=agent_env(**{"A=B": "x"})))


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_cwd_is_an_error(backend: Backend, sessions: Sessions) -> None:
    """A worktree that does not exist is refused, not silently replaced by $HOME."""
    with pytest.raises(SessionError, match="does not exist"):
        sessions.start(sessions.spec(backend, ["true"], cwd=sessions.town_root / "gone"))


def test_duplicate_tmux_name_is_an_error(sessions: Sessions) -> None:
    """Starting a tmux session under a live session's name fails and leaves it alone."""
    first = sessions.start(sessions.spec("tmux", ["sleep", "300"]))
    with pytest.raises(SessionError, match="already exists"):
        sessions.start(sessions.spec("tmux", ["sleep", "300"]))
    assert session_alive(first)
    assert town_sessions(sessions.town_root) == ["gt-web-toast"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_starts_from_threads(backend: Backend, sessions: Sessions) -> None:
    """Sessions started at once from several threads (a fresh tmux server) all run."""
    specs = [sessions.spec(backend, ["sleep", "300"], name=f"gt-web-p{i}") for i in range(6)]
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        infos = list(pool.map(sessions.start, specs))
    assert all(session_alive(info) for info in infos)
    assert len({info.pid for info in infos}) == len(infos)
    if backend == "tmux":
        assert sorted(town_sessions(sessions.town_root)) == sorted(i.name for i in infos)


def test_tmux_name_is_sanitised(sessions: Sessions) -> None:
    """Dots and colons, which tmux reads as target syntax, are replaced."""
    info = sessions.start(sessions.spec("tmux", ["sleep", "300"], name="gt-web.toast:1"))
    assert info.name == "gt-web_toast_1"
    assert session_alive(info)
    assert town_sessions(sessions.town_root) == ["gt-web_toast_1"]


def test_attach_argv_shape(sessions: Sessions) -> None:
    """tmux sessions attach by exact name on the town's server; process sessions cannot."""
    tmux = sessions.start(sessions.spec("tmux", ["sleep", "300"]))
    process = sessions.start(sessions.spec("process", ["sleep", "300"]))
    sock = tmux_socket_name(sessions.town_root)
    assert tmux.tmux_socket == sock
    assert attach_argv(tmux) == ["tmux", "-L", sock, "attach", "-t", "=gt-web-toast"]
    assert attach_argv(process) is None


def test_town_sessions_lists_live_sessions(sessions: Sessions) -> None:
    """town_sessions names the live sessions of this town's server only."""
    assert town_sessions(sessions.town_root) == []
    toast = sessions.start(sessions.spec("tmux", ["sleep", "300"], name="gt-web-toast"))
    sessions.start(sessions.spec("tmux", ["sleep", "300"], name="gt-web-alpha"))
    assert sorted(town_sessions(sessions.town_root)) == ["gt-web-alpha", "gt-web-toast"]
    stop_session(toast, grace=2.0)
    wait_until(lambda: town_sessions(sessions.town_root) == ["gt-web-alpha"])
    subprocess.run(["tmux", "-L", tmux_socket_name(sessions.town_root), "kill-server"],
                   capture_output=True, check=False)
    assert town_sessions(sessions.town_root) == []  # a dead server's socket file remains


def test_stale_session_info_never_signals_a_stranger(sessions: Sessions) -> None:
    """A recorded pid whose start time no longer matches is neither alive nor signalled."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start_time = process_start_time(stranger.pid)
        assert start_time is not None
        stale = SessionInfo(backend="process", name="gt-web-toast", pid=stranger.pid,
                            start_time=start_time + 1, log_path="unused", tmux_socket=None)
        assert not session_alive(stale)
        stop_session(stale, grace=0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_leaves_a_newer_same_named_tmux_session(sessions: Sessions) -> None:
    """Stopping an old tmux session record does not kill a newer session of that name."""
    old = sessions.start(sessions.spec("tmux", ["sleep", "300"]))
    stop_session(old, grace=2.0)
    wait_until(lambda: town_sessions(sessions.town_root) == [])
    new = sessions.start(sessions.spec("tmux", ["sleep", "300"]))
    stop_session(old, grace=2.0)
    assert session_alive(new)


def test_session_info_json_round_trip() -> None:
    """SessionInfo survives to_json/from_json unchanged, and junk is rejected."""
    info = SessionInfo(backend="tmux", name="gt-web-toast", pid=1234, start_time=99,
                       log_path="/town/logs/sessions/web-toast.log", tmux_socket="gastown-ab")
    assert SessionInfo.from_json(info.to_json()) == info
    with pytest.raises(ValueError):
        SessionInfo.from_json('{"backend": "screen"}')


def test_tmux_socket_name_is_stable_short_and_per_town(tmp_path: Path) -> None:
    """The socket name depends only on the town's resolved path, and is short."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    name = tmux_socket_name(tmp_path / "a")
    assert name == tmux_socket_name(tmp_path / "link")
    assert name != tmux_socket_name(tmp_path / "b")
    assert name.startswith("gastown-")
    assert len(name) == len("gastown-") + 12


def test_resolve_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto picks tmux when installed; asking for a missing tmux is a clear error."""
    assert resolve_backend("auto") == "tmux"
    assert resolve_backend("process") == "process"
    assert resolve_backend("tmux") == "tmux"
    monkeypatch.setenv("PATH", "")
    assert resolve_backend("auto") == "process"
    with pytest.raises(SessionError, match="needs tmux"):
        resolve_backend("tmux")

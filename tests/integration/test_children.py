"""Starting and stopping real role processes: environment, lifeline, process groups, reaping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from gastown.roles.adapters.children import (
    LIFELINE_ENV,
    TOKEN_ENV,
    Lifeline,
    child_env,
    lifeline_fd_from_env,
    open_lifeline,
    start_child,
    stop_child,
)
from tests.integration.conftest import Fifo

#: Generous: these wait for real processes on a noisy 2-core box, never for a duration.
TIMEOUT = 20.0

SYSTEMD_ENV = {
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "2",
    "LISTEN_PID": "1",
    "LISTEN_FDNAMES": "a:b",
    "JOURNAL_STREAM": "8:1234",
}


@pytest.fixture
def lifeline() -> Iterator[Lifeline]:
    """An open lifeline, closed after the test."""
    with open_lifeline() as line:
        yield line


def python(code: str, *args: str) -> list[str]:
    """argv running ``code`` in this interpreter (so it can import gastown)."""
    return [sys.executable, "-c", code, *args]


def state(pid: int) -> str | None:
    """The one-letter state of ``pid``, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


async def wait_dead(pid: int) -> None:
    """Wait for a process we are not the parent of to die (gone, or a zombie).

    Another process's death cannot be awaited as an event without being its parent,
    so this polls ``/proc`` with tiny sleeps, bounded by ``fail_after``.
    """
    with trio.fail_after(TIMEOUT):
        while state(pid) not in (None, "Z", "X"):
            await trio.sleep(0.01)


def assert_reaped(proc: trio.Process) -> None:
    """The child has been collected: no zombie is left behind."""
    assert proc.returncode is not None
    with pytest.raises(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)


async def spawn(
    code: str, tmp_path: Path, lifeline: Lifeline, *args: str, env: dict[str, str] | None = None
) -> trio.Process:
    """Start ``code`` as a role child with its output in ``tmp_path/out.log``."""
    return await start_child(
        python(code, *args),
        env=os.environ if env is None else env,
        cwd=tmp_path,
        lifeline=lifeline,
        stdout_path=tmp_path / "out.log",
    )


# Children report on the FIFO named by argv[1].
IGNORES_TERM = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = os.fork()
if grandchild == 0:
    while True:
        time.sleep(60)
with open(sys.argv[1], "w") as report:
    report.write(f"{os.getpid()} {grandchild}\\n")
while True:
    time.sleep(60)
"""

EXITS_7_ON_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
with open(sys.argv[1], "w") as report:
    report.write("ready\\n")
while True:
    time.sleep(60)
"""

# The leader obeys SIGTERM, but leaves a grandchild behind that ignores it.
LEAVES_STUBBORN_GRANDCHILD = """
import os, signal, sys, time
grandchild = os.fork()
if grandchild == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], "w") as report:
        report.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(60)
while True:
    time.sleep(60)
"""

WAITS_FOR_LIFELINE = """
import os, sys, trio
from gastown.roles.adapters.children import lifeline_fd_from_env, wait_for_lifeline_eof
fd = lifeline_fd_from_env(os.environ)
assert fd is not None
trio.run(wait_for_lifeline_eof, fd)
print("lifeline closed", flush=True)
"""

# A stand-in supervisor: starts WAITS_FOR_LIFELINE with a lifeline, reports the child's
# pid on stdout, then waits for it (forever, until it is SIGKILLed).
FAKE_SUPERVISOR = f"""
import os, sys, trio
from pathlib import Path
from gastown.roles.adapters.children import open_lifeline, start_child

async def main() -> None:
    lifeline = open_lifeline()
    proc = await start_child(
        [sys.executable, "-c", {WAITS_FOR_LIFELINE!r}],
        env=os.environ, cwd=sys.argv[1], lifeline=lifeline,
        stdout_path=Path(sys.argv[1]) / "grandchild.log",
    )
    print(proc.pid, flush=True)
    await proc.wait()

trio.run(main)
"""


class TestChildEnv:
    def test_scrubs_systemd_variables(self) -> None:
        """NOTIFY_SOCKET, WATCHDOG_*, LISTEN_* and JOURNAL_STREAM never reach a child."""
        env = child_env({**SYSTEMD_ENV, "PATH": "/bin", "LISTEN_ANYTHING": "x"}, {})
        assert env == {"PATH": "/bin"}

    def test_extra_is_added_last(self) -> None:
        """Extra variables are added and override the base ones."""
        env = child_env({"A": "1", "B": "2"}, {"B": "3", "GASTOWN_ROLE": "mayor"})
        assert env == {"A": "1", "B": "3", "GASTOWN_ROLE": "mayor"}

    def test_base_is_not_modified(self) -> None:
        """The caller's mapping is left as it was."""
        base = dict(SYSTEMD_ENV)
        child_env(base, {"X": "1"})
        assert base == SYSTEMD_ENV


class TestStartChild:
    async def test_real_child_gets_a_scrubbed_environment(
        self, tmp_path: Path, lifeline: Lifeline
    ) -> None:
        """A started child sees no systemd variables, but does see its lifeline fd."""
        env = {**os.environ, **SYSTEMD_ENV, "GASTOWN_ROLE": "mayor"}
        proc = await spawn("import json, os; print(json.dumps(dict(os.environ)))", tmp_path,
                           lifeline, env=env)
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
        seen = json.loads((tmp_path / "out.log").read_text())
        assert not set(SYSTEMD_ENV) & set(seen)
        assert seen["GASTOWN_ROLE"] == "mayor"
        assert seen[LIFELINE_ENV] == str(lifeline.read_fd)

    async def test_child_layout(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """The child leads its own group, reads /dev/null, and appends both streams to the log."""
        (tmp_path / "out.log").write_text("earlier run\n")
        code = (
            "import os, sys\n"
            "print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())\n"
            "print(os.readlink('/proc/self/fd/0'), repr(sys.stdin.read()), flush=True)\n"
            "print('to stderr', file=sys.stderr)\n"
            "print(os.getcwd())\n"
        )
        proc = await spawn(code, tmp_path, lifeline)
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
        assert (tmp_path / "out.log").read_text().splitlines() == [
            "earlier run",
            "True True",
            "/dev/null ''",
            "to stderr",
            str(tmp_path),
        ]

    async def test_only_the_read_end_of_the_lifeline_is_inherited(
        self, tmp_path: Path, lifeline: Lifeline
    ) -> None:
        """The child holds exactly one fd on the lifeline pipe: the read end, not the write end."""
        code = (
            "import os\n"
            "fd = int(os.environ['GASTOWN_LIFELINE_FD'])\n"
            "pipe = os.readlink(f'/proc/self/fd/{fd}')\n"
            "holders = []\n"
            "for name in os.listdir('/proc/self/fd'):\n"
            "    try:\n"
            "        if os.readlink(f'/proc/self/fd/{name}') == pipe:\n"
            "            holders.append(int(name))\n"
            "    except OSError:\n"
            "        pass\n"
            "print(holders, os.fstat(fd).st_mode & 0o777)\n"
        )
        proc = await spawn(code, tmp_path, lifeline)
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
        holders = (tmp_path / "out.log").read_text().split("]")[0] + "]"
        assert json.loads(holders) == [lifeline.read_fd]

    async def test_missing_executable_raises(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """A spawn failure is an OSError in the parent; no process exists."""
        with pytest.raises(FileNotFoundError):
            await start_child(
                [str(tmp_path / "no-such-program")],
                env=os.environ,
                cwd=tmp_path,
                lifeline=lifeline,
                stdout_path=tmp_path / "out.log",
            )

    async def test_empty_argv_is_refused(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """An empty argv is a programming error, reported before anything is spawned."""
        with pytest.raises(ValueError, match="empty argv"):
            await start_child(
                [], env=os.environ, cwd=tmp_path, lifeline=lifeline, stdout_path=tmp_path / "o"
            )

    async def test_closed_lifeline_is_refused(self, tmp_path: Path) -> None:
        """A child cannot be started on a lifeline that is already closed."""
        line = open_lifeline()
        line.close()
        with pytest.raises(ValueError, match="closed lifeline"):
            await spawn("pass", tmp_path, line)


class TestStopChild:
    async def test_default_sigterm_action(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """A child with the default SIGTERM action dies from it: status -15."""
        proc = await spawn("import time; time.sleep(600)", tmp_path, lifeline)
        with trio.fail_after(TIMEOUT):
            assert await stop_child(proc, grace=TIMEOUT) == -signal.SIGTERM
        assert_reaped(proc)

    async def test_child_exits_with_its_own_code(
        self, tmp_path: Path, lifeline: Lifeline, fifo: Fifo
    ) -> None:
        """A child that handles SIGTERM and exits 7 reports 7."""
        proc = await spawn(EXITS_7_ON_TERM, tmp_path, lifeline, str(fifo.path))
        with trio.fail_after(TIMEOUT):
            assert await fifo.receive_line() == "ready"
            assert await stop_child(proc, grace=TIMEOUT) == 7
        assert_reaped(proc)

    async def test_stubborn_group_is_killed_after_grace(
        self, tmp_path: Path, lifeline: Lifeline, fifo: Fifo
    ) -> None:
        """A child ignoring SIGTERM is SIGKILLed after the grace, and so is its grandchild."""
        proc = await spawn(IGNORES_TERM, tmp_path, lifeline, str(fifo.path))
        with trio.fail_after(TIMEOUT):
            leader, grandchild = (int(x) for x in (await fifo.receive_line()).split())
            assert leader == proc.pid
            assert await stop_child(proc, grace=0.2) == -signal.SIGKILL
        assert_reaped(proc)
        await wait_dead(grandchild)

    async def test_grandchild_outliving_its_leader_is_killed(
        self, tmp_path: Path, lifeline: Lifeline, fifo: Fifo
    ) -> None:
        """When the leader obeys SIGTERM, what is left of its group is SIGKILLed."""
        proc = await spawn(LEAVES_STUBBORN_GRANDCHILD, tmp_path, lifeline, str(fifo.path))
        with trio.fail_after(TIMEOUT):
            grandchild = int(await fifo.receive_line())
            assert await stop_child(proc, grace=TIMEOUT) == -signal.SIGTERM
        await wait_dead(grandchild)

    async def test_already_reaped_child(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """Stopping a child that exited and was awaited returns its status."""
        proc = await spawn("raise SystemExit(3)", tmp_path, lifeline)
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 3
            assert await stop_child(proc, grace=1.0) == 3

    async def test_exited_but_unreaped_child(self, tmp_path: Path, lifeline: Lifeline) -> None:
        """Stopping a zombie child reaps it and returns its own status."""
        proc = await spawn("raise SystemExit(3)", tmp_path, lifeline)
        pidfd = os.pidfd_open(proc.pid)
        try:
            with trio.fail_after(TIMEOUT):
                await trio.lowlevel.wait_readable(pidfd)  # exited, not reaped
            assert state(proc.pid) == "Z"
            with trio.fail_after(TIMEOUT):
                assert await stop_child(proc, grace=1.0) == 3
        finally:
            os.close(pidfd)
        assert_reaped(proc)

    async def test_cancelled_before_stop_still_reaps(
        self, tmp_path: Path, lifeline: Lifeline
    ) -> None:
        """A stop called inside an already-cancelled scope still kills and reaps the child."""
        proc = await spawn("import time; time.sleep(600)", tmp_path, lifeline)
        with trio.CancelScope() as scope:
            scope.cancel()
            status = await stop_child(proc, grace=TIMEOUT)
            await trio.sleep(0)  # the pending cancellation lands here, after the stop
        assert scope.cancelled_caught
        assert status == -signal.SIGTERM
        assert_reaped(proc)

    async def test_cancelled_during_grace_still_kills_and_reaps(
        self, tmp_path: Path, lifeline: Lifeline, fifo: Fifo
    ) -> None:
        """An outer cancellation during the grace does not cut the stop short."""
        proc = await spawn(IGNORES_TERM, tmp_path, lifeline, str(fifo.path))
        with trio.fail_after(TIMEOUT):
            _, grandchild = (int(x) for x in (await fifo.receive_line()).split())
        status: int | None = None
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def stop() -> None:
                    nonlocal status
                    status = await stop_child(proc, grace=0.5)

                nursery.start_soon(stop)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        assert status == -signal.SIGKILL
        assert_reaped(proc)
        await wait_dead(grandchild)


class TestLifeline:
    def test_fds_are_close_on_exec(self, lifeline: Lifeline) -> None:
        """Neither end leaks into a child started by any other means."""
        assert not os.get_inheritable(lifeline.read_fd)
        assert not os.get_inheritable(lifeline.write_fd)

    def test_fd_from_env(self) -> None:
        """The fd is read from GASTOWN_LIFELINE_FD; absent means no lifeline."""
        assert lifeline_fd_from_env({LIFELINE_ENV: "7"}) == 7
        assert lifeline_fd_from_env({}) is None
        with pytest.raises(ValueError):
            lifeline_fd_from_env({LIFELINE_ENV: "-1"})

    async def test_child_exits_when_lifeline_closes(self, tmp_path: Path) -> None:
        """Closing the supervisor's lifeline makes a waiting child return and exit 0."""
        line = open_lifeline()
        try:
            proc = await spawn(WAITS_FOR_LIFELINE, tmp_path, line)
        finally:
            line.close()
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
        assert "lifeline closed" in (tmp_path / "out.log").read_text()

    async def test_child_survives_while_lifeline_is_open(
        self, tmp_path: Path, lifeline: Lifeline
    ) -> None:
        """While the supervisor holds the lifeline the child keeps waiting."""
        proc = await spawn(WAITS_FOR_LIFELINE, tmp_path, lifeline)
        with trio.move_on_after(0.5):
            await proc.wait()
        assert proc.returncode is None
        with trio.fail_after(TIMEOUT):
            await stop_child(proc, grace=TIMEOUT)

    async def test_child_exits_when_supervisor_is_sigkilled(self, tmp_path: Path) -> None:
        """SIGKILLing a supervisor closes its lifeline, and its child exits by itself."""
        supervisor = await trio.lowlevel.open_process(
            python(FAKE_SUPERVISOR, str(tmp_path)),
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert supervisor.stdout is not None
            buffer = b""
            pids: list[int] = []
            with trio.fail_after(TIMEOUT):
                while not pids:  # the pid line comes after the supervisor's log lines
                    chunk = await supervisor.stdout.receive_some()
                    assert chunk, "the fake supervisor exited early"
                    buffer += chunk
                    lines = buffer.split(b"\n")[:-1]
                    pids = [int(line) for line in lines if line.strip().isdigit()]
            child = pids[0]
            assert state(child) not in (None, "Z")
            supervisor.kill()
            with trio.fail_after(TIMEOUT):
                assert await supervisor.wait() == -signal.SIGKILL
            await wait_dead(child)
            assert "lifeline closed" in (tmp_path / "grandchild.log").read_text()
        finally:
            with trio.CancelScope(shield=True):
                await stop_child(supervisor, grace=1.0)
                if supervisor.stdout is not None:
                    await supervisor.stdout.aclose()


# A role whose event loop is hung in a synchronous call, with the backstop armed, and a
# child in its process group (git, a gate): reports both pids, then hangs.
HUNG_WITH_BACKSTOP = """
import os, subprocess, sys, time
from gastown.roles.adapters.children import lifeline_fd_from_env, start_lifeline_backstop
start_lifeline_backstop(lifeline_fd_from_env(os.environ), "test-role", grace=0.2)
helper = subprocess.Popen(["sleep", "3600"])
with open(sys.argv[1], "w") as report:
    report.write(f"{os.getpid()} {helper.pid}\\n")
time.sleep(3600)  # the hung loop: nothing here ever looks at the lifeline again
"""

READS_TOKEN = """
import os, sys
from gastown.roles.adapters.children import TOKEN_ENV, read_token
fd = os.environ[TOKEN_ENV]
token = read_token(os.environ)
environ = open(f"/proc/{os.getpid()}/environ", "rb").read()
print(f"token={token} fd={fd} in-environ={token.encode() in environ} "
      f"fd-open={os.path.exists(f'/proc/self/fd/{fd}')} env-left={TOKEN_ENV in os.environ}",
      flush=True)
"""


class TestBackstopAndToken:
    async def test_backstop_kills_a_hung_role_and_its_group(
            self, tmp_path: Path, fifo: Fifo) -> None:
        """A role whose loop never looks at the lifeline again still dies with its group
        once the lifeline closes (here: the supervisor's end is closed)."""
        line = open_lifeline()
        try:
            proc = await spawn(HUNG_WITH_BACKSTOP, tmp_path, line, str(fifo.path))
            with trio.fail_after(TIMEOUT):
                role, helper = map(int, (await fifo.receive_line()).split())
            assert role == proc.pid and state(helper) not in (None, "Z")
        finally:
            line.close()
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == -signal.SIGKILL
        await wait_dead(helper)
        assert "supervisor is gone and this role did not stop" in (
            tmp_path / "out.log").read_text()

    async def test_token_comes_on_a_pipe_not_in_the_environment(
            self, tmp_path: Path, lifeline: Lifeline) -> None:
        """The child reads its token once from an inherited pipe; /proc/<pid>/environ
        never holds it, and the pipe is closed after the read."""
        proc = await start_child(python(READS_TOKEN), env=os.environ, cwd=tmp_path,
                                 lifeline=lifeline, stdout_path=tmp_path / "out.log",
                                 token="s3cret-token")
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
        out = (tmp_path / "out.log").read_text()
        assert "token=s3cret-token" in out, out
        assert "in-environ=False fd-open=False env-left=False" in out, out
        assert TOKEN_ENV not in os.environ

"""Process identity and process-group termination against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.adapters.processes import (
    is_same_process,
    process_start_time,
    terminate_process_group,
)
from tests.waiting import wait_until

# A leader that ignores SIGTERM and forks a grandchild (in its group) that ignores it too,
# then reports both pids on stdout.
STUBBORN_GROUP = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    while True:
        time.sleep(60)
print(os.getpid(), child, flush=True)
while True:
    time.sleep(60)
"""


def unused_pid() -> int:
    """A pid that cannot exist: one above the kernel's maximum."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def state(pid: int) -> str | None:
    """The one-letter state of ``pid``, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be collected."""
    return state(pid) in (None, "Z", "X")


@pytest.fixture
def stubborn_group() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A session leader that ignores SIGTERM, with a grandchild; yields (leader, grandchild pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_GROUP],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    leader, grandchild = (int(x) for x in proc.stdout.readline().split())
    assert leader == proc.pid
    try:
        yield proc, grandchild
    finally:
        for pid in (grandchild, proc.pid):
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


class TestProcessStartTime:
    def test_own_start_time_is_field_22(self) -> None:
        """The start time of this process is field 22 of /proc/self/stat."""
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        assert process_start_time(os.getpid()) == int(fields[22 - 3])

    @pytest.mark.parametrize("pid", [0, -1])
    def test_impossible_pid_has_none(self, pid: int) -> None:
        """Pid 0 and negative pids have no start time (never /proc/0 or /proc/-1)."""
        assert process_start_time(pid) is None

    def test_missing_pid_has_none(self) -> None:
        """A pid that does not exist has no start time."""
        assert process_start_time(unused_pid()) is None

    def test_comm_with_spaces_and_parentheses(self) -> None:
        """A process that names itself 'x) Z 1 (2 3' still parses to the same start time."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "sys.stdin.readline()\n"
                "open('/proc/self/comm', 'w').write('x) Z 1 (2 3')\n"
                "print('renamed', flush=True)\n"
                "sys.stdin.readline()\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            before = process_start_time(proc.pid)
            proc.stdin.write("rename\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "renamed\n"
            assert Path(f"/proc/{proc.pid}/comm").read_text() == "x) Z 1 (2 3\n"
            assert before is not None
            assert process_start_time(proc.pid) == before
            assert is_same_process(proc.pid, before)
        finally:
            proc.stdin.close()
            proc.wait()
            proc.stdout.close()


class TestIsSameProcess:
    def test_self_is_self(self) -> None:
        """This process, with its own start time, is the same process."""
        start = process_start_time(os.getpid())
        assert start is not None
        assert is_same_process(os.getpid(), start)

    def test_other_start_time_is_a_reused_pid(self) -> None:
        """A live pid with a different start time is another process."""
        start = process_start_time(os.getpid())
        assert start is not None
        assert not is_same_process(os.getpid(), start + 1)

    def test_missing_pid_is_not_alive(self) -> None:
        """A pid that does not exist is not the process."""
        assert not is_same_process(unused_pid(), 0)

    def test_zombie_counts_as_dead(self) -> None:
        """An exited child not yet collected by its parent is not alive."""
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        try:
            start = process_start_time(proc.pid)
            assert start is not None
            wait_until(lambda: state(proc.pid) == "Z")
            assert process_start_time(proc.pid) == start
            assert not is_same_process(proc.pid, start)
        finally:
            proc.wait()


class TestTerminateProcessGroup:
    def test_well_behaved_group_exits_on_sigterm(self) -> None:
        """A leader with the default SIGTERM action dies from SIGTERM."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        try:
            assert terminate_process_group(proc.pid, grace=30.0)
            assert proc.wait() == -signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                assert stream is not None
                stream.close()

    def test_stubborn_group_is_killed_after_grace(
        self, stubborn_group: tuple[subprocess.Popen[str], int]
    ) -> None:
        """A group ignoring SIGTERM is SIGKILLed, grandchild included."""
        proc, grandchild = stubborn_group
        assert terminate_process_group(proc.pid, grace=0.2)
        assert proc.wait() == -signal.SIGKILL
        wait_until(lambda: dead(grandchild))

    def test_reused_pid_is_not_signalled(
        self, stubborn_group: tuple[subprocess.Popen[str], int]
    ) -> None:
        """A recorded start time that does not match the live leader leaves the group alone."""
        proc, grandchild = stubborn_group
        start = process_start_time(proc.pid)
        assert start is not None
        assert terminate_process_group(proc.pid, grace=0.2, start_time=start + 1)
        assert proc.poll() is None
        assert not dead(grandchild)

    def test_matching_start_time_is_signalled(
        self, stubborn_group: tuple[subprocess.Popen[str], int]
    ) -> None:
        """The recorded start time of the live leader lets the group be stopped."""
        proc, grandchild = stubborn_group
        start = process_start_time(proc.pid)
        assert start is not None
        assert terminate_process_group(proc.pid, grace=0.2, start_time=start)
        assert proc.wait() == -signal.SIGKILL
        wait_until(lambda: dead(grandchild))

    def test_gone_group_is_fine(self) -> None:
        """Terminating a group that does not exist succeeds quietly."""
        assert terminate_process_group(unused_pid(), grace=1.0)

    @pytest.mark.parametrize("pgid", [0, 1, -5])
    def test_refuses_dangerous_group_ids(self, pgid: int) -> None:
        """Group 0 (our own), 1 (init) and negative ids are never signalled."""
        with pytest.raises(ValueError, match="refusing"):
            terminate_process_group(pgid, grace=0.0)

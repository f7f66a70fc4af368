"""One supervisor per town: the flock, the pid file, and who is believed to hold them."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown import supervisor
from gastown.roles.adapters.processes import process_start_time
from gastown.roles.adapters.role_lock import (
    RoleLocked,
    acquire_role_lock,
    role_lock_holder,
    role_lock_path,
    wait_roles_exit,
)
from gastown.roles.adapters.town_lock import (
    PID_NAME,
    SupervisorInfo,
    SupervisorRunning,
    acquire_supervisor_lock,
    hold_start_lock,
    read_supervisor,
    start_in_progress,
    wait_start_settled,
)
from gastown.roles.core.errors import GastownError, Refused

# Takes the lock, says so, and holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from gastown.roles.adapters.town_lock import acquire_supervisor_lock
with acquire_supervisor_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    """A town's .runtime directory (not yet created)."""
    return tmp_path / ".runtime"


@pytest.fixture
def holder(runtime_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the town's supervisor lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(runtime_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def own_start_time() -> int:
    start = process_start_time(os.getpid())
    assert start is not None
    return start


def write_pid_file(runtime_dir: Path, pid: int, start_time: int) -> None:
    info = SupervisorInfo(pid=pid, start_time=start_time, started_at=0.0, version="0.0.0")
    (runtime_dir / PID_NAME).write_text(info.to_json())


class TestAcquire:
    def test_holder_writes_its_identity(self, runtime_dir: Path) -> None:
        """The holder's pid file names it: pid, start time, wall-clock start, version."""
        with acquire_supervisor_lock(runtime_dir) as lock:
            data = json.loads((runtime_dir / PID_NAME).read_text())
            assert data["pid"] == os.getpid()
            assert data["start_time"] == own_start_time()
            assert data["version"] == supervisor.__version__
            assert isinstance(data["started_at"], float)
            assert lock.info == SupervisorInfo(**data)
            assert (runtime_dir / PID_NAME).stat().st_mode & 0o777 == 0o600
            assert runtime_dir.stat().st_mode & 0o777 == 0o700
            assert read_supervisor(runtime_dir) == lock.info

    def test_release_frees_the_town(self, runtime_dir: Path) -> None:
        """After release nobody is running, the pid file is gone, and the lock can be retaken."""
        lock = acquire_supervisor_lock(runtime_dir)
        lock.release()
        lock.release()
        assert read_supervisor(runtime_dir) is None
        assert not (runtime_dir / PID_NAME).exists()
        acquire_supervisor_lock(runtime_dir).release()

    def test_lock_fd_is_close_on_exec(self, runtime_dir: Path) -> None:
        """The lock fd carries FD_CLOEXEC, so exec'd children never hold the lock."""
        with acquire_supervisor_lock(runtime_dir) as lock:
            assert lock.fd is not None
            assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC

    def test_child_does_not_keep_the_lock(self, runtime_dir: Path) -> None:
        """A child started without closing fds does not keep the town locked after release."""
        lock = acquire_supervisor_lock(runtime_dir)
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=False,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            child.stdout.readline()  # exec'd and running
            lock.release()
            acquire_supervisor_lock(runtime_dir).release()
        finally:
            child.stdin.close()
            child.wait()
            child.stdout.close()

    def test_second_supervisor_is_refused(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """While another process holds the lock, acquiring it is refused with that pid."""
        with pytest.raises(SupervisorRunning) as caught:
            acquire_supervisor_lock(runtime_dir)
        assert caught.value.pid == holder.pid
        assert isinstance(caught.value, Refused)
        assert isinstance(caught.value, GastownError)
        assert str(caught.value) == (
            f"a supervisor is already running for this town (pid {holder.pid})"
        )
        info = read_supervisor(runtime_dir)
        assert info is not None
        assert info.pid == holder.pid

    def test_refusal_leaves_the_holder_alone(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """A refused acquire changes nothing: the holder's pid file and lock stay."""
        before = (runtime_dir / PID_NAME).read_text()
        with pytest.raises(SupervisorRunning):
            acquire_supervisor_lock(runtime_dir)
        assert (runtime_dir / PID_NAME).read_text() == before
        with pytest.raises(SupervisorRunning):
            acquire_supervisor_lock(runtime_dir)

    def test_sigkilled_holder_is_taken_over(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """When the holder is SIGKILLed the kernel frees the lock and the next acquire wins."""
        holder.send_signal(signal.SIGKILL)
        assert holder.wait() == -signal.SIGKILL
        assert (runtime_dir / PID_NAME).exists()  # stale, left behind
        assert read_supervisor(runtime_dir) is None
        with acquire_supervisor_lock(runtime_dir) as lock:
            assert lock.info.pid == os.getpid()
            assert read_supervisor(runtime_dir) == lock.info

    def test_holder_with_unreadable_pid_file(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """A held lock with a garbled pid file is still refused, with the pid unknown."""
        (runtime_dir / PID_NAME).write_text("{not json")
        with pytest.raises(SupervisorRunning, match="pid unknown") as caught:
            acquire_supervisor_lock(runtime_dir)
        assert caught.value.pid is None


class TestReadSupervisor:
    def test_no_town_runtime_yet(self, runtime_dir: Path) -> None:
        """A town where no supervisor ever ran has none running."""
        assert read_supervisor(runtime_dir) is None

    def test_stale_pid_file_with_reused_pid_is_not_believed(self, runtime_dir: Path) -> None:
        """An unlocked town's pid file naming a live process is not believed."""
        acquire_supervisor_lock(runtime_dir).release()
        write_pid_file(runtime_dir, os.getpid(), own_start_time())
        assert read_supervisor(runtime_dir) is None

    def test_pid_file_naming_another_process_is_not_believed(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """A held lock whose pid file names a live pid with another start time gives None."""
        write_pid_file(runtime_dir, os.getpid(), own_start_time() + 1)
        assert read_supervisor(runtime_dir) is None
        with pytest.raises(SupervisorRunning) as caught:
            acquire_supervisor_lock(runtime_dir)
        assert caught.value.pid is None

    def test_holder_that_exited_cleanly(
        self, runtime_dir: Path, holder: subprocess.Popen[str]
    ) -> None:
        """After the holder releases and exits, nobody is running."""
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait() == 0
        assert read_supervisor(runtime_dir) is None
        assert not (runtime_dir / PID_NAME).exists()

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "[]",
            '{"pid": "1", "start_time": 1, "started_at": 0, "version": "x"}',
            '{"pid": true, "start_time": 1, "started_at": 0, "version": "x"}',
            '{"pid": 1}',
        ],
    )
    def test_malformed_pid_file(self, text: str) -> None:
        """A pid file that is not a complete, well-typed record parses to None."""
        assert SupervisorInfo.from_json(text) is None


# Takes a role's lock (or the start-up lock), says so, holds it until stdin closes.
ROLE_HOLDER = """
import sys
from pathlib import Path
from gastown.roles.adapters.role_lock import acquire_role_lock
from gastown.roles.adapters.town_lock import hold_start_lock
if sys.argv[2] == "start":
    assert hold_start_lock(Path(sys.argv[1]), timeout=10) is not None
else:
    lock = acquire_role_lock(Path(sys.argv[1]), sys.argv[2], timeout=10)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def role_holder(runtime_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``refinery:web``'s instance lock."""
    yield from _holding(runtime_dir, "refinery:web")


@pytest.fixture
def start_holder(runtime_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process in the middle of a start-up (holding ``start.lock``)."""
    yield from _holding(runtime_dir, "start")


def _holding(runtime_dir: Path, what: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", ROLE_HOLDER, str(runtime_dir), what],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


class TestRoleLock:
    def test_holder_is_named_in_its_lock_file(self, runtime_dir: Path) -> None:
        """The lock lives in .runtime/roles/, names its holder, and is close-on-exec."""
        lock = acquire_role_lock(runtime_dir, "witness:web", timeout=1)
        try:
            assert lock.path == role_lock_path(runtime_dir, "witness:web")
            assert lock.path == runtime_dir / "roles" / "witness-web.lock"
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert role_lock_holder(runtime_dir, "witness:web") == os.getpid()
        finally:
            lock.release()
        assert role_lock_holder(runtime_dir, "witness:web") is None

    def test_second_instance_waits_then_gives_up(
            self, runtime_dir: Path, role_holder: subprocess.Popen[str]) -> None:
        """A second instance is told who holds the lock, waits, and is refused in time."""
        waited_for: list[int | None] = []
        with pytest.raises(RoleLocked) as caught:
            acquire_role_lock(runtime_dir, "refinery:web", timeout=0.2,
                              on_wait=waited_for.append)
        assert waited_for == [role_holder.pid]
        assert caught.value.pid == role_holder.pid
        assert f"pid {role_holder.pid}" in caught.value.message
        assert role_lock_holder(runtime_dir, "refinery:web") == role_holder.pid
        other = acquire_role_lock(runtime_dir, "refinery:api", timeout=1)  # another role
        other.release()

    def test_second_instance_gets_the_lock_when_the_first_dies(
            self, runtime_dir: Path, role_holder: subprocess.Popen[str]) -> None:
        """The wait ends when the holder exits, even by SIGKILL (the kernel releases it)."""
        import threading

        got: list[object] = []
        waiting = threading.Event()

        def second() -> None:
            got.append(acquire_role_lock(runtime_dir, "refinery:web", timeout=60,
                                         on_wait=lambda pid: waiting.set()))

        thread = threading.Thread(target=second)
        thread.start()
        assert waiting.wait(30)
        assert not got
        role_holder.kill()
        thread.join(60)
        assert len(got) == 1
        assert role_lock_holder(runtime_dir, "refinery:web") == os.getpid()
        lock = got[0]
        assert hasattr(lock, "release")
        lock.release()


    def test_down_waits_for_roles_and_names_those_left(
            self, runtime_dir: Path, role_holder: subprocess.Popen[str]) -> None:
        """wait_roles_exit names a role still holding its lock, and returns empty once
        the holder is gone."""
        free = acquire_role_lock(runtime_dir, "mayor", timeout=1)
        free.release()  # a lock file nobody holds any more
        assert wait_roles_exit(runtime_dir, timeout=0.2) == {"refinery:web": role_holder.pid}
        role_holder.kill()
        assert wait_roles_exit(runtime_dir, timeout=30) == {}


class TestStartLock:
    def test_start_in_progress_until_released(
            self, runtime_dir: Path, start_holder: subprocess.Popen[str]) -> None:
        """While an `up` holds start.lock a start-up is in progress; `down` can wait it out."""
        assert start_in_progress(runtime_dir)
        assert not wait_start_settled(runtime_dir, timeout=0.1)
        assert hold_start_lock(runtime_dir, timeout=0.1) is None
        assert start_holder.stdin is not None
        start_holder.stdin.close()
        assert wait_start_settled(runtime_dir, timeout=30)
        # The timed-out hold_start_lock above left a waiter thread that takes the lock
        # for an instant when it is freed, then closes it: wait that instant out.
        deadline = time.monotonic() + 30
        while start_in_progress(runtime_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not start_in_progress(runtime_dir)
        fd = hold_start_lock(runtime_dir, timeout=5)
        assert fd is not None
        os.close(fd)

    def test_no_start_ever(self, runtime_dir: Path) -> None:
        assert not start_in_progress(runtime_dir)
        assert wait_start_settled(runtime_dir, timeout=0.1)

"""Running gates as real shell processes: order, failure, timeouts, cancellation, the log."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import trio

from gastown.roles.core.config import GateConfig, Seconds
from gastown.roles.operations.gates import TAIL_BYTES, TAIL_LINES, GateResult, run_gates
from tests.integration.conftest import Fifo

#: Generous: these wait for real processes on a noisy 2-core box, never for a duration.
TIMEOUT = 20.0

#: The variable that tags every process a test's gates start, so /proc can be searched.
TAG = "GASTOWN_GATE_TEST_TAG"

#: Backgrounds a sleeper, reports, then sleeps in the foreground: a hanging gate with a child.
HANGS_WITH_CHILD = "sleep 1000 & echo started; sleep 1000"


def gate(name: str, command: str, timeout: float = 600.0) -> GateConfig:
    """A gate as rig.toml would configure it."""
    return GateConfig(name=name, command=command, timeout=Seconds(timeout))


def tagged_pids(tag: str) -> list[int]:
    """The live processes whose environment carries ``TAG=tag`` (zombies have none)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


async def wait_none_tagged(tag: str) -> None:
    """Wait until no process carries the tag.

    Processes we are not the parent of cannot be awaited as an event, so this polls
    ``/proc`` with tiny sleeps, bounded by ``fail_after``.
    """
    with trio.fail_after(TIMEOUT):
        while tagged_pids(tag):
            await trio.sleep(0.02)


@pytest.fixture
def tag() -> str:
    """A value no other test's processes carry."""
    return uuid.uuid4().hex


@pytest.fixture
def env(tag: str) -> dict[str, str]:
    """This process's environment plus the tag."""
    return {**os.environ, TAG: tag}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The directory the gates run in (the refinery's checkout)."""
    path = tmp_path / "clone"
    path.mkdir()
    return path


async def test_passing_gates_all_run_in_order(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Every gate passes, each reported in order with its own output, and on_gate sees each."""
    seen: list[str] = []
    results = await run_gates(
        [gate("setup", "echo set up"), gate("lint", "echo linted"), gate("test", "echo tested")],
        cwd=clone, log_path=tmp_path / "mr.log", env=env, on_gate=seen.append,
    )
    assert seen == ["setup", "lint", "test"]
    assert [r.name for r in results] == seen
    assert all(r.ok and r.exit_code == 0 and not r.timed_out for r in results)
    assert [r.tail for r in results] == ["set up", "linted", "tested"]
    assert (tmp_path / "mr.log").stat().st_mode & 0o777 == 0o600


async def test_failing_gate_stops_the_run(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A gate exiting 3 fails with its output in the tail, and later gates never start."""
    seen: list[str] = []
    results = await run_gates(
        [
            gate("setup", "echo fine"),
            gate("lint", "echo 'E501 line too long' >&2; exit 3"),
            gate("test", "touch ran"),
        ],
        cwd=clone, log_path=tmp_path / "mr.log", env=env, on_gate=seen.append,
    )
    assert seen == ["setup", "lint"]
    assert [r.name for r in results] == ["setup", "lint"]
    failed = results[-1]
    assert failed == GateResult(
        name="lint", ok=False, exit_code=3, timed_out=False, duration=failed.duration,
        tail="E501 line too long",
    )
    assert not (clone / "ran").exists()


async def test_gate_killed_by_a_signal_fails(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A gate whose shell dies of a signal fails with minus the signal number."""
    [result] = await run_gates(
        [gate("test", "kill -KILL $$")], cwd=clone, log_path=tmp_path / "mr.log", env=env
    )
    assert not result.ok
    assert result.exit_code == -9
    assert not result.timed_out


async def test_timed_out_gate_is_killed_with_its_whole_group(
    clone: Path, tmp_path: Path, env: dict[str, str], tag: str
) -> None:
    """A hanging gate whose processes ignore SIGTERM is SIGKILLed, children and all."""
    [result] = await run_gates(
        [gate("test", f"trap '' TERM; {HANGS_WITH_CHILD}", timeout=1.0)],
        cwd=clone, log_path=tmp_path / "mr.log", env=env, kill_grace=0.2,
    )
    assert result.timed_out
    assert not result.ok
    assert result.exit_code is None
    assert result.tail == "started"  # the background sleeper did exist
    await wait_none_tagged(tag)


async def test_cancellation_kills_the_running_gate_and_propagates(
    clone: Path, tmp_path: Path, env: dict[str, str], tag: str, fifo: Fifo
) -> None:
    """Cancelling mid-gate kills the gate's group, reaps it, and still cancels the caller."""
    returned = False

    async def refinery() -> None:
        nonlocal returned
        await run_gates(
            [gate("test", f"sleep 1000 & echo started > {fifo.path}; sleep 1000")],
            cwd=clone, log_path=tmp_path / "mr.log", env=env,
        )
        returned = True

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def cancellable() -> None:
                with scope:
                    await refinery()

            nursery.start_soon(cancellable)
            assert await fifo.receive_line() == "started"
            assert tagged_pids(tag)
            scope.cancel(reason="refinery stopped")
    assert scope.cancelled_caught
    assert not returned
    await wait_none_tagged(tag)
    assert (tmp_path / "mr.log").read_text().splitlines()[-1] == (
        "== gate test: cancelled; process group killed"
    )


async def test_passing_gate_leaves_no_background_process(
    clone: Path, tmp_path: Path, env: dict[str, str], tag: str
) -> None:
    """What a passing gate started in the background is killed when its shell exits."""
    [result] = await run_gates(
        [gate("setup", "sleep 1000 & echo started")],
        cwd=clone, log_path=tmp_path / "mr.log", env=env,
    )
    assert result.ok
    assert result.tail == "started"
    await wait_none_tagged(tag)


async def test_gate_runs_in_cwd_with_env_and_no_stdin(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The gate runs in cwd, sees env minus systemd's variables, and reads /dev/null."""
    env = {**env, "GATE_SETTING": "on", "NOTIFY_SOCKET": "/run/systemd/notify"}
    [result] = await run_gates(
        [gate("env", 'pwd -P; echo "$GATE_SETTING"; echo "${NOTIFY_SOCKET-unset}"; '
                     "readlink /proc/$$/fd/0; cat")],
        cwd=clone, log_path=tmp_path / "mr.log", env=env,
    )
    assert result.ok
    assert result.tail.splitlines() == [str(clone.resolve()), "on", "unset", "/dev/null"]


async def test_log_has_each_gate_section_in_order(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The log keeps earlier content, then one header, output and footer per gate that ran."""
    log_path = tmp_path / "logs" / "mr-1.log"
    log_path.parent.mkdir()
    log_path.write_text("earlier attempt\n")
    results = await run_gates(
        [gate("setup", "echo A"), gate("lint", "printf 'no newline'; exit 1"),
         gate("test", "echo C")],
        cwd=clone, log_path=log_path, env=env,
    )
    assert results[1].tail == "no newline"
    lines = log_path.read_text().splitlines()
    assert lines[0] == "earlier attempt"
    assert lines[1] == "== gate setup: echo A"
    assert lines[2] == "A"
    assert lines[3].startswith("== gate setup: passed (exit 0)")
    assert lines[4] == "== gate lint: printf 'no newline'; exit 1"
    assert lines[5] == "no newline"
    assert lines[6].startswith("== gate lint: failed (exit 1)")
    assert len(lines) == 7


async def test_tail_is_bounded(clone: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """A gate's tail holds only its last lines and never more than the byte bound."""
    results = await run_gates(
        [gate("noisy", "seq 1 5000"), gate("wide", "head -c 20000 /dev/zero | tr '\\0' x")],
        cwd=clone, log_path=tmp_path / "mr.log", env=env,
    )
    noisy, wide = results
    assert noisy.tail.splitlines() == [str(n) for n in range(5001 - TAIL_LINES, 5001)]
    assert set(wide.tail) == {"x"}
    assert len(wide.tail.encode()) <= TAIL_BYTES


async def test_missing_cwd_raises(tmp_path: Path, env: dict[str, str]) -> None:
    """A checkout that is not there is the refinery's error, not a failed gate."""
    with pytest.raises(FileNotFoundError):
        await run_gates(
            [gate("setup", "true")], cwd=tmp_path / "missing", log_path=tmp_path / "mr.log",
            env=env,
        )
    assert "could not start" in (tmp_path / "mr.log").read_text()


async def test_no_gates_is_an_empty_result(clone: Path, tmp_path: Path) -> None:
    """A rig without gates runs nothing and passes vacuously."""
    assert await run_gates([], cwd=clone, log_path=tmp_path / "mr.log", env={}) == []


async def test_a_python_gate_never_runs_bytecode_cached_for_another_candidate(
    clone: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Two candidates in one folder whose module differs by one character, same size, same
    mtime second (what a checkout within a second does): with the refinery's environment
    pointing Python at a cache outside the tree, the second gate must still run its own
    code, not the first candidate's cached bytecode (the demo's conflicting pair was once
    rejected for the broken change's failure this way)."""
    module = clone / "calc.py"
    test = f"{sys.executable} -c 'import calc, sys; sys.exit(0 if calc.add(2, 1) == 3 else 1)'"
    gates = [gate("test", test)]
    with_cache = {**env, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    with_cache.pop("PYTHONDONTWRITEBYTECODE", None)
    module.write_text("def add(a, b):\n    return a + b\n")
    os.utime(module, (1_700_000_000, 1_700_000_000))
    (first,) = await run_gates(gates, cwd=clone, log_path=tmp_path / "a.log", env=with_cache)
    assert first.ok, first
    # The next candidate: same size, same mtime; the checkout's `git clean -ffdx` removes
    # the tree's own caches.
    shutil.rmtree(clone / "__pycache__", ignore_errors=True)
    module.write_text("def add(a, b):\n    return a - b\n")
    os.utime(module, (1_700_000_000, 1_700_000_000))
    (second,) = await run_gates(gates, cwd=clone, log_path=tmp_path / "b.log", env=with_cache)
    assert not second.ok, "the gate ran the first candidate's cached code"

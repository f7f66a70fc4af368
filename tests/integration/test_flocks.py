"""The repository lock's order: urgent holders (nukes) before patient ones (spawns).

Real ``flock`` on real files, threads as the competing holders (``flock`` locks belong to
open file descriptions, so two descriptors of one process exclude each other as two
processes would). A waiter is known to be queued when the kernel lists it as blocked in
``/proc/locks``, not after a sleep.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gastown.roles.adapters.flocks import exclusive_flock
from tests.waiting import wait_until


def _blocked_on(path: Path) -> int:
    """How many lock requests on ``path``'s file the kernel holds blocked."""
    inode = os.stat(path).st_ino
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(f.endswith(f":{inode}") for f in fields):
            count += 1
    return count


def test_an_urgent_holder_goes_before_patient_ones_that_came_after_it(
        tmp_path: Path) -> None:
    lock = tmp_path / "repo.lock"
    gate = Path(f"{lock}.urgent")
    order: list[str] = []

    def take(name: str, urgent: bool) -> None:
        with exclusive_flock(lock, urgent=urgent):
            order.append(name)

    threads: list[threading.Thread] = []
    with exclusive_flock(lock):  # held, as by a worktree add in progress
        urgent = threading.Thread(target=take, args=("urgent", True))
        urgent.start()
        threads.append(urgent)
        wait_until(lambda: _blocked_on(lock) == 1, timeout=30, what="the urgent one queued")
        for i in range(4):
            patient = threading.Thread(target=take, args=(f"patient{i}", False))
            patient.start()
            threads.append(patient)
        # Each patient one waits at the gate, behind the urgent one's shared hold.
        wait_until(lambda: _blocked_on(gate) == 4, timeout=30,
                   what="four patient ones queued at the gate")
    for thread in threads:
        thread.join(timeout=30)
    assert order[0] == "urgent"
    assert sorted(order[1:]) == [f"patient{i}" for i in range(4)]


def test_patient_holders_take_the_lock_one_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "repo.lock"
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(20):
            with exclusive_flock(lock, urgent=threading.get_ident() % 2 == 0):
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert most == 1

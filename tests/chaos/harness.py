"""One chaos run, and a series of them: build, inject faults, converge, check, tear down.

A run: a fresh town (see :mod:`tests.chaos.world`), its beads created and slung (some
while the town is down, the rest while it runs), then the plan's kills and armed fail
points while the town works, ``gastown up`` again whenever the supervisor was killed,
and a bounded wait for the town to settle. Then every check of :mod:`tests.chaos.checks`
runs and the town is torn down (``down --all``; anything left is killed and counted).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos import checks
from tests.chaos.plan import RIG, TARGETS, Plan, make_plan
from tests.chaos.world import (
    ROLES,
    Census,
    World,
    acting_role_processes,
    build_world,
    census,
    kill,
    kill_tmux_server,
    remove_world,
    store_rows,
)

#: How long a run may take to settle after its last fault (a loaded machine is slow).
CONVERGE_TIMEOUT = 150.0
#: How long a scheduled kill waits for its target to exist (an agent, a gate) before it
#: is skipped.
TARGET_WAIT = 3.0
#: How long processes get to go away once the town settled or was stopped.
GRACE = 15.0
#: How long a role may outlive its SIGKILLed supervisor (the product promises "a few
#: seconds"; a loaded machine gets slack).
OUTLIVE = 20.0

PAUSE_LINE = re.compile(r"gastown fault: pause at (\S+)@(\S+)")

SETTLED_SQL = {
    "beads not settled": "SELECT id, status FROM beads "
                         "WHERE status NOT IN ('closed', 'blocked', 'open')",
    "slings queued": "SELECT id, bead FROM slings WHERE state = 'queued'",
    "MRs queued or running": "SELECT id, bead, state FROM merge_requests "
                             "WHERE state IN ('queued', 'running')",
    "polecats busy": "SELECT name, state FROM polecats "
                     "WHERE state IN ('spawning', 'working', 'stalled', 'done', 'merging')",
}


@dataclass
class RunRecord:
    seed: int
    plan: str
    kills: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    faults_fired: list[str] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=dict)
    duration: float = 0.0
    kept: Path | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, lines: list[str]) -> None:
        if lines:
            self.violations.setdefault(kind, []).extend(lines)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        kills = " ".join(f"{t}={n}" for t, n in sorted(self.kills.items())) or "none"
        bad = " ".join(f"{k}={len(v)}" for k, v in self.violations.items()) or "ok"
        fired = f" faults={','.join(self.faults_fired)}" if self.faults_fired else ""
        stats = " ".join(f"{k}={v}" for k, v in self.stats.items())
        return (f"seed {self.seed}: {self.duration:5.1f}s kills[{kills}]{fired} {stats} -> {bad}"
                + (f" (kept {self.kept})" if self.kept else ""))

    def report(self) -> str:
        out = [self.line(), f"  plan: {self.plan}"]
        for kind, lines in self.violations.items():
            out.extend(f"  {kind}: {line}" for line in lines)
        return "\n".join(out)


class Run:
    """The moving parts of one run: the world, background CLI calls, the fault loop."""

    def __init__(self, plan: Plan, record: RunRecord, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.record = record
        self.log = log
        self.world: World = build_world(plan)
        self.rng = random.Random(plan.seed ^ 0x5EED)
        self.beads: dict[str, str] = {}  # bead id -> plan key
        self.pending = list(plan.kills)
        self.deferred: dict[int, float] = {}  # index in pending -> first try
        self.slings: list[subprocess.Popen[str]] = []
        self.up: subprocess.Popen[str] | None = None
        self.up_interrupted = False  # the supervisor of this `up` was killed while it ran
        self.supervisor_killed = False  # ... and no `up` was started since
        self.out_offsets: dict[Path, int] = {}
        self.duplicates_seen: set[str] = set()
        self.reactions: list[tuple[float, str, str]] = []  # (when, process, point)
        self.orphaned: dict[int, tuple[str, float]] = {}  # role pid -> (role, supervisor killed)
        self.t0 = 0.0

    # -- the CLI in the background ------------------------------------------------------

    def _popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "gastown.supervisor", *args],
                                cwd=self.world.base, env=self.world.cli.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_up(self) -> None:
        self.up = self._popen("up")

    def _reap_up(self) -> None:
        if self.up is not None and self.up.poll() is not None:
            out, err = self.up.communicate()
            if self.up.returncode != 0 and not self.up_interrupted:
                self.record.add("cli", [f"gastown up exited {self.up.returncode}: "
                                        f"{(err or out).strip()[:300]}"])
            if "Traceback" in err:
                self.record.add("traceback", [f"gastown up: {err.strip()[-300:]}"])
            self.up = None
            self.up_interrupted = False

    def _keep_up(self, seen: Census) -> None:
        """Like systemd: a town whose supervisor is gone is started again. A supervisor
        that died without being killed is a violation."""
        if self.up is not None or seen.supervisors:
            return
        if not self.supervisor_killed:
            self.record.add("supervisor_died", [
                f"no supervisor at {time.monotonic() - self.t0:.1f}s, not killed by us"])
        self.supervisor_killed = False
        self.start_up()

    # -- setup ---------------------------------------------------------------------------

    def create_beads(self) -> None:
        cli = self.world.cli

        def create(key: str, script: str) -> tuple[str, str]:
            return cli.ok("bead", "create", f"chaos {key}", "--rig", RIG, "-d",
                          script).strip(), key

        with ThreadPoolExecutor(max_workers=3) as pool:
            for bead, key in pool.map(lambda b: create(b.key, b.script), self.plan.beads):
                self.beads[bead] = key

    def sling_before_up(self) -> None:
        """Slings while the town is down only queue; `up` dispatches them."""
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda bead: self.world.cli.ok("sling", bead, RIG),
                          list(self.beads)[:self.plan.slung_before_up]))

    def sling_after_up(self) -> None:
        for bead in list(self.beads)[self.plan.slung_before_up:]:
            self.slings.append(self._popen("sling", bead, RIG))

    # -- faults --------------------------------------------------------------------------

    def _kill_supervisor(self, seen: Census, why: str) -> bool:
        if not seen.supervisors:
            return False
        kill(seen.supervisors)
        for role, pids in seen.roles.items():
            self.orphaned.update({p: (role, time.monotonic()) for p in pids})
        self.record.kills["supervisor"] += 1
        self.log(f"  kill -9 supervisor {seen.supervisors} ({why})")
        self._wait_gone(seen.supervisors)
        self.supervisor_killed = True
        if self.up is not None:
            self.up_interrupted = True
            try:
                self.up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.record.add("cli", ["gastown up did not end after its supervisor died"])
            self._reap_up()
        self._keep_up(census(self.world))
        return True

    def _wait_gone(self, pids: list[int]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and
                                                  _state(p) not in ("Z", "X", None)
                                                  for p in pids):
            time.sleep(0.02)

    def _kill_target(self, target: str, seen: Census, why: str) -> bool:
        """kill -9 one process of ``target``; False when there is none right now."""
        if target == "supervisor":
            return self._kill_supervisor(seen, why)
        if target in ("agent", "gate"):
            pids = seen.agents if target == "agent" else seen.gates
            if not pids:
                return False
            victim = self.rng.choice(sorted(pids))
            detail = _cmdline(victim)
            if not kill([victim]):
                return False
            self.record.kills[target] += 1
            self.log(f"  kill -9 {target} {victim} {detail[:80]} ({why})")
            return True
        role = "mayor" if target == "mayor" else f"{target}:{RIG}"
        pids = seen.roles.get(role, [])
        if not pids or not kill(pids):
            return False
        self.record.kills[target] += 1
        self.log(f"  kill -9 {role} {pids} ({why})")
        return True

    def _pauses(self) -> list[tuple[str, str]]:
        """Fail points that paused since the last look (``logs/*.out``)."""
        found = []
        for path in sorted((self.world.town / "logs").glob("*.out")):
            offset = self.out_offsets.get(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            self.out_offsets[path] = offset + end
            for match in PAUSE_LINE.finditer(data[:end].decode(errors="replace")):
                found.append((match.group(1), match.group(2)))
        return found

    def _react(self, process: str, point: str) -> None:
        """A fail point paused: kill the paused process (or the supervisor) after the
        fault's delay, during which everything else runs on."""
        fault = next((f for f in self.plan.faults
                      if f.process == process and f.point == point), None)
        self.record.faults_fired.append(f"{process}@{point}")
        delay = fault.delay if fault is not None else 0.0
        self.reactions.append((time.monotonic() + delay, process, point))

    def _due_reactions(self, now: float) -> bool:
        due = [r for r in self.reactions if r[0] <= now]
        self.reactions = [r for r in self.reactions if r[0] > now]
        for _, process, point in due:
            fault = next((f for f in self.plan.faults
                          if f.process == process and f.point == point), None)
            seen = census(self.world)
            if fault is None or fault.reaction == "kill-supervisor":
                self._kill_supervisor(seen, f"while {process} paused at {point}")
                continue
            target = process.partition(":")[0]
            if not self._kill_target(target, seen, f"paused at {point}"):
                self.record.skipped[target] += 1
        return bool(due)

    def _due_kills(self, now: float, settled: bool) -> None:
        """Carry out the kills whose time came (all of them once the town settled)."""
        if not self.pending:
            return
        kill_spec = self.pending[0]
        if now - self.t0 < kill_spec.at and not settled:
            return
        first = self.deferred.setdefault(id(kill_spec), now)
        seen = census(self.world)
        if self._kill_target(kill_spec.target, seen, f"at {now - self.t0:.1f}s"):
            self.pending.pop(0)
        elif settled or now - first > TARGET_WAIT:
            self.record.skipped[kill_spec.target] += 1
            self.pending.pop(0)

    def _duplicates(self, seen: Census) -> None:
        """Two processes acting as one role, or a role outliving its killed supervisor
        by more than :data:`OUTLIVE`."""
        for role, pids in acting_role_processes(self.world, seen).items():
            if len(pids) > 1 and role not in self.duplicates_seen:
                self.duplicates_seen.add(role)
                self.record.add("duplicate_role", [f"{role}: {len(pids)} live processes "
                                                   f"{pids} at {time.monotonic() - self.t0:.1f}s"])
        now = time.monotonic()
        alive = {p for pids in seen.roles.values() for p in pids} | set(seen.supervisors)
        for pid, (what, since) in list(self.orphaned.items()):
            if pid not in alive:
                del self.orphaned[pid]
            elif now - since > OUTLIVE:
                del self.orphaned[pid]
                self.record.add("duplicate_role", [
                    f"{what} (pid {pid}) still alive {now - since:.0f}s after its "
                    "supervisor was killed"])

    # -- convergence ---------------------------------------------------------------------

    def unsettled(self) -> list[str]:
        """What keeps the town from being settled; empty when it is."""
        out = []
        for what, sql in SETTLED_SQL.items():
            rows = store_rows(self.world, sql)
            if rows:
                out.append(f"{what}: {rows}")
        return out

    def _town_up(self, seen: Census) -> bool:
        return len(seen.supervisors) == 1 and all(len(seen.roles.get(r, [])) == 1
                                                  for r in ROLES)

    def drive(self, timeout: float) -> bool:
        """Inject the plan's faults while the town works, until it settles (True) or
        ``timeout`` passes after the last fault (False)."""
        calm_since: float | None = None
        last_fault = time.monotonic()
        next_census = 0.0
        while True:
            now = time.monotonic()
            self._reap_up()
            for process, point in self._pauses():
                self._react(process, point)
            if self._due_reactions(now):
                last_fault = time.monotonic()
            if now >= next_census:
                next_census = now + 0.5
                seen = census(self.world)
                self._duplicates(seen)
                self._keep_up(seen)
            busy = bool(self.unsettled()) or self.up is not None or \
                any(s.poll() is None for s in self.slings)
            before = len(self.pending)
            self._due_kills(now, settled=not busy)
            if len(self.pending) != before:
                last_fault = time.monotonic()
                calm_since = None
                continue
            if not busy and not self.pending and not self.reactions and \
                    self._town_up(census(self.world)):
                if calm_since is None:
                    calm_since = now
                elif now - calm_since >= 1.0:
                    return True
            else:
                calm_since = None
            if now - last_fault > timeout:
                return False
            time.sleep(0.1)

    # -- after ---------------------------------------------------------------------------

    def finish_clis(self) -> None:
        for proc in self.slings:
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.record.add("cli", [f"gastown sling hung: {proc.args!r}"])
                continue
            if "Traceback" in err:
                self.record.add("traceback", [f"gastown sling: {err.strip()[-300:]}"])
        if self.up is not None:
            try:
                self.up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.record.add("cli", ["gastown up hung"])
            self._reap_up()

    def check(self, converged: bool) -> None:
        world = self.world
        if not converged:
            self.record.add("not_converged", self.unsettled() or ["the town is not up"])
        beads = {b["id"]: b for b in json.loads(world.cli.ok("bead", "list", "--json"))}
        polecats = json.loads(world.cli.ok("polecat", "list", "--json"))
        mrs = json.loads(world.cli.ok("mq", "list", "--json"))
        self.record.stats = checks.stats(world, beads)
        for kind, lines in checks.check_work(world, beads, mrs).items():
            self.record.add(kind, lines)
        each_gated = self.plan.batch_size == "1"
        for kind, lines in checks.check_main(world, each_gated=each_gated).items():
            self.record.add(kind, lines)
        if converged:
            self.record.add("stranded_bead", checks.check_beads(beads, polecats, mrs))
        orphans: list[str] = []
        deadline = time.monotonic() + GRACE
        while True:
            seen = census(world)
            self._duplicates(seen)
            orphans = checks.check_orphans(world, polecats, seen)
            if not orphans or time.monotonic() > deadline:
                break
            time.sleep(0.25)
            polecats = json.loads(world.cli.ok("polecat", "list", "--json"))
        self.record.add("orphan", orphans)
        doctor = world.cli("doctor")
        if doctor.code != 0:
            self.record.add("doctor", [f"exit {doctor.code}: "
                                       + " | ".join((doctor.out + doctor.err).splitlines())[:600]])

    def tear_down(self) -> None:
        """``down --all``; whatever of the town survives it is a violation, then killed."""
        world = self.world
        try:
            result = world.cli("down", "--all", timeout=180)
            if result.code != 0:
                self.record.add("cli", [f"gastown down --all exited {result.code}: "
                                        f"{result.err.strip()[:300]}"])
        except (AssertionError, subprocess.TimeoutExpired) as exc:  # a traceback, a hang
            self.record.add("cli", [f"gastown down --all: {str(exc).strip()[-300:]}"])
        deadline = time.monotonic() + GRACE
        while True:
            seen = census(world)
            left = (seen.supervisors + [p for ps in seen.roles.values() for p in ps]
                    + seen.agents + seen.gates)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if left:
            self.record.add("orphan", [f"after down --all: {p} {_cmdline(p)[:120]}"
                                       for p in left])
        kill(left + list(seen.others))
        kill_tmux_server(world)
        pool = sorted(world.pool_dir.iterdir()) if world.pool_dir.is_dir() else []
        if pool:
            self.record.add("orphan", [f"after down --all: pool tree left: {path.name}"
                                       for path in pool])
        self.record.add("traceback", checks.check_tracebacks(world))


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return "(gone)"


def run_once(seed: int, *, keep: bool = False, tmux_fraction: float = 0.0,
             max_kills: int = 5, max_faults: int = 2,
             converge_timeout: float = CONVERGE_TIMEOUT,
             log: Callable[[str], None] = lambda line: None) -> RunRecord:
    """One whole run with ``seed``; never raises for what it finds (see the record)."""
    plan = make_plan(seed, tmux_fraction=tmux_fraction, max_kills=max_kills,
                     max_faults=max_faults)
    record = RunRecord(seed=seed, plan=plan.describe())
    started = time.monotonic()
    log(f"run {plan.describe()}")
    run = Run(plan, record, log)

    def phase(name: str) -> None:
        log(f"  [{time.monotonic() - started:5.1f}s] {name}")

    try:
        try:
            phase("beads")
            run.create_beads()
            run.sling_before_up()
            phase("up")
            run.start_up()
            run.t0 = time.monotonic()
            run.sling_after_up()
            converged = run.drive(converge_timeout)
            phase("settled" if converged else "not settled")
            run.finish_clis()
            run.check(converged)
            phase("checked")
        except Exception as exc:  # a harness or CLI failure is a finding, not a crash
            record.add("cli", [f"{type(exc).__name__}: {str(exc)[:600]}"])
        finally:
            run.tear_down()
            phase("down")
    finally:
        record.duration = time.monotonic() - started
        for target in TARGETS:
            record.kills.setdefault(target, 0)
        if keep and not record.ok:
            record.kept = run.world.base
        else:
            remove_world(run.world)
    return record


def summary(records: list[RunRecord]) -> str:
    """The final figures: runs, kills per target, violations per class."""
    kills: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    for record in records:
        kills.update(record.kills)
        skipped.update(record.skipped)
        for kind, lines in record.violations.items():
            violations[kind] += len(lines)
            failing[kind] += 1
    total = sum(r.duration for r in records)
    lines = [f"runs: {len(records)}, failing: {sum(not r.ok for r in records)}, "
             f"time: {total:.0f}s, kills: {sum(kills.values())}, "
             f"fail points fired: {sum(len(r.faults_fired) for r in records)}",
             "",
             f"{'target':<12}{'kills':>7}{'skipped':>9}"]
    lines += [f"{t:<12}{kills[t]:>7}{skipped[t]:>9}" for t in TARGETS]
    lines += ["", f"{'violation':<20}{'count':>7}{'runs':>6}  seeds"]
    for kind in checks.CLASSES:
        seeds = sorted(r.seed for r in records if kind in r.violations)
        shown = " ".join(map(str, seeds[:12])) + (" ..." if len(seeds) > 12 else "")
        lines.append(f"{kind:<20}{violations[kind]:>7}{failing[kind]:>6}  {shown}")
    return "\n".join(lines)


def as_dict(record: RunRecord) -> dict[str, Any]:
    return {"seed": record.seed, "plan": record.plan, "kills": dict(record.kills),
            "skipped": dict(record.skipped), "faults_fired": record.faults_fired,
            "violations": record.violations, "duration": round(record.duration, 1),
            "stats": record.stats,
            "kept": str(record.kept) if record.kept else None}


def from_dict(data: dict[str, Any]) -> RunRecord:
    """The inverse of :func:`as_dict` (for summaries of a saved long run)."""
    return RunRecord(seed=data["seed"], plan=data["plan"], kills=Counter(data["kills"]),
                     skipped=Counter(data["skipped"]), faults_fired=data["faults_fired"],
                     violations=data["violations"], duration=data["duration"],
                     kept=Path(data["kept"]) if data["kept"] else None,
                     stats=data.get("stats", {}))

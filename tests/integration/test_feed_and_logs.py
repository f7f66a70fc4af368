"""events.jsonl's single writer, the feed reader, and role logs merged and followed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from gastown.roles.adapters.log import RotatingLog
from gastown.supervisor.feed import EventLog, describe_exit, format_event, read_feed
from gastown.supervisor.logview import LogLine, follow, format_line, merged, role_log_files


def event(seq: int, kind: str = "bead_created", **data: object) -> dict[str, object]:
    return {"seq": seq, "ts": 1_700_000_000 + seq, "kind": kind, **data}


def test_event_log_appends_in_order_and_never_repeats(tmp_path: Path) -> None:
    """Events at or below the last written seq are skipped, across reopen."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    assert log.append([event(1), event(2)]) == 2
    log.close()
    log = EventLog(path)
    assert log.last_seq == 2
    assert log.append([event(2), event(3)]) == 1
    log.close()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    """A writer killed mid-line leaves half a line; the next writer removes it and resumes."""
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event(1)) + "\n" + '{"seq": 2, "ts": 1, "ki')
    log = EventLog(path)
    assert log.last_seq == 1
    log.append([event(2)])
    log.close()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2]


def test_read_feed_adds_outbox_rows_not_yet_copied(tmp_path: Path) -> None:
    """The feed is complete while the town is down: file first, then newer outbox rows."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([event(1), event(2)])
    log.close()
    outbox = [event(1), event(2), event(3), event(4)]
    assert [e["seq"] for e in read_feed(path, outbox)] == [1, 2, 3, 4]
    assert [e["seq"] for e in read_feed(tmp_path / "missing.jsonl", outbox)] == [1, 2, 3, 4]


def test_events_read_as_sentences() -> None:
    """Known kinds have a readable template; unknown kinds show their fields."""
    line = format_event(event(1, "role_exited", role="witness:web", last_exit=-9, restarts=0))
    assert "witness:web exited (killed by SIGKILL)" in line
    assert "bead_status_changed" not in format_event(event(2, "bead_status_changed",
                                                           bead="gt-abcde", old="open",
                                                           new="hooked"))
    assert "mystery x=1" in format_event(event(3, "mystery", x=1))
    assert describe_exit(None) == "did not start" and describe_exit(3) == "exit 3"


def _write(log: RotatingLog, ts: str, event_name: str, role: str) -> None:
    log.write_line(json.dumps({"timestamp": ts, "level": "info", "event": event_name,
                               "role": role}))


def test_logs_merge_by_time_across_files_and_rotations(tmp_path: Path) -> None:
    """Lines of several roles, rotated or not, come back in timestamp order."""
    a = RotatingLog(tmp_path / "mayor.log", max_bytes=200, backups=3)
    b = RotatingLog(tmp_path / "witness-web.log", max_bytes=10_000, backups=3)
    for i in range(6):
        _write(a if i % 2 == 0 else b, f"2026-01-01T00:00:0{i}Z", f"e{i}",
               "mayor" if i % 2 == 0 else "witness:web")
    assert (tmp_path / "mayor.log.1").exists()
    lines = merged(role_log_files(tmp_path, None))
    assert [ln.record["event"] for ln in lines] == [f"e{i}" for i in range(6)]
    assert [ln.record["event"] for ln in merged(role_log_files(tmp_path, None), last=2)] == [
        "e4", "e5"]
    only = merged(role_log_files(tmp_path, "witness:web"))
    assert [ln.record["event"] for ln in only] == ["e1", "e3", "e5"]
    assert "witness:web" in format_line(only[0]) and "e1" in format_line(only[0])


def test_follow_survives_rotation(tmp_path: Path) -> None:
    """Following a role log keeps going when the file rotates underneath it."""
    log = RotatingLog(tmp_path / "mayor.log", max_bytes=300, backups=2)
    _write(log, "2026-01-01T00:00:00Z", "before", "mayor")
    stop = threading.Event()
    seen: list[str] = []
    done = threading.Event()
    armed = threading.Event()

    def reader() -> None:
        for line in follow(tmp_path, "mayor", stop):
            assert isinstance(line, LogLine)
            if line.record["event"].startswith("probe"):
                armed.set()
                continue
            seen.append(line.record["event"])
            if len(seen) >= 8:
                done.set()
                stop.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    # Only lines written after the follower opened the log come back: write probes until
    # one does (the follower is armed), then the lines under test.
    for probe in range(60):
        _write(log, "2026-01-01T00:00:00Z", f"probe{probe}", "mayor")
        if armed.wait(0.5):
            break
    assert armed.is_set(), "the follower never returned a line written after it started"
    for i in range(8):
        _write(log, f"2026-01-01T00:00:{i + 1:02d}Z", f"line{i}", "mayor")
    assert done.wait(30), seen
    thread.join(10)
    assert (tmp_path / "mayor.log.1").exists()
    assert seen == [f"line{i}" for i in range(8)]


def test_role_kinds_select_every_rigs_log(tmp_path: Path) -> None:
    """``refinery`` means every rig's refinery (a file that only exists rotated too);
    ``refinery:web`` only that one; the names offered list kinds and the processes seen."""
    from gastown.supervisor.logview import role_log_files, role_names

    for name in ("mayor.log", "refinery-web.log", "refinery-my-rig.log.1", "witness-web.log"):
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in role_log_files(tmp_path, "refinery")] == [
        "refinery-my-rig.log", "refinery-web.log"]
    assert [p.name for p in role_log_files(tmp_path, "refinery:web")] == ["refinery-web.log"]
    assert [p.name for p in role_log_files(tmp_path, "mayor")] == ["mayor.log"]
    names = role_names(tmp_path)
    assert names[:5] == ["mayor", "witness", "refinery", "supervisor", "cli"]
    assert {"refinery:web", "refinery:my-rig", "witness:web"} <= set(names)

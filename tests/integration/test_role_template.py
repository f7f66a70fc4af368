"""The template's end of the role-fork channel, on a real socket pair."""

from __future__ import annotations

import json
import socket

from gastown.supervisor.role_template import RoleTemplate


def test_requests_are_read_whole_lines_at_a_time() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        template = RoleTemplate(ours)
        theirs.sendall(b'{"op": "signal", "pid": 1, "si')
        assert template.read() == []
        theirs.sendall(b'gnal": 15}\n{"op": "spawn", "id": 2}\n')
        assert template.read() == [{"op": "signal", "pid": 1, "signal": 15},
                                   {"op": "spawn", "id": 2}]


def test_a_supervisor_killed_with_reports_unread_is_an_end_not_a_crash() -> None:
    """kill -9 of the supervisor while the template's reports sit unread in its socket
    resets the connection: the template's read says "gone" (it then exits quietly)."""
    ours, theirs = socket.socketpair()
    with ours:
        template = RoleTemplate(ours)
        template.send({"op": "ready"})
        template.send({"op": "exited", "pid": 12, "status": 0})
        theirs.close()  # unread data: the kernel resets the connection
        assert template.read() is None
        template.send({"op": "exited", "pid": 13, "status": 0})  # no error either


def test_messages_are_json_lines() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        RoleTemplate(ours).send({"op": "spawned", "id": 1, "pid": 42})
        assert json.loads(theirs.recv(4096)) == {"op": "spawned", "id": 1, "pid": 42}

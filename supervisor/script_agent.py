"""The ``script`` agent: runs the bead's description as a shell script, commits, done.

Layer: supervisor, the top, beside the command line whose client it is: run as a program
in a polecat's session (the ``script`` preset), imported by nothing.

It is the embedded agent of the demo and the tests: deterministic, fast, and a real
client of the contract every agent follows (work in the worktree, commit, then run
``gastown done``). It reads its bead through ``GASTOWN_TOWN`` and ``GASTOWN_BEAD``. A
script that fails, or changes nothing, escalates instead, unless an earlier session of
the same polecat already committed the bead's work: a session killed (or whose ``done``
was lost with the town) after its commit is respawned into a clean worktree, where the
script's second run changes nothing, and the work is there to hand in.

It is cheap because the test suite and the benchmarks start thousands of these: the
preset runs this file with ``python -I -S`` (no site-packages, no ``runpy``), it imports
only ``os``, ``select``, ``sqlite3`` and ``sys`` (children through ``posix_spawn``, not
``subprocess``, ~12 ms of CPU per import; no ``pathlib``), reads the bead's row with one
SQLite query instead of through the store, and hands ``gastown done`` to the town's CLI
server itself, with the ``gastown`` client's own code (no second interpreter); without a
server, it runs the console script next to this interpreter (no ``runpy`` there either).
``gastown done`` (the real CLI) does everything that writes.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # under ``signal``, without its enums
import os
import select
import sqlite3
import sys

#: Python ignores these; an ignored signal stays ignored across exec (``subprocess``
#: resets them for its children, ``posix_spawn`` is told to).
_RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def _spawn(argv: list[str], env: dict[str, str] | None = None,
           capture: bool = False) -> tuple[int, str, str]:
    """Run ``argv`` (looked up on ``PATH``) to its end: ``(exit status, stdout, stderr)``,
    the output read only with ``capture`` (else inherited)."""
    pipes = (os.pipe(), os.pipe()) if capture else None
    actions = []
    if pipes is not None:
        (out_r, out_w), (err_r, err_w) = pipes
        actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2),
                   (os.POSIX_SPAWN_CLOSE, out_r), (os.POSIX_SPAWN_CLOSE, err_r)]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env,
                              file_actions=actions, setsigdef=_RESET_SIGNALS)
    finally:
        if pipes is not None:
            os.close(out_w)
            os.close(err_w)
    chunks: dict[int, list[bytes]] = {}
    if pipes is not None:
        chunks = {out_r: [], err_r: []}
        poller = select.poll()
        for fd in chunks:
            poller.register(fd, select.POLLIN)
        open_fds = set(chunks)
        while open_fds:
            for fd, _ in poller.poll():
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if pipes is None:
        return code, "", ""
    out, err = (b"".join(chunks[fd]).decode("utf-8", "replace") for fd in (out_r, err_r))
    return code, out, err


def _gastown() -> list[str]:
    """This interpreter's ``gastown`` console script, else ``python -m gastown.supervisor``
    (``-I -S`` would hide the package: the module form runs without them)."""
    script = os.path.join(os.path.dirname(sys.executable), "gastown")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "gastown.supervisor"]


def _done(status: str, reason: str | None = None) -> int:
    words = ["done", "--status", status]
    if reason is not None:
        words += ["--reason", reason]
    code = _done_through_server(words)
    return code if code is not None else _spawn([*_gastown(), *words])[0]


def _done_through_server(words: list[str]) -> int | None:
    """``gastown done`` handed to the town's CLI server from this process, as the
    ``gastown`` client would hand it (:mod:`gastown.supervisor.cli._remote`, standard
    library only): the same command, run by the server with our descriptors, working
    directory and environment, without a second interpreter's start (~10 ms of CPU a
    polecat). None when it cannot be handed over (no server, or this file is not inside
    an importable ``gastown`` package): the caller then runs the console script."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "gastown", "supervisor", "cli", "_remote.py")):
        return None
    sys.path.insert(0, root)
    try:
        from gastown.supervisor.cli._remote import run_remote
    except ImportError:
        return None
    finally:
        sys.path.remove(root)
    sys.stdout.flush()
    return run_remote(words)


def _bead(town: str, bead_id: str) -> tuple[str, str, str | None]:
    """The bead's title and description, and its rig's default branch (the store's
    schema, ``beads`` and ``rigs`` tables); a plain connection (``mode=ro`` cannot open a
    WAL database whose ``-shm`` file is missing)."""
    conn = sqlite3.connect(os.path.join(town, "state.db"), timeout=30)
    try:
        row = conn.execute("SELECT b.title, b.description, r.default_branch FROM beads b"
                           " LEFT JOIN rigs r ON r.name = b.rig WHERE b.id = ?",
                           (bead_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise SystemExit(f"[script agent] no bead {bead_id} in {town}")
    return str(row[0]), str(row[1] or ""), (str(row[2]) if row[2] else None)


_GIT_ENV = dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0")


def _git(*args: str) -> tuple[int, str, str]:
    return _spawn(["git", *args], env=_GIT_ENV, capture=True)


def _commit_all(message: str) -> bool | str:
    """Stage everything and commit: True, False when nothing changed, or git's error.

    Two commands: ``commit`` itself says when there is nothing to commit (exit 1 and
    "nothing to commit" on stdout, in the C locale), no ``status`` needed to ask first."""
    for args in (("add", "-A"), ("commit", "--quiet", "-m", message)):
        code, out, err = _git(*args)
        if code == 1 and args[0] == "commit" and "nothing to commit" in out:
            return False
        if code != 0:
            tail = " ".join(err.strip().splitlines()[-2:]) or "no error output"
            return f"git {args[0]} failed for {os.getcwd()}: {tail}"
    return True


def _committed_earlier(bead_id: str, default_branch: str | None) -> bool:
    """Whether the branch already holds a commit of this bead's script (its subject starts
    with the bead's id) that the default branch does not: an earlier session's work."""
    if default_branch is None:
        return False
    code, out, _ = _git("log", "--format=%s", f"{default_branch}..HEAD")
    return code == 0 and any(subject.startswith(f"{bead_id}:")
                             for subject in out.splitlines())


def main() -> int:
    town = os.environ["GASTOWN_TOWN"]
    bead_id = os.environ["GASTOWN_BEAD"]
    title, description, default_branch = _bead(town, bead_id)
    print(f"[script agent] {bead_id}: {title}", flush=True)
    code = _spawn(["sh", "-ec", description or "true"])[0]
    if code != 0:
        print(f"[script agent] script failed with exit {code}; escalating", flush=True)
        return _done("escalated", f"the script failed with exit {code}")
    committed = _commit_all(f"{bead_id}: {title}")
    if isinstance(committed, str):
        print(f"[script agent] commit failed: {committed}; escalating", flush=True)
        return _done("escalated", f"commit failed: {committed}")
    if not committed and _committed_earlier(bead_id, default_branch):
        print("[script agent] the work was committed by an earlier session; done", flush=True)
        return _done("completed")
    if not committed:
        print("[script agent] the script changed nothing; escalating", flush=True)
        return _done("escalated", "the script changed nothing")
    return _done("completed")


if __name__ == "__main__":
    raise SystemExit(main())

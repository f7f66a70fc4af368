"""Reading and typing into a live agent's tmux pane: answer start-up dialogs, type a nudge.

The I/O half of :mod:`gastown.roles.core.agent_screen` (which decides what a screen shows).
Everything here is synchronous and bounded: a few tmux round trips per poll, each limited
by :data:`~gastown.roles.adapters.tmux.COMMAND_TIMEOUT`, and every wait by the caller's
``timeout``. Roles call it through ``trio.to_thread.run_sync``.

Layer: a roles adapter, above :mod:`.tmux` (which runs every tmux command) and
:mod:`.sessions`.

A screen is inherently polled (tmux has no "screen changed" event we could wait on), every
:data:`POLL_INTERVAL` seconds. Nothing presses a key at a screen it does not recognise:
Claude's API-key dialog defaults to "No", so a blind Enter would reject the key and every
later request would fail ("Not logged in").

The pane is found by the agent's pid among the session's panes (``SessionInfo.pid`` is the
pane's process), so a newer session that reuses the name is never typed into.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from ..core.agent_screen import Screen, read_screen, tail, terminal_text
from .log import get_logger
from .sessions import SessionInfo
from .tmux import SessionError
from .tmux import run_tmux as _run_tmux
from .tmux import tmux_binary as _tmux_binary

log = get_logger()

#: How often a screen is captured while waiting for it to change.
POLL_INTERVAL: Final = 0.2

#: ``ready`` must hold this long before a start counts as done: no rule depends on it,
#: but a transient frame drawn just before a dialog (Codex draws its splash, with an
#: input line, ~0.2 s before its trust dialog) must not end the wait.
READY_SETTLE: Final = 0.5

#: A dialog whose screen has not changed at all this long after its keys were sent did
#: not get them (seen under load: Codex's trust dialog still shown two minutes after its
#: Enter): they are sent again, in all at most ``DIALOG_SENDS`` times.
DIALOG_RESEND: Final = 8.0
DIALOG_SENDS: Final = 3

#: How long typed text may take to show (and hold still) on the input line before Enter.
ECHO_WAIT: Final = 3.0

#: How long one Enter gets to take effect (the screen turns busy, or the input line is
#: empty again), and how many Enters are pressed in all. Codex ignored the first Enter
#: after a few hundred characters typed at once (even 2 s later); a second submitted.
#: An extra Enter is harmless: both CLIs ignore Enter on an empty input line.
SUBMIT_WAIT: Final = 2.0
SUBMIT_TRIES: Final = 3

#: tmux send-keys -l is given the text in pieces of this many characters.
CHUNK: Final = 512

OutcomeKind = Literal["ready", "busy", "unknown", "exited"]


class PaneGoneError(SessionError):
    """The session's pane is gone: the agent exited (or the session was killed)."""


class KeysRefusedError(SessionError):
    """tmux refused to send keys (e.g. a human put the pane in a mode just then)."""


@dataclass(frozen=True)
class StartOutcome:
    """How :func:`answer_dialogs` ended.

    ``kind``: ``ready``/``busy`` (the agent got past its start), ``exited`` (its pane is
    gone), ``unknown`` (timeout on a screen we do not recognise, a dialog that stayed, or a
    recognised failure). ``problem`` says why, for ``unknown`` and, when its last screen
    or output was a recognised failure, for ``exited``. ``dialogs`` are the dialogs
    answered, in order; ``tail`` the last lines of the last screen seen (or, once the
    pane is gone, of what the agent printed last).
    """

    kind: OutcomeKind
    dialogs: tuple[str, ...] = ()
    tail: str = ""
    problem: str | None = None
    elapsed: float = 0.0


@dataclass(frozen=True)
class _Pane:
    pane_id: str
    in_mode: bool


@dataclass
class _Locks:
    guard: threading.Lock = field(default_factory=threading.Lock)
    by_session: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)

    def of(self, info: SessionInfo) -> threading.Lock:
        with self.guard:
            return self.by_session.setdefault((info.tmux_socket or "", info.name),
                                              threading.Lock())


#: One typist per session in this process: two nudges typed at once would interleave.
_LOCKS: Final = _Locks()


def capture(info: SessionInfo) -> str:
    """The visible text of the agent's pane (``capture-pane -p``: no colours, no history).

    Raises:
        PaneGoneError: the pane (or the whole tmux server) is gone.
        SessionError: not a tmux session; tmux failed or hung.
    """
    return _capture(_tmux_binary(), info, _pane(info))


def answer_dialogs(info: SessionInfo, kind: str, timeout: float, *,
                   resend: float = DIALOG_RESEND) -> StartOutcome:
    """Watch a starting agent until it is ready or busy, answering known dialogs on the way.

    Each recognised dialog gets its keys once per appearance (an appearance ends when
    another screen is seen); a dialog still shown after that is left alone, because a
    late key would land on the *next* dialog (a stray Enter at Claude's API-key dialog
    rejects the key), unless its screen stays exactly as it was when the keys went for
    ``resend`` seconds (by default :data:`DIALOG_RESEND`): then they were lost, and are
    sent again (at most :data:`DIALOG_SENDS` times). ``ready`` must hold
    :data:`READY_SETTLE` seconds; ``busy`` ends the wait at once. Returns ``exited`` as
    soon as the pane is gone, ``unknown`` at a recognised failure (``problem``) or when
    ``timeout`` passes.

    Raises:
        SessionError: not a tmux session; tmux hung.
    """
    tmux = _tmux_binary()
    started = time.monotonic()
    deadline = started + timeout
    answered: list[str] = []
    shown: str | None = None  # the dialog of the current appearance, once answered
    sent: tuple[str, float, int] = ("", 0.0, 0)  # its screen then, when, how many times
    since: tuple[str, float] | None = None  # a final-looking screen, and since when
    problem: str | None = None
    text = ""

    def outcome(kind_: OutcomeKind, problem: str | None = None) -> StartOutcome:
        result = StartOutcome(kind_, tuple(answered), tail(text), problem,
                              time.monotonic() - started)
        log.info("agent_start_watched", session=info.name, agent=kind, outcome=kind_,
                 dialogs=list(answered), problem=problem,
                 elapsed=round(result.elapsed, 2))
        return result

    while True:
        try:
            text = _capture(tmux, info, _pane(info))
        except PaneGoneError:
            # What it printed last may never have been on a screen we captured (Claude
            # shows its offline-onboarding error ~0.1 s before exiting): read its log.
            printed = _log_tail(info)
            if printed.strip():
                text = printed
                problem = problem or read_screen(printed, kind).problem
            return outcome("exited", problem)
        screen = read_screen(text, kind)
        now = time.monotonic()
        problem = screen.problem
        if screen.state == "busy" and problem is None:
            return outcome("busy")
        # A ready screen, or a recognised failure, must hold READY_SETTLE seconds.
        final = "problem" if problem is not None else screen.state
        if final in ("ready", "problem"):
            if since is None or since[0] != final:
                since = (final, now)
            elif now - since[1] >= READY_SETTLE:
                return outcome("ready") if problem is None else outcome("unknown", problem)
        else:
            since = None
        if screen.state == "dialog" and screen.dialog is not None:
            lost = (shown == screen.dialog.name and text == sent[0]
                    and now - sent[1] >= resend and sent[2] < DIALOG_SENDS)
            if shown != screen.dialog.name or lost:
                try:
                    _send_keys(tmux, info, *screen.dialog.keys)
                except KeysRefusedError as exc:  # not sent: tried again at the next poll
                    log.warning("agent_dialog_keys_refused", session=info.name,
                                dialog=screen.dialog.name, error=str(exc))
                else:
                    sent = (text, now, sent[2] + 1 if lost else 1)
                    if not lost:
                        shown = screen.dialog.name
                        answered.append(shown)
                    log.info("agent_dialog_answered", session=info.name, agent=kind,
                             dialog=shown, keys=list(screen.dialog.keys), sends=sent[2])
            elif text != sent[0]:
                sent = (text, now, sent[2])  # it changes: the keys may be working
        else:
            shown = None
        if now >= deadline:
            stuck = f"still at dialog {shown}" if shown else f"screen {screen.state}"
            return outcome("unknown", problem or f"not ready after {timeout:g}s ({stuck})")
        time.sleep(POLL_INTERVAL)


def type_text(info: SessionInfo, kind: str, text: str, timeout: float) -> bool:
    """Type ``text`` into the agent's input line and submit it; whether it was submitted.

    Waits (up to ``timeout``) until the screen is ``ready`` on two polls in a row, leaving
    copy mode if a human left the pane in it; types the sanitised text (control characters
    dropped, line breaks and tabs as spaces: only an Enter key submits, an LF would only
    add a line in Claude's input), waits for it to show and hold still, presses Enter,
    and checks that it was taken (the screen turns busy, or the input line is empty
    again), pressing Enter again at most twice. Typing and checking add at most ~10 s to
    ``timeout``.

    Returns False, never raises, when the agent is not ready in time, its session is gone
    or tmux refuses the keys (a human put the pane in copy mode just then).

    Raises:
        ValueError: nothing left to type after sanitising.
        SessionError: not a tmux session; tmux hung.
    """
    clean = sanitize(text)
    if not clean:
        raise ValueError("nothing to type")
    tmux = _tmux_binary()
    with _LOCKS.of(info):
        try:
            before = _wait_ready(tmux, info, kind, timeout)
            if before is None:
                log.warning("agent_nudge_not_ready", session=info.name, agent=kind,
                            timeout=timeout)
                return False
            if before.input_text:
                log.warning("agent_input_not_empty", session=info.name, agent=kind,
                            input=before.input_text[:80])
            for start in range(0, len(clean), CHUNK):
                _run_checked(tmux, info, "send-keys", "-t", _pane(info).pane_id, "-l", "--",
                             clean[start:start + CHUNK])
            _wait_echo(tmux, info, kind, before.input_text or "")
            for attempt in range(1, SUBMIT_TRIES + 1):
                _send_keys(tmux, info, "Enter")
                if _wait_for(tmux, info, kind, SUBMIT_WAIT, _submitted) is not None:
                    log.info("agent_nudged", session=info.name, agent=kind,
                             enters=attempt, chars=len(clean))
                    return True
        except PaneGoneError:
            log.warning("agent_nudge_session_gone", session=info.name, agent=kind)
            return False
        except KeysRefusedError as exc:
            log.warning("agent_nudge_keys_refused", session=info.name, agent=kind,
                        error=str(exc))
            return False
        log.warning("agent_nudge_not_submitted", session=info.name, agent=kind,
                    enters=SUBMIT_TRIES)
        return False


def sanitize(text: str) -> str:
    """``text`` as it may be typed: CR, LF, TAB → space; other control characters dropped."""
    spaced = text.replace("\r\n", " ").translate({ord(c): " " for c in "\r\n\t"})
    return "".join(c for c in spaced
                   if not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)).strip()


# --- helpers -------------------------------------------------------------------------------


def _submitted(screen: Screen) -> bool:
    """Busy, or back at an empty input line (a fast turn may be over by the next poll).

    Not "our text left the input line": Codex shows a long paste as ``[Pasted Content
    1024 chars]``, which does not hold the text either, and may still swallow an Enter
    into the paste.
    """
    return screen.state == "busy" or (screen.state == "ready" and screen.input_text == "")


def _wait_echo(tmux: str, info: SessionInfo, kind: str, before: str) -> None:
    """Wait (up to :data:`ECHO_WAIT`) until typed text shows and the input line holds still.

    An Enter pressed while the CLI still takes the text in is typed into it: Codex
    treats fast input as a paste and adds an Enter that comes during it as a newline.
    """
    deadline = time.monotonic() + ECHO_WAIT
    previous: str | None = None
    while True:
        screen = read_screen(_capture(tmux, info, _pane(info)), kind)
        current = screen.input_text
        if current and current != before and current == previous:
            return
        previous = current
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL_INTERVAL)


def _wait_ready(tmux: str, info: SessionInfo, kind: str, timeout: float) -> Screen | None:
    """The first ``ready`` screen seen on two polls in a row within ``timeout``, or None."""
    deadline = time.monotonic() + timeout
    previous: Screen | None = None
    while True:
        pane = _pane(info)
        if pane.in_mode:  # copy mode shows (and keeps) a scrolled view; leave it
            _run_tmux(tmux, _socket(info), "send-keys", "-t", pane.pane_id, "-X", "cancel")
            pane = _pane(info)
        screen = read_screen(_capture(tmux, info, pane), kind)
        if (screen.state == "ready" and screen.problem is None and previous is not None
                and previous.state == "ready"):
            return screen
        previous = screen
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def _wait_for(tmux: str, info: SessionInfo, kind: str, timeout: float,
              predicate: Callable[[Screen], bool]) -> Screen | None:
    deadline = time.monotonic() + timeout
    while True:
        screen = read_screen(_capture(tmux, info, _pane(info)), kind)
        if predicate(screen):
            return screen
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def _log_tail(info: SessionInfo, size: int = 16384) -> str:
    """The readable end of the session's log (its pane's output), or "" when unreadable."""
    try:
        with open(info.log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            raw = f.read()
    except OSError:
        return ""
    return terminal_text(raw.decode("utf-8", errors="replace"))


def _socket(info: SessionInfo) -> str:
    if info.backend != "tmux" or info.tmux_socket is None:
        raise SessionError(f"session {info.name} is not a tmux session")
    return info.tmux_socket


def _pane(info: SessionInfo) -> _Pane:
    """The agent's pane: the one whose process is ``info.pid``."""
    tmux = _tmux_binary()
    result = _run_tmux(tmux, _socket(info), "list-panes", "-s", "-t", f"={info.name}", "-F",
                       "#{pane_id} #{pane_pid} #{pane_dead} #{pane_in_mode}")
    if result.returncode == 0:
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[1] == str(info.pid):
                if fields[2] == "1":
                    break
                return _Pane(fields[0], in_mode=fields[3] != "0")
    raise PaneGoneError(f"session {info.name} has no pane of pid {info.pid}")


def _capture(tmux: str, info: SessionInfo, pane: _Pane) -> str:
    result = _run_tmux(tmux, _socket(info), "capture-pane", "-p", "-t", pane.pane_id)
    if result.returncode != 0:
        _pane(info)  # raises PaneGoneError when that is why
        raise SessionError(f"tmux capture-pane failed for {info.name}: "
                           f"{result.stderr.strip()}")
    return result.stdout


def _send_keys(tmux: str, info: SessionInfo, *keys: str) -> None:
    _run_checked(tmux, info, "send-keys", "-t", _pane(info).pane_id, *keys)


def _run_checked(tmux: str, info: SessionInfo, *args: str) -> None:
    result = _run_tmux(tmux, _socket(info), *args)
    if result.returncode != 0:
        _pane(info)
        raise KeysRefusedError(f"tmux {args[0]} failed for {info.name}: "
                               f"{result.stderr.strip()}")

"""The command-line grammar. Handlers are named as ``"_module:function"`` strings (a
module of this package) and imported only when their command runs.

Layer: cli, used by :func:`gastown.supervisor.cli.main` only.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from functools import cache
from typing import cast

from .. import __version__

Handler = Callable[[argparse.Namespace], int]


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"priority must be 0-4, not {text!r}") from None
    if not 0 <= value <= 4:
        raise argparse.ArgumentTypeError(f"priority must be 0-4, not {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gastown: <message>`` and exit 2, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gastown: {message} (see '{self.prog} --help')\n")


def _command(sub: argparse._SubParsersAction[_Parser], name: str, handler: str,
             help_text: str) -> _Parser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def _group(sub: argparse._SubParsersAction[_Parser], name: str, help_text: str,
           description: str) -> argparse._SubParsersAction[_Parser]:
    """A command with sub-commands (``rig add``...); alone it prints its own help."""
    parser = sub.add_parser(name, help=help_text, description=description)
    parser.set_defaults(handler=None, help_parser=parser)
    return parser.add_subparsers(title=f"{name} commands", metavar="COMMAND",
                                 parser_class=_Parser)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


@cache
def build_parser() -> _Parser:
    """The whole command line's parser; built once per process (the CLI server builds it
    before it forks, so that no command pays for it)."""
    parser = _Parser(
        prog="gastown",
        description="Run many AI coding agents on one repository: each in its own git "
                    "worktree, merged through a queue, cleaned up after.",
    )
    parser.add_argument("--version", action="version", version=f"gastown {__version__}")
    parser.add_argument("--town", metavar="PATH",
                        help="the town to act on (default: $GASTOWN_TOWN, else the "
                             "town.toml above the current directory)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show log lines on stderr")
    parser.set_defaults(handler=None, help_parser=parser)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    p = _command(sub, "install", "_town:cmd_install", "create a town (idempotent)")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="where (default: $GASTOWN_TOWN, else ~/gt)")

    rig_sub = _group(sub, "rig", "add, list and remove rigs (projects)",
                     "Rigs: the repositories of this town.")
    p = _command(rig_sub, "add", "_town:cmd_rig_add", "clone a repository into the town as a rig")
    p.add_argument("name", metavar="NAME")
    p.add_argument("repo", metavar="REPO", help="URL or local path of the repository")
    p.add_argument("--branch", metavar="B", help="default branch (default: the remote's HEAD)")
    p.add_argument("--prefix", metavar="P", help="bead id prefix, 2-4 lowercase letters")
    p.add_argument("--push-to-checkout", action="store_true",
                   help="REPO is a local working copy with the branch checked out: let "
                        "pushes update that checkout when it is clean (sets "
                        "receive.denyCurrentBranch=updateInstead there)")
    p.add_argument("--check", action="store_true",
                   help="then run the rig's gates on its default branch (as 'mq check')")
    p = _command(rig_sub, "list", "_town:cmd_rig_list", "list the town's rigs")
    _json_flag(p)
    p = _command(rig_sub, "remove", "_town:cmd_rig_remove", "remove a rig and its folder")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true",
                   help="even with live polecats or crew workspaces (their work is lost)")

    bead_sub = _group(sub, "bead", "create, list and show beads (work items)",
                      "Beads: the town's work items.")
    p = _command(bead_sub, "create", "_beads:cmd_create", "create a bead; prints its id")
    p.add_argument("title", metavar="TITLE")
    p.add_argument("--rig", metavar="R", help="the rig it belongs to (sets the id prefix)")
    p.add_argument("-d", "--description", metavar="TEXT", default="",
                   help="what to do (for the script agent: the shell script to run)")
    p.add_argument("-p", "--priority", metavar="0-4", type=_priority, default=2,
                   help="0 is most urgent (default 2)")
    p.add_argument("--needs", metavar="ID[,ID]", action="append", default=[],
                   help="beads that must be closed (merged) before this one is dispatched")
    dep_sub = _group(bead_sub, "dep", "a bead's needs: beads closed before it is dispatched",
                     "Dependencies: a bead that needs others waits until they are closed.")
    p = _command(dep_sub, "add", "_beads:cmd_dep_add",
                 "ID needs NEEDED: ID's slings wait until NEEDED is closed")
    p.add_argument("id", metavar="ID")
    p.add_argument("need", metavar="NEEDED")
    p = _command(dep_sub, "remove", "_beads:cmd_dep_remove", "ID no longer needs NEEDED")
    p.add_argument("id", metavar="ID")
    p.add_argument("need", metavar="NEEDED")
    p = _command(dep_sub, "list", "_beads:cmd_dep_list",
                 "every need: bead, needed bead, its status, and whether the bead waits")
    _json_flag(p)
    p = _command(bead_sub, "list", "_beads:cmd_list", "list beads")
    p.add_argument("--rig", metavar="R", help="only this rig's beads")
    p.add_argument("--status", metavar="S",
                   help="only these statuses, comma-separated "
                        "(open, hooked, in_review, closed, blocked; waiting: needs not closed)")
    _json_flag(p)
    p = _command(bead_sub, "show", "_beads:cmd_show",
                 "show one bead: why it is where it is, its polecats (state, reason, output "
                 "tail), merge requests (gate log, failing tail), queued slings")
    p.add_argument("id", metavar="ID")
    _json_flag(p)
    p = _command(bead_sub, "update", "_beads:cmd_update",
                 "edit a bead's title, description, priority, or status (open/blocked)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--title", metavar="T")
    p.add_argument("-d", "--description", metavar="TEXT")
    p.add_argument("-p", "--priority", metavar="0-4", type=_priority)
    p.add_argument("--status", choices=["open", "blocked"])
    p = _command(bead_sub, "close", "_beads:cmd_close",
                 "close a bead by hand (refuses one with live work unless --force)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT", help="why (shown by bead show and the feed)")
    p.add_argument("--commit", metavar="SHA",
                   help="its work landed by another route as this commit (must be on the "
                        "rig's default branch)")
    p.add_argument("--force", action="store_true",
                   help="cancel its queued slings and merge requests and stop its polecats' "
                        "agents; worktrees and branches are kept (polecats escalated)")
    p = _command(bead_sub, "reopen", "_beads:cmd_reopen", "reopen a closed (or blocked) bead")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT", help="why (shown by bead show and the feed)")

    p = _command(sub, "up", "_lifecycle:cmd_up",
                 "start the town (supervisor, mayor, a witness and a refinery per rig)")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached (for systemd and debugging) instead of daemonizing")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for every role to report ready (default 60)")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--start-lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    p = _command(sub, "down", "_lifecycle:cmd_down",
                 "stop the roles, then the supervisor (agent sessions keep running)")
    p.add_argument("--all", action="store_true",
                   help="also stop every polecat's agent session (worktrees are kept)")
    p = _command(sub, "reload", "_lifecycle:cmd_reload",
                 "re-read town.toml and every rig.toml; restart only the roles they concern "
                 "(also: SIGHUP to the supervisor, systemctl reload)")
    p = _command(sub, "status", "_lifecycle:cmd_status",
                 "the supervisor, each role, the rigs, polecats, the merge queue and recent "
                 "failures")
    _json_flag(p)
    p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None,
                   metavar="SECONDS", help="refresh in place every SECONDS (default 2)")
    p = _command(sub, "logs", "_observe:cmd_logs", "the role log files merged by time")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--role", metavar="ROLE", help="only this role (e.g. witness:web)")
    p.add_argument("-n", type=int, default=50, metavar="N",
                   help="start with the last N lines (default 50; 0 for all)")
    _json_flag(p)
    p = _command(sub, "feed", "_observe:cmd_feed",
                 "the domain events: beads, polecats, merges, roles")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--since", metavar="DURATION", help="only events newer than this (10m, 2h)")
    _json_flag(p)

    p = _command(sub, "sling", "_polecats:cmd_sling",
                 "give beads to a rig: a new polecat each (worktree, branch, agent "
                 "session); prints each one's name and worktree, or its queue position")
    p.add_argument("beads", metavar="BEAD", nargs="*",
                   help="one or more beads, queued in this order (all of them or none)")
    p.add_argument("rig", metavar="RIG")
    p.add_argument("--convoy", metavar="C",
                   help="instead of BEADs: every open bead of convoy C without a sling")
    p.add_argument("--agent", metavar="PRESET",
                   help="claude, codex, script, or an [agents.NAME] of town.toml")
    p.add_argument("--force", action="store_true", help="sling a bead that is already hooked")

    convoy_sub = _group(sub, "convoy", "group beads (over rigs) and follow them as one",
                        "Convoys: beads followed as one piece of work; landed when every "
                        "bead is merged, stuck when one is blocked or rejected.")
    p = _command(convoy_sub, "create", "_convoys:cmd_create",
                 "create a convoy of beads; prints its id")
    p.add_argument("title", metavar="TITLE")
    p.add_argument("beads", metavar="BEAD", nargs="*")
    p.add_argument("--rig", metavar="R", help="where 'convoy sling' sends beads without a rig")
    for name, verb in (("add", "add beads to"), ("remove", "take beads out of")):
        p = _command(convoy_sub, name, f"_convoys:cmd_{name}", f"{verb} a convoy")
        p.add_argument("convoy", metavar="C")
        p.add_argument("beads", metavar="BEAD", nargs="+")
    p = _command(convoy_sub, "list", "_convoys:cmd_list", "the convoys: state and progress")
    _json_flag(p)
    p = _command(convoy_sub, "show", "_convoys:cmd_show",
                 "a convoy's beads: state, merge request, merged commit")
    p.add_argument("convoy", metavar="C")
    _json_flag(p)
    p = _command(convoy_sub, "sling", "_convoys:cmd_sling",
                 "queue a sling for every open bead of the convoy that has none (to its "
                 "rig, else the convoy's)")
    p.add_argument("convoy", metavar="C")
    p.add_argument("--agent", metavar="PRESET",
                   help="claude, codex, script, or an [agents.NAME] of town.toml")
    p = _command(sub, "done", "_polecats:cmd_done",
                 "inside a polecat worktree or a crew workspace: the work is ready "
                 "(records a merge request)")
    p.add_argument("--status", choices=["completed", "escalated", "deferred"],
                   default="completed", help="completed (default): merge it; escalated: "
                   "needs a human; deferred: hand the bead back unfinished")
    p.add_argument("--reason", metavar="TEXT",
                   help="why (kept on the bead and the polecat, shown by polecat list)")
    p.add_argument("--bead", metavar="ID",
                   help="in a crew workspace: the bead this work is for (default: a new one)")
    p = _command(sub, "prime", "_polecats:cmd_prime",
                 "inside a polecat worktree: print its context for the agent (bead, worktree, "
                 "branch, rules, commits and uncommitted files); for a compacted or resumed "
                 "conversation")
    _json_flag(p)
    p = _command(sub, "nudge", "_agents:cmd_nudge",
                 "tell a polecat's agent something: typed at its prompt (tmux), or a resumed "
                 "turn (process backend)")
    p.add_argument("target", metavar="RIG/NAME")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the agent's input prompt (default 60)")
    p = _command(sub, "agent-hook", "_agents:cmd_agent_hook",
                 "run by an agent CLI's own hook (Claude's Stop, Codex's notify) inside a "
                 "polecat: its turn ended")
    p.add_argument("event", choices=["claude-stop", "codex-notify"])
    p.add_argument("payload", nargs="?", metavar="JSON",
                   help="the hook's JSON (Codex passes it here; Claude on stdin)")
    polecat_sub = _group(sub, "polecat", "list and nuke polecats",
                         "Polecats: agents in their own worktrees.")
    p = _command(polecat_sub, "list", "_polecats:cmd_polecat_list",
                 "the polecats: bead, branch, state, session alive, age")
    p.add_argument("rig", nargs="?", metavar="RIG")
    _json_flag(p)
    p = _command(polecat_sub, "nuke", "_polecats:cmd_polecat_nuke",
                 "stop the session, remove the worktree and branch, release the name")
    p.add_argument("target", metavar="RIG/NAME")
    p.add_argument("--force", action="store_true",
                   help="even with uncommitted or unmerged work (it is lost)")
    p = _command(sub, "attach", "_polecats:cmd_attach",
                 "attach to a polecat's agent session (tmux), or follow its output")
    p.add_argument("target", metavar="RIG/NAME")

    mq_sub = _group(sub, "mq", "the merge queue",
                    "The refineries' queues.")
    p = _command(mq_sub, "list", "_mq:cmd_mq_list",
                 "queued and running merge requests (with the gate running), then recent "
                 "merges and rejections")
    p.add_argument("rig", nargs="?", metavar="RIG")
    _json_flag(p)
    p = _command(mq_sub, "show", "_mq:cmd_mq_show",
                 "one merge request: state, steps with timings, gate output tail, log path")
    p.add_argument("id", metavar="MR")
    _json_flag(p)
    p = _command(mq_sub, "check", "_mq:cmd_mq_check",
                 "run the rig's gates on its default branch in a scratch worktree; exit 1 "
                 "if one fails")
    p.add_argument("rig", metavar="RIG")
    _json_flag(p)
    p = _command(mq_sub, "resume", "_town:cmd_mq_resume",
                 "have the rig's refinery check the remote again: resume a paused queue, "
                 "push merged work the remote refused before")
    p.add_argument("rig", metavar="RIG")

    crew_sub = _group(sub, "crew", "human workspaces in a rig (worktrees on crew/NAME)",
                      "Crew: long-lived workspaces at <rig>/crew/<name>.")
    p = _command(crew_sub, "add", "_crew:cmd_crew_add",
                 "create a crew workspace on its own branch crew/NAME")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--rig", metavar="R", required=True)
    p.add_argument("--setup", action="store_true",
                   help="run the rig's [polecats.setup] (files, command) in it")
    p = _command(crew_sub, "list", "_crew:cmd_crew_list",
                 "list crew workspaces with their state (clean / N uncommitted)")
    p.add_argument("--rig", metavar="R", help="only this rig's crew")
    _json_flag(p)
    p = _command(crew_sub, "remove", "_crew:cmd_crew_remove",
                 "remove a crew workspace (refuses uncommitted or unmerged work)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--rig", metavar="R", required=True)
    p.add_argument("--force", action="store_true", help="even with uncommitted or unmerged work")

    p = _command(sub, "worktree", "_crew:cmd_worktree",
                 "cross-rig worktrees for the crew workspace you are in: "
                 "'worktree RIG' creates (or prints) one, 'worktree list', "
                 "'worktree remove RIG [--force]'")
    p.add_argument("words", nargs="+", metavar="RIG | list | remove RIG")
    p.add_argument("--force", action="store_true", help="remove even with uncommitted work")
    _json_flag(p)

    p = _command(sub, "doctor", "_doctor:cmd_doctor",
                 "find orphaned worktrees, branches and sessions, stale polecat rows, "
                 "landed merge requests; --fix repairs them (never deleting unmerged work)")
    p.add_argument("--fix", action="store_true",
                   help="repair what is safe to repair; work that has not landed is kept")
    p.add_argument("--rig", metavar="R", help="only this rig")
    p.add_argument("--new-store", action="store_true",
                   help="with --fix, town down: start an empty store where the town's is "
                        "missing (restore a backup instead if you have one)")
    p.add_argument("--adopt-store", action="store_true",
                   help="with --fix, town down: make the file now at state.db the town's "
                        "store")
    _json_flag(p)

    svc_sub = _group(sub, "service", "install or remove a systemd unit for this town",
                     "A systemd unit (gastown-<town folder>.service) that "
                                     "runs this town's supervisor.")
    for name, handler, help_text in (
            ("install", "cmd_install", "write the unit and reload systemd (enables nothing; "
                                       "prints the commands to run next)"),
            ("uninstall", "cmd_uninstall", "remove the unit and its enablement links, "
                                           "reload systemd (a running service keeps running)")):
        p = _command(svc_sub, name, f"_service:{handler}", help_text)
        p.set_defaults(mode="user")
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--user", dest="mode", action="store_const", const="user",
                           help="a unit of your user's systemd (default)")
        scope.add_argument("--system", dest="mode", action="store_const", const="system",
                           help="a system unit in /etc/systemd/system running as you (root)")
        if name == "install":
            p.add_argument("--dry-run", action="store_true",
                           help="print the unit and where it would go; write nothing")

    config_sub = _group(sub, "config", "show the effective configuration",
                        "The configuration in force.")
    p = _command(config_sub, "show", "_town:cmd_config_show",
                 "print the town's (or a rig's) configuration with defaults filled in")
    p.add_argument("--rig", metavar="R", help="show this rig's configuration instead")
    _json_flag(p)
    return parser


def run_handler(args: argparse.Namespace) -> int:
    module_name, _, function = cast(str, args.handler).partition(":")
    module = importlib.import_module(f".{module_name}", __package__)
    handler = cast(Handler, getattr(module, function))
    return handler(args)

"""What the ``gastown`` command line is: every command, its handler and its arguments, as
data. :mod:`._parser` turns it into argparse parsers.

Arguments that several commands take (``--json``, a polecat's ``RIG/NAME``, ``--agent``)
are declared once below and shared, so that their spelling and help cannot drift apart.
Handlers are named as ``"_module:function"`` strings (a module of this package), imported
only when their command runs.

Layer: cli, read by :mod:`._parser` only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any


def priority(text: str) -> int:
    """A bead priority, 0 (most urgent) to 4."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"priority must be 0-4, not {text!r}") from None
    if not 0 <= value <= 4:
        raise argparse.ArgumentTypeError(f"priority must be 0-4, not {value}")
    return value


@dataclass(frozen=True)
class Arg:
    """One argument: ``add_argument``'s names and keywords."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class OneOf:
    """Arguments that exclude each other (argparse's mutually exclusive group)."""

    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Command:
    """A command run by ``handler``; ``defaults`` are set on its namespace as given."""

    name: str
    handler: str
    help: str
    args: tuple[Arg | OneOf, ...] = ()
    defaults: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """A command with sub-commands (``rig add``...); alone it prints its own help."""

    name: str
    help: str
    description: str
    commands: tuple[Command | Group, ...]


def command(name: str, handler: str, help_text: str, *args: Arg | OneOf,
            **defaults: object) -> Command:
    return Command(name, handler, help_text, args, defaults)


def group(name: str, help_text: str, description: str, *commands: Command | Group) -> Group:
    return Group(name, help_text, description, commands)


# -- arguments that several commands take ---------------------------------------------

JSON = arg("--json", action="store_true", help="print JSON for scripts")
NAME = arg("name", metavar="NAME")
BEAD_ID = arg("id", metavar="ID")
RIG = arg("rig", metavar="RIG")
SOME_RIG = arg("rig", nargs="?", metavar="RIG")
POLECAT = arg("target", metavar="RIG/NAME")
CONVOY = arg("convoy", metavar="C")
AGENT = arg("--agent", metavar="PRESET",
            help="claude, codex, script, or an [agents.NAME] of town.toml")
WHY = arg("--reason", metavar="TEXT", help="why (shown by bead show and the feed)")
PRIORITY = ("-p", "--priority")
CREW_RIG = arg("--rig", metavar="R", required=True)
DEP = (BEAD_ID, arg("need", metavar="NEEDED"))
UNIT_SCOPE = OneOf((
    arg("--user", dest="mode", action="store_const", const="user",
        help="a unit of your user's systemd (default)"),
    arg("--system", dest="mode", action="store_const", const="system",
        help="a system unit in /etc/systemd/system running as you (root)"),
))

# -- the commands, in the order ``gastown --help`` lists them ----------------------------

TOWN_COMMANDS: tuple[Command | Group, ...] = (
    command("install", "_town:cmd_install", "create a town (idempotent)",
            arg("path", nargs="?", metavar="PATH",
                help="where (default: $GASTOWN_TOWN, else ~/gt)")),
    group("rig", "add, list and remove rigs (projects)", "Rigs: the repositories of this town.",
          command("add", "_town:cmd_rig_add", "clone a repository into the town as a rig",
                  NAME, arg("repo", metavar="REPO", help="URL or local path of the repository"),
                  arg("--branch", metavar="B",
                      help="default branch (default: the remote's HEAD)"),
                  arg("--prefix", metavar="P", help="bead id prefix, 2-4 lowercase letters"),
                  arg("--push-to-checkout", action="store_true",
                      help="REPO is a local working copy with the branch checked out: let "
                           "pushes update that checkout when it is clean (sets "
                           "receive.denyCurrentBranch=updateInstead there)"),
                  arg("--check", action="store_true",
                      help="then run the rig's gates on its default branch (as 'mq check')")),
          command("list", "_town:cmd_rig_list", "list the town's rigs", JSON),
          command("remove", "_town:cmd_rig_remove", "remove a rig and its folder", NAME,
                  arg("--force", action="store_true",
                      help="even with live polecats or crew workspaces (their work is "
                           "lost)"))),
    group("bead", "create, list and show beads (work items)", "Beads: the town's work items.",
          command("create", "_beads:cmd_create", "create a bead; prints its id",
                  arg("title", metavar="TITLE"),
                  arg("--rig", metavar="R", help="the rig it belongs to (sets the id prefix)"),
                  arg("-d", "--description", metavar="TEXT", default="",
                      help="what to do (for the script agent: the shell script to run)"),
                  arg(*PRIORITY, metavar="0-4", type=priority, default=2,
                      help="0 is most urgent (default 2)"),
                  arg("--needs", metavar="ID[,ID]", action="append", default=[],
                      help="beads that must be closed (merged) before this one is "
                           "dispatched")),
          group("dep", "a bead's needs: beads closed before it is dispatched",
                "Dependencies: a bead that needs others waits until they are closed.",
                command("add", "_beads:cmd_dep_add",
                        "ID needs NEEDED: ID's slings wait until NEEDED is closed", *DEP),
                command("remove", "_beads:cmd_dep_remove", "ID no longer needs NEEDED", *DEP),
                command("list", "_beads:cmd_dep_list",
                        "every need: bead, needed bead, its status, and whether the bead "
                        "waits", JSON)),
          command("list", "_beads:cmd_list", "list beads",
                  arg("--rig", metavar="R", help="only this rig's beads"),
                  arg("--status", metavar="S",
                      help="only these statuses, comma-separated (open, hooked, in_review, "
                           "closed, blocked; waiting: needs not closed)"), JSON),
          command("show", "_beads:cmd_show",
                  "show one bead: why it is where it is, its polecats (state, reason, "
                  "output tail), merge requests (gate log, failing tail), queued slings",
                  BEAD_ID, JSON),
          command("update", "_beads:cmd_update",
                  "edit a bead's title, description, priority, or status (open/blocked)",
                  BEAD_ID, arg("--title", metavar="T"),
                  arg("-d", "--description", metavar="TEXT"),
                  arg(*PRIORITY, metavar="0-4", type=priority),
                  arg("--status", choices=["open", "blocked"])),
          command("close", "_beads:cmd_close",
                  "close a bead by hand (refuses one with live work unless --force)",
                  BEAD_ID, WHY,
                  arg("--commit", metavar="SHA",
                      help="its work landed by another route as this commit (must be on "
                           "the rig's default branch)"),
                  arg("--force", action="store_true",
                      help="cancel its queued slings and merge requests and stop its "
                           "polecats' agents; worktrees and branches are kept (polecats "
                           "escalated)")),
          command("reopen", "_beads:cmd_reopen", "reopen a closed (or blocked) bead",
                  BEAD_ID, WHY)),
    command("up", "_lifecycle:cmd_up",
            "start the town (supervisor, mayor, a witness and a refinery per rig)",
            arg("--foreground", action="store_true",
                help="stay attached (for systemd and debugging) instead of daemonizing"),
            arg("--timeout", type=float, default=60.0, metavar="SECONDS",
                help="how long to wait for every role to report ready (default 60)"),
            arg("--ready-fd", type=int, default=None, help=argparse.SUPPRESS),
            arg("--start-lock-fd", type=int, default=None, help=argparse.SUPPRESS)),
    command("down", "_lifecycle:cmd_down",
            "stop the roles, then the supervisor (agent sessions keep running)",
            arg("--all", action="store_true",
                help="also stop every polecat's agent session (worktrees are kept)")),
    command("reload", "_lifecycle:cmd_reload",
            "re-read town.toml and every rig.toml; restart only the roles they concern "
            "(also: SIGHUP to the supervisor, systemctl reload)"),
    command("status", "_lifecycle:cmd_status",
            "the supervisor, each role, the rigs, polecats, the merge queue and recent "
            "failures", JSON,
            arg("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                help="refresh in place every SECONDS (default 2)")),
    command("logs", "_observe:cmd_logs", "the role log files merged by time",
            arg("-f", "--follow", action="store_true", help="keep printing new lines"),
            arg("--role", metavar="ROLE", help="only this role (e.g. witness:web)"),
            arg("-n", type=int, default=50, metavar="N",
                help="start with the last N lines (default 50; 0 for all)"), JSON),
    command("feed", "_observe:cmd_feed", "the domain events: beads, polecats, merges, roles",
            arg("-f", "--follow", action="store_true", help="keep printing new events"),
            arg("--since", metavar="DURATION", help="only events newer than this (10m, 2h)"),
            JSON),
)

WORK_COMMANDS: tuple[Command | Group, ...] = (
    command("sling", "_polecats:cmd_sling",
            "give beads to a rig: a new polecat each (worktree, branch, agent session); "
            "prints each one's name and worktree, or its queue position",
            arg("beads", metavar="BEAD", nargs="*",
                help="one or more beads, queued in this order (all of them or none)"),
            RIG,
            arg("--convoy", metavar="C",
                help="instead of BEADs: every open bead of convoy C without a sling"),
            AGENT, arg("--force", action="store_true", help="sling a bead that is already hooked")),
    group("convoy", "group beads (over rigs) and follow them as one",
          "Convoys: beads followed as one piece of work; landed when every bead is merged, "
          "stuck when one is blocked or rejected.",
          command("create", "_convoys:cmd_create", "create a convoy of beads; prints its id",
                  arg("title", metavar="TITLE"), arg("beads", metavar="BEAD", nargs="*"),
                  arg("--rig", metavar="R",
                      help="where 'convoy sling' sends beads without a rig")),
          command("add", "_convoys:cmd_add", "add beads to a convoy",
                  CONVOY, arg("beads", metavar="BEAD", nargs="+")),
          command("remove", "_convoys:cmd_remove", "take beads out of a convoy",
                  CONVOY, arg("beads", metavar="BEAD", nargs="+")),
          command("list", "_convoys:cmd_list", "the convoys: state and progress", JSON),
          command("show", "_convoys:cmd_show",
                  "a convoy's beads: state, merge request, merged commit", CONVOY, JSON),
          command("sling", "_convoys:cmd_sling",
                  "queue a sling for every open bead of the convoy that has none (to its "
                  "rig, else the convoy's)", CONVOY, AGENT)),
    command("done", "_polecats:cmd_done",
            "inside a polecat worktree or a crew workspace: the work is ready (records a "
            "merge request)",
            arg("--status", choices=["completed", "escalated", "deferred"],
                default="completed", help="completed (default): merge it; escalated: "
                "needs a human; deferred: hand the bead back unfinished"),
            arg("--reason", metavar="TEXT",
                help="why (kept on the bead and the polecat, shown by polecat list)"),
            arg("--bead", metavar="ID",
                help="in a crew workspace: the bead this work is for (default: a new one)")),
    command("prime", "_polecats:cmd_prime",
            "inside a polecat worktree: print its context for the agent (bead, worktree, "
            "branch, rules, commits and uncommitted files); for a compacted or resumed "
            "conversation", JSON),
    command("nudge", "_agents:cmd_nudge",
            "tell a polecat's agent something: typed at its prompt (tmux), or a resumed "
            "turn (process backend)",
            POLECAT, arg("text", metavar="TEXT"),
            arg("--timeout", type=float, default=60.0, metavar="SECONDS",
                help="how long to wait for the agent's input prompt (default 60)")),
    command("agent-hook", "_agents:cmd_agent_hook",
            "run by an agent CLI's own hook (Claude's Stop, Codex's notify) inside a "
            "polecat: its turn ended",
            arg("event", choices=["claude-stop", "codex-notify"]),
            arg("payload", nargs="?", metavar="JSON",
                help="the hook's JSON (Codex passes it here; Claude on stdin)")),
    group("polecat", "list and nuke polecats", "Polecats: agents in their own worktrees.",
          command("list", "_polecats:cmd_polecat_list",
                  "the polecats: bead, branch, state, session alive, age", SOME_RIG, JSON),
          command("nuke", "_polecats:cmd_polecat_nuke",
                  "stop the session, remove the worktree and branch, release the name",
                  POLECAT, arg("--force", action="store_true",
                               help="even with uncommitted or unmerged work (it is lost)"))),
    command("attach", "_polecats:cmd_attach",
            "attach to a polecat's agent session (tmux), or follow its output", POLECAT),
    group("mq", "the merge queue", "The refineries' queues.",
          command("list", "_mq:cmd_mq_list",
                  "queued and running merge requests (with the gate running), then recent "
                  "merges and rejections", SOME_RIG, JSON),
          command("show", "_mq:cmd_mq_show",
                  "one merge request: state, steps with timings, gate output tail, log path",
                  arg("id", metavar="MR"), JSON),
          command("check", "_mq:cmd_mq_check",
                  "run the rig's gates on its default branch in a scratch worktree; exit 1 "
                  "if one fails", RIG, JSON),
          command("resume", "_town:cmd_mq_resume",
                  "have the rig's refinery check the remote again: resume a paused queue, "
                  "push merged work the remote refused before", RIG)),
)

HUMAN_COMMANDS: tuple[Command | Group, ...] = (
    group("crew", "human workspaces in a rig (worktrees on crew/NAME)",
          "Crew: long-lived workspaces at <rig>/crew/<name>.",
          command("add", "_crew:cmd_crew_add",
                  "create a crew workspace on its own branch crew/NAME", NAME, CREW_RIG,
                  arg("--setup", action="store_true",
                      help="run the rig's [polecats.setup] (files, command) in it")),
          command("list", "_crew:cmd_crew_list",
                  "list crew workspaces with their state (clean / N uncommitted)",
                  arg("--rig", metavar="R", help="only this rig's crew"), JSON),
          command("remove", "_crew:cmd_crew_remove",
                  "remove a crew workspace (refuses uncommitted or unmerged work)",
                  NAME, CREW_RIG,
                  arg("--force", action="store_true",
                      help="even with uncommitted or unmerged work"))),
    command("worktree", "_crew:cmd_worktree",
            "cross-rig worktrees for the crew workspace you are in: 'worktree RIG' creates "
            "(or prints) one, 'worktree list', 'worktree remove RIG [--force]'",
            arg("words", nargs="+", metavar="RIG | list | remove RIG"),
            arg("--force", action="store_true", help="remove even with uncommitted work"),
            JSON),
    command("doctor", "_doctor:cmd_doctor",
            "find orphaned worktrees, branches and sessions, stale polecat rows, landed "
            "merge requests; --fix repairs them (never deleting unmerged work)",
            arg("--fix", action="store_true",
                help="repair what is safe to repair; work that has not landed is kept"),
            arg("--rig", metavar="R", help="only this rig"),
            arg("--new-store", action="store_true",
                help="with --fix, town down: start an empty store where the town's is "
                     "missing (restore a backup instead if you have one)"),
            arg("--adopt-store", action="store_true",
                help="with --fix, town down: make the file now at state.db the town's "
                     "store"), JSON),
    group("service", "install or remove a systemd unit for this town",
          "A systemd unit (gastown-<town folder>.service) that runs this town's supervisor.",
          command("install", "_service:cmd_install",
                  "write the unit and reload systemd (enables nothing; prints the commands "
                  "to run next)", UNIT_SCOPE,
                  arg("--dry-run", action="store_true",
                      help="print the unit and where it would go; write nothing"),
                  mode="user"),
          command("uninstall", "_service:cmd_uninstall",
                  "remove the unit and its enablement links, reload systemd (a running "
                  "service keeps running)", UNIT_SCOPE, mode="user")),
    group("config", "show the effective configuration", "The configuration in force.",
          command("show", "_town:cmd_config_show",
                  "print the town's (or a rig's) configuration with defaults filled in",
                  arg("--rig", metavar="R", help="show this rig's configuration instead"),
                  JSON)),
)

COMMANDS = TOWN_COMMANDS + WORK_COMMANDS + HUMAN_COMMANDS

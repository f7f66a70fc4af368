"""``gastown doctor [--fix] [--rig R] [--json]``: find and repair orphans and stale rows.

Layer: cli, over :mod:`gastown.roles.operations.reconcile`.

Exit 0 when nothing is wrong or everything found was fixed, 1 when problems remain
(kept work, failed repairs, or simply not ``--fix``), so scripts and CI can use it.

A store that is missing or not this town's is reported first, with the ways back:
restore the file, or (town down) ``--fix --new-store`` / ``--fix --adopt-store``.
"""

from __future__ import annotations

import argparse

from ...roles.adapters.town import Town
from ...roles.operations.reconcile import Finding
from ._context import town_of
from ._output import print_json


def cmd_doctor(args: argparse.Namespace) -> int:
    from ...roles.adapters.store import open_store
    from ...roles.core.errors import StoreMissing, StoreReplaced, UsageError
    from ...roles.core.names import validate_name
    from ...roles.operations.reconcile import reconcile

    if args.rig is not None:
        validate_name("rig", args.rig)
    if (args.new_store or args.adopt_store) and not args.fix:
        raise UsageError("--new-store and --adopt-store repair the store: add --fix")
    town = town_of(args)
    if args.new_store or args.adopt_store:
        _recover_store(town, adopt=args.adopt_store)
    try:
        store = open_store(town.db_path)
    except (StoreMissing, StoreReplaced) as exc:
        if isinstance(exc, StoreMissing):
            kind, way = "store_missing", "start an empty one: 'gastown doctor --fix --new-store'"
        else:
            kind, way = "store_replaced", ("keep this file as the town's store: "
                                           "'gastown doctor --fix --adopt-store'")
        findings = [Finding("-", kind, str(town.db_path), exc.reason,
                            f"with the town down, restore the town's store from a backup, "
                            f"or {way}", False)]
    else:
        with store:
            findings = reconcile(town, store, rig=args.rig, fix=args.fix)
    findings = _config_findings(town) + findings
    if args.json:
        print_json(findings)
    elif not findings:
        print("all clear")
    else:
        for finding in findings:
            action = f" -> {finding.action}" if finding.action else ""
            print(f"{finding.rig}  {finding.kind}  {finding.subject}: {finding.detail}"
                  f"{action}")
    return 0 if all(f.fixed for f in findings) else 1


def _config_findings(town: Town) -> list[Finding]:
    """A broken town.toml (the rigs' rig.toml are checked with each rig)."""
    from ...roles.core.errors import ConfigError

    try:
        town.config  # noqa: B018 - validation
    except ConfigError as exc:
        return [Finding("-", "config_error", str(town.config_path), exc.message,
                        "fix the file ('gastown config show' checks it); until then only "
                        "status, down, logs, feed and doctor work", False)]
    return []


def _recover_store(town: Town, *, adopt: bool) -> None:
    """``--new-store``: an empty store where the town's is missing; ``--adopt-store``: the
    file now at the store's path becomes the town's store. Only with the town down."""
    from ...roles.adapters.log import get_logger
    from ...roles.adapters.store import open_store
    from ...roles.adapters.town_lock import read_supervisor
    from ...roles.core.errors import Refused
    from ...roles.core.events_town import StoreAdopted, StoreCreated

    running = read_supervisor(town.runtime_dir)
    if running is not None:
        raise Refused(f"the town is up (supervisor pid {running.pid}) and its processes "
                      "still have the old store open: stop it with 'gastown down' first")
    with open_store(town.db_path, new_store=not adopt, adopt=adopt) as store:
        event = (StoreAdopted if adopt else StoreCreated)(path=str(town.db_path))
        store.emit(event)
    get_logger().warning(event.kind, path=str(town.db_path))
    print(f"adopted {town.db_path} as the town's store" if adopt
          else f"created an empty store at {town.db_path}")

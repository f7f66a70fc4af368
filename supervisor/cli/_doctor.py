"""``gastown doctor [--fix] [--rig R] [--json]``: find and repair orphans and stale rows.

Exit 0 when nothing is wrong or everything found was fixed, 1 when problems remain
(kept work, failed repairs, or simply not ``--fix``), so scripts and CI can use it.
"""

from __future__ import annotations

import argparse

from gastown.supervisor.cli._context import poke_town, print_json, store_of, town_of


def cmd_doctor(args: argparse.Namespace) -> int:
    from gastown.roles.names import validate_name
    from gastown.roles.reconcile import reconcile

    if args.rig is not None:
        validate_name("rig", args.rig)
    town = town_of(args)
    with store_of(town) as store:
        findings = reconcile(town, store, rig=args.rig, fix=args.fix)
    if any(f.fixed for f in findings):
        poke_town(town)
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

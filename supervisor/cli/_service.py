"""``gastown service install|uninstall``: a systemd unit that runs this town's supervisor.

Layer: cli, over :mod:`gastown.supervisor.service`.

Gathers the facts (the town, this interpreter, ``supervisor.stop_timeout``, the number of
roles, the user) and hands them to :mod:`gastown.supervisor.service`, which renders and
writes. Never enables, starts or stops the service: it prints the commands for that.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
from pathlib import Path

from ...roles.adapters.town import Town
from ...roles.core.errors import Refused
from .. import service
from ._context import store_of, town_of


def _home() -> Path:
    return Path(os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir)


def _config_home() -> Path | None:
    value = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(value) if value.startswith("/") else None


def _path_for(mode: service.Mode, town: Town) -> Path:
    return service.unit_path(mode, _home(), town.root, _config_home())


def _require_root(mode: service.Mode, verb: str) -> None:
    if mode == "system" and os.geteuid() != 0:
        raise Refused(f"--system {verb}s in {service.SYSTEM_UNIT_DIR}, which needs root: "
                      f"run 'sudo gastown service {verb} --system', or use --user")


def _service_user(town: Town) -> str:
    """The invoking user (the one behind ``sudo``), who must own the town to run it."""
    name = os.environ.get("SUDO_USER") if os.geteuid() == 0 else None
    try:
        entry = pwd.getpwnam(name) if name else pwd.getpwuid(os.getuid())
    except KeyError:
        raise Refused(f"unknown user {name!r} (from $SUDO_USER)") from None
    owner = town.root.stat().st_uid
    if entry.pw_uid != owner:
        try:
            owner_name = pwd.getpwuid(owner).pw_name
        except KeyError:
            owner_name = f"uid {owner}"
        raise Refused(f"the town {town.root} belongs to {owner_name}, but the service would "
                      f"run as {entry.pw_name}; run 'sudo gastown service install --system' "
                      f"as {owner_name}")
    return entry.pw_name


def _role_count(town: Town) -> int:
    """The mayor, plus a witness and a refinery per rig."""
    with store_of(town) as store:
        return 1 + 2 * len(store.rigs())


def cmd_install(args: argparse.Namespace) -> int:
    mode: service.Mode = args.mode
    town = town_of(args)
    if not args.dry_run:
        _require_root(mode, "install")
    python = str(Path(sys.executable).absolute())  # absolute, but a venv's link is kept
    roles = _role_count(town)
    stop_timeout = float(town.config.supervisor.stop_timeout)
    text = service.render_unit(
        python=python, town=town.root, mode=mode,
        user=_service_user(town) if mode == "system" else None,
        stop_timeout=stop_timeout, roles=roles)
    path = _path_for(mode, town)
    if args.dry_run:
        sys.stdout.write(text)
        print(f"would write {path} (dry run: nothing written)", file=sys.stderr)
        return 0
    done = service.install_unit(text, path, town=town.root, mode=mode,
                                systemctl=shutil.which("systemctl"))
    verb = "replaced" if done.replaced else "wrote"
    print(f"{verb} {done.path} ({roles} role{'' if roles == 1 else 's'}, TimeoutStopSec="
          f"{service.stop_timeout_sec(roles, stop_timeout)}s)")
    _report_reload(done.reload)
    print("next:")
    for step in service.next_steps(mode, path.name):
        print(f"  {step}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    mode: service.Mode = args.mode
    town = town_of(args)
    _require_root(mode, "uninstall")
    path = _path_for(mode, town)
    done = service.uninstall_unit(path, town=town.root, mode=mode,
                                  systemctl=shutil.which("systemctl"))
    print(f"removed {done.path}")
    for link in done.unlinked:
        print(f"removed {link}")
    _report_reload(done.reload)
    systemctl = "systemctl --user" if mode == "user" else "sudo systemctl"
    print(f"a running service keeps running until '{systemctl} stop {path.name}' "
          "(agent sessions keep running either way; 'gastown down --all' stops them)")
    return 0


def _report_reload(reload: service.Reload) -> None:
    if reload.ok:
        print(f"systemd: {reload.detail}")
    else:
        print(f"warning: {reload.detail}", file=sys.stderr)

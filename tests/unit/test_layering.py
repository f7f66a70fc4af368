"""The architecture, checked: pure cores import no I/O, and nothing installs ``supervisor``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules that must stay pure: decisions in, decisions out, no I/O.
PURE_MODULES = [
    "roles/errors.py",
    "roles/names.py",
    "roles/config.py",
    "roles/lifecycle.py",
    "roles/merge_queue.py",
    "supervisor/restart_policy.py",
    "supervisor/bus/errors.py",
    "supervisor/bus/frames.py",
    "supervisor/bus/protocol.py",
]

#: What a pure module may import: the standard library's data modules and other pure modules.
ALLOWED = {
    "__future__", "collections", "collections.abc", "dataclasses", "enum", "functools",
    "itertools", "json", "math", "re", "string", "tomllib", "types", "typing",
    "gastown.roles.errors", "gastown.roles.names", "gastown.roles.config",
    "gastown.roles.lifecycle",
    "gastown.supervisor.bus.errors",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io(module: str) -> None:
    """A pure core imports only data modules: no os, time, sqlite3, trio or sh."""
    assert imports_of(ROOT / module) <= ALLOWED, imports_of(ROOT / module) - ALLOWED


def test_no_top_level_supervisor_or_roles_module_is_importable() -> None:
    """The install maps folders under ``gastown``: ``import supervisor`` finds nothing of ours."""
    code = ("import importlib.util, sys\n"
            "for name in ('supervisor', 'roles'):\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    assert spec is None or 'gastown' not in str(spec.origin), spec\n"
            "import gastown.supervisor, gastown.roles\n")
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)


def test_cli_imports_stay_lazy() -> None:
    """``gastown --version`` loads neither trio, structlog, sqlite3 nor sh."""
    code = ("import sys\n"
            "from gastown.supervisor.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'trio', 'structlog', 'sqlite3', 'sh', 'watchfiles', 'anyio'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_every_package_folder_is_installed() -> None:
    """pyproject lists every package folder, so a regular (non-editable) install is complete."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed

"""The architecture, checked: a one-way module graph, pure cores without I/O, the install.

The module graph covers every module of ``roles/``, ``supervisor/`` and ``config/`` (the
folders installed as ``gastown.roles``, ``gastown.supervisor`` and ``gastown.config``),
read from the source with ``ast``. Every import counts: module-level, inside functions
and methods, and under ``TYPE_CHECKING``, absolute or relative. An import of ``a.b.c`` is
an edge to ``a.b.c`` only (the parent packages' ``__init__`` files that Python runs on the
way are not edges; each ``__init__`` is checked as a module of its own).

The rule. Layers, bottom to top; a layer imports only from itself and from layers below:

1. ``config`` (``gastown.config``: the shipped defaults): imports nothing from gastown;
2. ``bus`` (``gastown.supervisor.bus``): the message bus and :class:`GastownError`, the
   root of every user-facing error: imports nothing from ``roles``, ``config`` or the
   rest of ``supervisor``;
3. ``roles`` (``gastown.roles``): the town's domain: imports ``roles``, ``bus`` and
   ``config``, never the rest of ``supervisor``;
4. ``supervisor`` (the rest of ``gastown.supervisor``, the CLI included): anything.

Inside ``roles`` the folders are layers too, bottom to top: ``roles/core`` (the pure
cores: decisions without I/O), ``roles/adapters`` (one kind of I/O each: git, tmux,
processes, the store), ``roles/operations`` (what the roles do: sling, nuke, gate,
reconcile), then the modules at the top of ``roles/``: the role loops (``mayor``,
``witness``, ``refinery``), the role process that runs one of them, and the entry points.
Only the role process imports a role loop, and only ``roles/__main__`` imports the role
process. There is no import cycle among the modules,
whatever the layers.

Besides: the pure cores (:data:`PURE_MODULES`, decisions without I/O, in any layer)
import only the standard library's data modules and other pure cores; nothing installs a
top-level ``supervisor`` or ``roles``; ``gastown --version`` stays light; pyproject lists
every package folder.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules that must stay pure: decisions in, decisions out, no I/O.
PURE_MODULES = [
    "roles/core/errors.py",
    "roles/core/names.py",
    "roles/core/config.py",
    "roles/core/config_setup.py",
    "roles/core/slots.py",
    "roles/core/events_setup.py",
    "roles/core/lifecycle.py",
    "roles/core/merge_queue.py",
    "roles/core/pool.py",
    "roles/core/pool_setup.py",
    "roles/core/turn_end.py",
    "roles/core/_event_base.py",
    "roles/core/frozen.py",
    "roles/core/events.py",
    "roles/core/events_town.py",
    "roles/core/event_text.py",
    "roles/core/convoy.py",
    "roles/core/events_convoy.py",
    "roles/core/events_needs.py",
    "roles/core/dispatch.py",
    "supervisor/restart_policy.py",
    "supervisor/bus/errors.py",
    "supervisor/bus/frames.py",
    "supervisor/bus/protocol.py",
    "supervisor/bus/requests.py",
]

#: What a pure module may import: the standard library's data modules and other pure modules.
ALLOWED = {
    "__future__", "collections", "collections.abc", "dataclasses", "enum", "functools",
    "itertools", "json", "math", "re", "string", "tomllib", "types", "typing",
    "signal",  # only its names of signal numbers (describe_exit): nothing is installed
    "gastown.roles.core.errors", "gastown.roles.core.names", "gastown.roles.core.config",
    "gastown.roles.core.config_setup", "gastown.roles.core.slots",
    "gastown.roles.core.pool_setup",
    "gastown.roles.core.events_setup",
    "gastown.roles.core.lifecycle", "gastown.roles.core.events",
    "gastown.roles.core._event_base", "gastown.roles.core.events_town",
    "gastown.roles.core.frozen",
    "gastown.roles.core.convoy", "gastown.roles.core.events_convoy",
    "gastown.roles.core.events_needs", "gastown.roles.core.dispatch",
    "gastown.supervisor.bus.errors",
    "gastown.supervisor.bus.protocol",
}


def imports_of(path: Path) -> set[str]:
    """The modules ``path`` imports from, relative imports resolved to absolute names."""
    module = {file: name for name, file in modules().items()}[path]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(absolute_origin(node, module, is_package))
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
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


# -- the module graph -------------------------------------------------------------------
ROLE_LOOPS: Final = frozenset({"gastown.roles.mayor", "gastown.roles.witness",
                               "gastown.roles.refinery"})
ROLE_PROCESS: Final = "gastown.roles.role_process"


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it was written."""

    source: str
    target: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def package_dirs() -> dict[str, Path]:
    """``gastown.roles`` -> ``ROOT/roles``, as pyproject's ``package-dir`` installs them."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = data["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def modules() -> dict[str, Path]:
    """Every module's dotted name and file (a package is its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def absolute_origin(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of the module a ``from … import`` reads from (relative resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_names(source: str, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every name an import in ``source`` may bind a module to, with its line.

    ``from a import b`` yields ``a.b`` (``b`` may be a submodule) and ``a``; relative
    imports are resolved against ``module``. Walks the whole tree: imports inside
    functions, classes and ``if TYPE_CHECKING:`` blocks count like the others.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            origin = absolute_origin(node, module, is_package)
            for alias in node.names:
                yield f"{origin}.{alias.name}", node.lineno
            yield origin, node.lineno


def resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The module of ours that ``name`` is, or is in (``a.b.C`` -> ``a.b``); None if foreign."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def module_imports(module: str, path: Path, known: Mapping[str, Path]) -> set[Import]:
    edges: set[Import] = set()
    by_line: dict[int, set[str]] = {}
    for name, line in imported_names(path.read_text(encoding="utf-8"), module,
                                     path.name == "__init__.py"):
        target = resolve(name, known)
        if target is not None and target != module:
            by_line.setdefault(line, set()).add(target)
    for line, targets in by_line.items():
        # ``from a import b`` names both ``a.b`` and ``a``: when ``a.b`` is a module,
        # the statement imports it, not ``a``'s own names.
        for target in targets:
            if any(other.startswith(target + ".") for other in targets):
                continue
            edges.add(Import(module, target, path, line))
    return edges


def graph() -> dict[str, set[Import]]:
    known = modules()
    return {module: module_imports(module, path, known) for module, path in known.items()}


def layer(module: str) -> str:
    if module == "gastown.config" or module.startswith("gastown.config."):
        return "config"
    if module == "gastown.supervisor.bus" or module.startswith("gastown.supervisor.bus."):
        return "bus"
    if module == "gastown.roles" or module.startswith("gastown.roles."):
        return "roles"
    return "supervisor"


#: What each layer may import from (itself included).
LAYER_ALLOWED: Final = {
    "config": {"config"},
    "bus": {"bus"},
    "roles": {"roles", "bus", "config"},
    "supervisor": {"supervisor", "roles", "bus", "config"},
}


#: The folders inside ``roles``, bottom to top (``gastown.roles`` itself holds the version).
ROLES_SUBLAYERS: Final = ("core", "adapters", "operations", "top")


def roles_sublayer(module: str) -> str:
    """``gastown.roles.core.lifecycle`` -> ``core``; a module at the top of roles -> ``top``."""
    parts = module.split(".")
    if module == "gastown.roles":
        return "core"
    if len(parts) > 2 and parts[2] in ROLES_SUBLAYERS[:-1]:
        return parts[2]
    return "top"


def find_cycle(edges: Mapping[str, Iterable[Import]]) -> list[Import] | None:
    """One import cycle as its chain of imports, or None (depth-first, three colours)."""
    successors = {m: sorted(e, key=lambda i: (i.target, i.line)) for m, e in edges.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def visit(module: str) -> list[Import] | None:
        state[module] = 1
        for edge in successors.get(module, []):
            if state.get(edge.target) == 1:
                start = next((i for i, e in enumerate(path) if e.source == edge.target),
                             len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                cycle = visit(edge.target)
                path.pop()
                if cycle is not None:
                    return cycle
        state[module] = 2
        return None

    for module in sorted(successors):
        if module not in state:
            cycle = visit(module)
            if cycle is not None:
                return cycle
    return None


def describe(edges: Iterable[Import]) -> str:
    return "\n".join(f"  {e.source} -> {e.target}  ({e.where()})" for e in edges)


# -- the parser and the cycle finder see what they must --------------------------------


def test_imports_inside_functions_and_type_checking_count() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from gastown.roles.adapters.store import Store\n"
        "def f() -> None:\n"
        "    from gastown.roles.adapters.children import stop_child\n"
        "class C:\n"
        "    def m(self) -> None:\n"
        "        import gastown.roles.adapters.git as git\n"
        "from .adapters import log\n"
        "from ..supervisor.bus import errors\n"
    )
    names = {name for name, _ in imported_names(source, "gastown.roles.x", False)}
    adapters = ("store", "children", "git", "log")
    known = {m: Path() for m in (*(f"gastown.roles.adapters.{a}" for a in adapters),
                                 "gastown.supervisor.bus.errors", "gastown.roles")}
    assert {resolve(n, known) for n in names} >= set(known) - {"gastown.roles"}


def test_find_cycle_reports_the_chain() -> None:
    def imp(a: str, b: str) -> Import:
        return Import(a, b, ROOT / "x.py", 1)

    assert find_cycle({"a": {imp("a", "b")}, "b": set()}) is None
    cycle = find_cycle({"a": {imp("a", "b")}, "b": {imp("b", "c")}, "c": {imp("c", "a")}})
    assert cycle is not None
    assert [e.source for e in cycle] == ["a", "b", "c"]
    assert cycle[-1].target == "a"


def test_the_scan_finds_the_packages() -> None:
    found = modules()
    for module in ("gastown.roles.role_process", "gastown.supervisor.bus.errors",
                   "gastown.supervisor.cli", "gastown.config", *ROLE_LOOPS):
        assert module in found, module


# -- the rules --------------------------------------------------------------------------


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle:\n" + describe(cycle or [])


def test_layers_import_only_downward() -> None:
    wrong = [edge for edges in graph().values() for edge in edges
             if layer(edge.target) not in LAYER_ALLOWED[layer(edge.source)]]
    assert not wrong, ("imports against the layers (config < bus < roles < supervisor):\n"
                       + describe(sorted(wrong, key=Import.where)))


def test_roles_folders_import_only_downward() -> None:
    """core < adapters < operations < the role loops: a folder imports only from below."""
    rank = {name: i for i, name in enumerate(ROLES_SUBLAYERS)}
    wrong = [edge for edges in graph().values() for edge in edges
             if layer(edge.source) == "roles" and layer(edge.target) == "roles"
             and rank[roles_sublayer(edge.target)] > rank[roles_sublayer(edge.source)]]
    assert not wrong, ("imports against the roles folders (core < adapters < operations < "
                       "role loops):\n" + describe(sorted(wrong, key=Import.where)))


def test_the_roles_folders_are_what_the_rule_names() -> None:
    """Every module of roles is in one of the folders the rule knows (no stray layer)."""
    folders = {p.name for p in (ROOT / "roles").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ROLES_SUBLAYERS[:-1])


def test_role_loops_are_at_the_top_of_roles() -> None:
    wrong = [edge for edges in graph().values() for edge in edges
             if layer(edge.source) == "roles"
             and ((edge.target in ROLE_LOOPS and edge.source != ROLE_PROCESS)
                  or (edge.target == ROLE_PROCESS and edge.source != "gastown.roles.__main__"))]
    assert not wrong, ("only role_process runs the role loops:\n"
                       + describe(sorted(wrong, key=Import.where)))



# -- every module says its layer --------------------------------------------------------

#: How a ``Layer:`` line may name each layer (case does not matter); the first layer it
#: names is the one it claims.
LAYER_WORDS: Final = {
    "core": r"\bcores?\b",
    "adapters": r"\badapters?\b",
    "operations": r"\boperations?\b",
    "role loop": r"\brole loops?\b|\brole process\b|\bentry points?\b|\btop of ``roles``",
    "bus": r"\bbus\b",
    "cli": r"\bcli\b|\bcommand line\b",
    "supervisor": r"\bsupervisor\b(?![/.]\w)",
    "config": r"\bconfig\b(?![/.]\w)|\bshipped defaults\b",
}


def folder_layer(module: str) -> str:
    """The layer a module's folder puts it in, by the names of :data:`LAYER_WORDS`."""
    if layer(module) == "roles":
        sublayer = roles_sublayer(module)
        return "role loop" if sublayer == "top" else sublayer
    if module == "gastown.supervisor.cli" or module.startswith("gastown.supervisor.cli."):
        return "cli"
    return layer(module)


def claimed_layer(docstring: str) -> str | None:
    """The layer the docstring's first line starting with ``Layer:`` names first.

    None when no line starts with ``Layer:``; ``""`` when that line names no layer.
    """
    for line in docstring.splitlines():
        text = line.strip()
        if text.startswith("Layer:"):
            named = [(match.start(), name) for name, words in LAYER_WORDS.items()
                     if (match := re.search(words, text, re.IGNORECASE)) is not None]
            return min(named)[1] if named else ""
    return None


def test_claimed_layer_reads_the_layer_line() -> None:
    assert claimed_layer("Does X.\n\nLayer: adapters (git), used by the role loops.") \
        == "adapters"
    assert claimed_layer("Does X.\n\nLayer: a roles adapter.") == "adapters"
    assert claimed_layer("Layer: bus (``supervisor/bus``), below the supervisor.") == "bus"
    assert claimed_layer("Does X.\n\nLayer: roles, above the adapters.") == "adapters"
    assert claimed_layer("Does X.\n\nLayer: somewhere.") == ""
    assert claimed_layer("Does X. Layer: core.") is None
    assert claimed_layer("Does X.") is None


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_says_its_one_job_and_its_layer(module: str) -> None:
    """A docstring whose first line says the job and a ``Layer:`` line names the folder's layer."""
    path = modules()[module]
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{path.relative_to(ROOT)} has no docstring"
    assert docstring.splitlines()[0].strip(), f"{path.relative_to(ROOT)}: no first line"
    claimed = claimed_layer(docstring)
    assert claimed is not None, f"{path.relative_to(ROOT)}: no line starts with 'Layer:'"
    assert claimed == folder_layer(module), (
        f"{path.relative_to(ROOT)}: its 'Layer:' line names {claimed or 'no layer'!r}, "
        f"its folder puts it in {folder_layer(module)!r}")


#: The longest a module of the installed package may be (issue 13's acceptance).
MAX_MODULE_LINES = 450


def test_no_module_is_over_the_line_limit() -> None:
    long = {str(path.relative_to(ROOT)): count for path in modules().values()
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}

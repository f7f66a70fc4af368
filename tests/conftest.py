"""Fixtures shared by every test tier: real git repositories, real towns, the real CLI."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import cli_template
from tests.scripted_model import ModelServer
from tests.scripted_model import clis as agent_clis_install
from tests.scripted_model.clis import AgentClis

# Longest tests first, and `--record-durations` (tests/schedule.py).
pytest_plugins = ("tests.schedule",)

# Commits in tests need an identity, whatever the machine's git config says.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# Hypothesis's own clock checks (a 200 ms deadline per example, "input generation is
# slow") are wall-clock assertions: on a shared 2-core machine running three test workers
# and their towns they fail for the machine's load, not for the code (seen: the dispatch
# starvation test under load). The properties themselves are checked as before.
settings.register_profile("gastown", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gastown")


def pytest_configure(config: pytest.Config) -> None:
    """The suite starts thousands of Python processes (every CLI call, every role). When
    the environment forbids bytecode files (``PYTHONDONTWRITEBYTECODE``, set on this
    machine so the tree stays free of ``__pycache__``), each of them would compile every
    gastown module again: they share compiled files kept outside the tree instead
    (``PYTHONPYCACHEPREFIX``; Python checks each against its source, so an edited module
    is compiled afresh)."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        prefix = Path(tempfile.gettempdir()) / f"gastown-tests-pycache-{os.getuid()}"
        os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
        del os.environ["PYTHONDONTWRITEBYTECODE"]
        sys.pycache_prefix = str(prefix)
        sys.dont_write_bytecode = False


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test gets a git identity, an empty HOME and no inherited town."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GASTOWN_TOWN", raising=False)


def git(*args: str, cwd: Path) -> str:
    """Run git in ``cwd`` and return stdout; fails the test on a non-zero exit."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


#: What a test repository holds unless the test says otherwise.
DEFAULT_FILES = {"README.md": "hello\n"}
#: Repositories built once per test process, by (branch, files); tests get copies.
_TEMPLATES: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Path, Path]] = {}


def _template(branch: str, files: Mapping[str, str]) -> tuple[Path, Path]:
    """(working repository, bare clone of it) with ``files`` committed on ``branch``.

    Hundreds of tests each start from such a pair: building it takes five git processes,
    copying it none. A copy is the same repository (git keeps no absolute path inside
    one, but for the bare clone's ``remote.origin.url``, which :func:`make_remote`
    points at the copy's own source)."""
    key = (branch, tuple(sorted(files.items())))
    if key not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix="gastown-test-repos-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        src, bare = root / "src", root / "bare.git"
        src.mkdir()
        git("init", "-q", "-b", branch, cwd=src)
        for name, text in files.items():
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        # No automatic gc: one detached after the commit (thousands of files are enough
        # to start it) would pack and delete loose objects while they are being copied.
        git("add", "-A", cwd=src)
        git("-c", "gc.auto=0", "commit", "-q", "-m", "initial commit", cwd=src)
        git("clone", "-q", "--bare", str(src), str(bare), cwd=root)
        git("config", "core.logAllRefUpdates", "always", cwd=bare)
        _TEMPLATES[key] = (src, bare)
    return _TEMPLATES[key]


def make_repo(path: Path, *, branch: str = "main", files: Mapping[str, str] | None = None) -> Path:
    """A real git repository at ``path`` with one commit on ``branch``."""
    src, _ = _template(branch, files or DEFAULT_FILES)
    shutil.copytree(src, path)
    return path


def make_remote(path: Path, *, branch: str = "main",
                files: Mapping[str, str] | None = None) -> Path:
    """A bare repository at ``path`` with one commit on ``branch``: what a rig pushes to.

    (``rig add`` refuses a working copy with the branch checked out.) Its reflog records
    every update, for ``tests/invariants.py``. Its source repository is beside it, named
    ``<name>-src``.
    """
    src, bare = _template(branch, files or DEFAULT_FILES)
    own_src = path.with_name(path.name + "-src")
    shutil.copytree(src, own_src)
    shutil.copytree(bare, path)
    config = path / "config"
    config.write_text(config.read_text().replace(f"url = {src}\n", f"url = {own_src}\n"))
    return path


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A small bare repository on ``main`` with one commit (a rig's remote)."""
    return make_remote(tmp_path / "repo.git")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def pytest_unconfigure(config: pytest.Config) -> None:
    cli_template.close()


@dataclass
class Cli:
    """Runs the real ``gastown`` command as a black box: its own process, forked from a
    pre-imported template (tests/cli_template.py: the same entry point as the executable,
    without Python's start; ``GASTOWN_TEST_CLI=exec`` starts each one afresh)."""

    cwd: Path
    env: dict[str, str]

    def __call__(self, *args: str, cwd: Path | None = None, stdin: str | None = None,
                 timeout: float = 120) -> CliResult:
        code, out, err = cli_template.run(list(args), cwd=cwd or self.cwd, env=self.env,
                                          stdin=stdin, timeout=timeout)
        assert "Traceback" not in err, err
        return CliResult(code, out, err)

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        result = self(*args, cwd=cwd)
        assert result.code == 0, f"gastown {' '.join(args)} -> {result.code}: {result.err}"
        return result.out


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield Cli(cwd=tmp_path, env=dict(os.environ))


@pytest.fixture
def town(tmp_path: Path, cli: Cli) -> Path:
    """An installed town at ``tmp_path/town``; ``cli`` is pointed at it through the env."""
    root = tmp_path / "town"
    cli.ok("install", str(root))
    cli.env["GASTOWN_TOWN"] = str(root)
    return root


@pytest.fixture(scope="session")
def agent_clis() -> AgentClis:
    """The pinned real agent CLIs (``make agent-clis``); skipped when not installed, except
    under CI=true, where the agent CLI tests must run."""
    found = agent_clis_install.find()
    if found is None:
        why = agent_clis_install.problem(agent_clis_install.install_dir())
        reason = f"the pinned agent CLIs are not installed ({why}); run `make agent-clis`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[ModelServer]:
    """A scripted model server on loopback (tests/scripted_model), logging under tmp_path."""
    with ModelServer(tmp_path / "model-server.jsonl") as server:
        yield server

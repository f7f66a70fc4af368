"""The demo's sample project (a tiny calculator with its tests) and the beads its agents
work on."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

SETTLE_TIMEOUT = 300.0

SAMPLE_FILES = {
    "README.md": "# calc\n\nA tiny calculator the demo's agents improve.\n\n"
                 "Run the tests with `python -m unittest discover -s tests -t .`.\n",
    "calc/__init__.py": '"""calc: a tiny calculator."""\n',
    "calc/core.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    "calc/version.py": 'VERSION = "1.0"\n',
    "tests/__init__.py": "",
    "tests/test_core.py": textwrap.dedent("""\
        import unittest

        from calc.core import add, mul


        class CoreTest(unittest.TestCase):
            def test_add(self):
                self.assertEqual(add(2, 3), 5)

            def test_mul(self):
                self.assertEqual(mul(4, 5), 20)
        """),
}


def _new_function(module: str, name: str, body: str, call: str, result: str) -> str:
    """A bead script adding ``calc/<module>.py`` with one function and its own test file."""
    return textwrap.dedent(f"""\
        cat > calc/{module}.py <<'EOF'
        def {name}:
            return {body}
        EOF
        cat > tests/test_{module}.py <<'EOF'
        import unittest

        from calc.{module} import {name.split("(")[0]}


        class Test(unittest.TestCase):
            def test_{module}(self):
                self.assertEqual({call}, {result})
        EOF
        """)


def _release(version: str) -> str:
    """A bead script rewriting the one line of ``calc/version.py``."""
    return ("# start late, so that its rival is surely slung from the same main\n"
            "sleep 1\n"
            f"printf 'VERSION = \"{version}\"\\n' > calc/version.py\n")


@dataclass(frozen=True)
class DemoBead:
    title: str
    script: str
    expect: str  # "merged", "gate", or "pair" (one of the pair lands, the other conflicts)


DEMO_BEADS = [
    DemoBead("Add subtraction", _new_function("sub", "sub(a, b)", "a - b", "sub(7, 2)", "5"),
             "merged"),
    DemoBead("Add integer division",
             _new_function("div", "div(a, b)", "a // b", "div(17, 5)", "3"), "merged"),
    DemoBead("Add power", _new_function("power", "power(a, n)", "a ** n", "power(2, 10)",
                                        "1024"), "merged"),
    DemoBead("Add mean", _new_function("mean", "mean(xs)", "sum(xs) / len(xs)",
                                       "mean([1, 2, 3, 6])", "3"), "merged"),
    DemoBead("Release as 1.1", _release("1.1"), "pair"),
    DemoBead("Release as 2.0", _release("2.0"), "pair"),
    DemoBead("Make add faster", "# an optimisation that breaks add: the test gate stops it\n"
                                "sed -i 's/return a + b/return a - b/' calc/core.py\n", "gate"),
]


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_AUTHOR_NAME", "gastown demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@gastown.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    return env


def git(*args: str, cwd: Path, echo: bool = False) -> str:
    if echo:
        print(f"\n$ git -C {cwd} {shlex.join(args)}", flush=True)
    out = subprocess.run(["git", *args], cwd=cwd, env=_git_env(), check=True,
                         capture_output=True, text=True).stdout
    if echo:
        sys.stdout.write(out)
    return out


def test_command() -> str:
    """The rig's test gate: the project's own tests, run by this interpreter."""
    return f"{shlex.quote(sys.executable)} -m unittest discover -q -s tests -t ."


def make_sample_repo(path: Path, remote: Path) -> None:
    """The sample project as a git repository, and a bare clone of it as its remote."""
    for name, text in SAMPLE_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "calc: first version", cwd=path)
    subprocess.run([sys.executable, "-m", "unittest", "discover", "-q", "-s", "tests", "-t",
                    "."], cwd=path, check=True, capture_output=True)
    git("clone", "-q", "--bare", str(path), str(remote), cwd=path.parent)




def model_script(title: str, script: str) -> str:
    """A demo bead for a real agent CLI driven by the scripted model server (tests/
    scripted_model): one shell command per step — the bead's script (sent whole, so that
    its here-documents survive), a commit, then `gastown done`."""
    packed = base64.b64encode(script.encode()).decode()
    return ("The scripted model makes the agent run these commands, one per step.\n"
            "SCRIPT-BEGIN\n"
            f"printf %s {packed} | base64 -d | sh\n"
            f"git add -A && git commit -qm {shlex.quote(title)}\n"
            "gastown done\n"
            "SCRIPT-END\n"
            "NUDGE-BEGIN\ngastown done\nNUDGE-END\n")


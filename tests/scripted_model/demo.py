"""``make demo AGENT=claude|codex``: the demo town with a real agent CLI in its polecats.

The pinned CLI (``make agent-clis``) runs for real; its model is the scripted server of
the tests on loopback, so no account or network is needed. The CLI sees a fresh ``HOME``
(nothing of yours is read or written) holding only what a user would set up: an API key
in the environment for Claude, a provider in ``~/.codex/config.toml`` for Codex.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.scripted_model import ModelServer, clis


def main(argv: list[str]) -> int:
    agent = argv[0] if argv else "claude"
    if agent not in ("claude", "codex"):
        print(f"demo: AGENT must be claude or codex, not {agent!r}", file=sys.stderr)
        return 2
    found = clis.find()
    if found is None:
        print("demo: the pinned agent CLIs are not installed; run `make agent-clis`",
              file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="gastown-demo-agent-"))
    home = work / "home"
    (home / ".codex").mkdir(parents=True)
    with ModelServer(work / "model-server.jsonl") as server:
        (home / ".codex" / "config.toml").write_text(
            'model = "gpt-5-codex"\nmodel_provider = "scripted"\n'
            '[model_providers.scripted]\nname = "scripted"\n'
            f'base_url = "{server.url}/v1"\nwire_api = "responses"\n'
            'env_key = "SCRIPTED_MODEL_KEY"\n')
        os.environ.update({
            "HOME": str(home), "PATH": f"{found.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": "sk-ant-demo-0123456789abcdefghijklmnop",
            "SCRIPTED_MODEL_KEY": "sk-scripted", "DISABLE_AUTOUPDATER": "1",
        })
        os.environ.pop("CLAUDE_CONFIG_DIR", None)
        os.environ.pop("CODEX_HOME", None)
        print(f"scripted model server: {server.url} (requests logged in {server.log_path})")
        from demo.__main__ import main as demo_main

        return demo_main(["--agent", agent, *argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Removing a folder tree whatever its modes: ``rm -rf`` for worktrees and staging leftovers.

Layer: a roles adapter (the file system), used by :mod:`.git` for what ``git worktree
remove`` leaves behind and by ``doctor`` for an interrupted ``rig add``'s staging folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def remove_tree(path: Path) -> None:
    """``rm -rf path``, making read-only folders writable first (upstream #618's chmod retry).

    A symbolic link, a file or anything else that is not a folder is unlinked itself
    (a link is never followed). Raises :class:`OSError` when something cannot be removed.
    """
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for folder, _dirs, _files in os.walk(path):
        os.chmod(folder, 0o700)
    shutil.rmtree(path)

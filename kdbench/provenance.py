"""Where a result came from: the git commit of the kdbench source, when it is run from a git checkout."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The commit of the checkout holding kdbench's source (with ``+dirty`` when files differ from it), or None when
    kdbench is installed from a wheel, git is missing, or the folder is no checkout."""
    source = Path(__file__).resolve().parent.parent
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(source), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != source:
            return None  # kdbench sits inside some other repository (e.g. a virtualenv in a project's checkout)
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "kdbench"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")

"""Where a model or a benchmark figure came from: the checked-out commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def git_commit(start: Path | None = None) -> str:
    """The commit checked out at ``start`` (default: this package's folder), or "unknown".

    "unknown" outside a git work tree or without a ``git`` binary (an installed wheel, the
    Docker image): provenance is recorded when it can be, never required.
    """
    folder = (start or Path(__file__)).resolve()
    if not folder.is_dir():
        folder = folder.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return out.stdout.strip() or UNKNOWN

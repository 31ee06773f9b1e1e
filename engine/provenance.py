"""Where an artifact came from: the checkout it was made by, and the project's own folders.

Datasets, compiled models and evaluation runs record `git_revision()` beside their config and seed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or installed tree) that holds `engine/`, `sample_flows/` and `assets/`."""


def git_revision() -> str | None:
    """HEAD of the checkout, with `+dirty` when tracked files changed; None outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

"""Which local files a user-typed path may load: only those under directories the server allows.

The check is pure path arithmetic on the *resolved* path (``..`` collapsed, symlinks followed), so a
link inside an allowed directory that points outside it is refused. It never opens the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from core.numerics.specs import hub_checkpoint_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


class PathNotAllowed(ValueError):
    """A path that resolves outside every allowed directory; the message names the allowed ones."""

    def __init__(self, path: str | Path, roots: Sequence[Path]):
        self.path = str(path)
        self.roots = [str(root) for root in roots]
        allowed = ", ".join(self.roots) or "none configured"
        super().__init__(
            f"{self.path} is not inside an allowed checkpoint directory (allowed: {allowed}). "
            "Copy the file into one of them, or ask the server's administrator to add its directory to "
            "[paths] checkpoint_dirs in dashboard/config.toml."
        )


def default_checkpoint_dirs() -> list[Path]:
    """The torch hub checkpoint cache (where fair-esm keeps pretrained weights) and ./checkpoints of the repo."""
    return [hub_checkpoint_dir(), REPO_ROOT / "checkpoints"]


def resolve_dirs(entries: Sequence[str | Path], base: Path = REPO_ROOT) -> list[Path]:
    """Configured directory entries as absolute paths: ``~`` expanded, relative ones taken from ``base``."""
    resolved = []
    for entry in entries:
        path = Path(entry).expanduser()
        resolved.append(path if path.is_absolute() else base / path)
    return resolved


def allowed_path(path: str | Path, roots: Sequence[str | Path]) -> Path:
    """The real path of ``path`` (symlinks resolved) if it lies under one of ``roots``.

    A relative ``path`` is taken from the current directory. Raises PathNotAllowed (a ValueError)
    otherwise, including for an empty path. The file itself is never opened.
    """
    roots = [Path(os.path.realpath(Path(root).expanduser())) for root in roots]
    text = str(path).strip()
    if not text:
        raise PathNotAllowed("(empty path)", roots)
    real = Path(os.path.realpath(Path(text).expanduser()))
    if any(real.is_relative_to(root) for root in roots):
        return real
    raise PathNotAllowed(text, roots)

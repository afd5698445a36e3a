"""What the server decides, from dashboard/config.toml (and two environment variables): the v2.0
plug-ins a browser may pick, the runs directory and history sharing, the embedding cache, and the
directories a typed checkpoint path may point into. Nothing here is typed into a browser."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from core.embed.cache_store import CACHE_ENV
from core.embed.plugins import PluginError
from core.numerics.specs import ModelSpec
from dashboard.paths import allowed_path, default_checkpoint_dirs, resolve_dirs


BUILTIN_V2 = {"packed": "This project's packed path (v2.0)", "fallback": "v1-compatible fallback"}

CONFIG_FILE = Path(__file__).with_name("config.toml")

RUNS_DIR_ENV = "ESM2_RUNS_DIR"  # overrides [runs] dir (tests point it at a temporary directory)

DEFAULT_RUNS_DIR = "runs"


def server_config() -> dict[str, Any]:
    """dashboard/config.toml as a dict (empty when the file is absent)."""
    return tomllib.loads(CONFIG_FILE.read_text()) if CONFIG_FILE.is_file() else {}


def v2_plugins() -> dict[str, str]:
    """Plug-ins the server offers: label -> module:factory, from dashboard/config.toml."""
    return dict(server_config().get("v2_plugins", {}))


def runs_dir() -> Path:
    """Where runs are saved: $ESM2_RUNS_DIR, else [runs] dir (relative to the repository), else ./runs."""
    configured = os.environ.get(RUNS_DIR_ENV) or server_config().get("runs", {}).get("dir", DEFAULT_RUNS_DIR)
    return resolve_dirs([configured])[0]


def shared_history() -> bool:
    """[runs] shared_history: list every run in the directory, not only this session's."""
    return bool(server_config().get("runs", {}).get("shared_history", False))


def cache_dir() -> Path | None:
    """The embedding cache directory: $ESM2_DIVERGENCE_CACHE, else [cache] dir (relative to the
    repository); None (the cache is off) when both are empty."""
    configured = os.environ.get(CACHE_ENV) or server_config().get("cache", {}).get("dir", "")
    return resolve_dirs([configured])[0] if configured else None


def checkpoint_dirs() -> list[Path]:
    """[paths] checkpoint_dirs (relative ones from the repository root), else the torch hub
    checkpoint cache and ./checkpoints."""
    configured = server_config().get("paths", {}).get("checkpoint_dirs")
    return resolve_dirs(configured) if configured is not None else default_checkpoint_dirs()


def checked_model_spec(spec: str) -> str:
    """A model name unchanged, or a typed checkpoint path as its real path if it lies under an allowed
    directory; raises dashboard.paths.PathNotAllowed (a ValueError) otherwise, without touching the file."""
    if ModelSpec.is_named(spec):
        return spec
    return str(allowed_path(spec, checkpoint_dirs()))


def weights_token(spec: str) -> str:
    """Size and mtime of a checkpoint file, so an overwritten file is reloaded."""
    path = Path(spec).expanduser()
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return ""


def candidate_for(choice: str) -> str:
    """The comparison's v2.0 for a sidebar choice: 'packed', 'fallback', or the module:factory of a plug-in
    the server offers (PluginError for a label it does not)."""
    if choice in BUILTIN_V2:
        return choice
    plugins = v2_plugins()
    if choice not in plugins:
        raise PluginError(f"no v2.0 plug-in called {choice!r} in {CONFIG_FILE.name}")
    return plugins[choice]

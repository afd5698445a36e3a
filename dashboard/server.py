"""What the server decides, from dashboard/config.toml (or the file $ESM2_DASHBOARD_CONFIG names) and two
environment variables: the models and v2.0 plug-ins a browser may pick, the directories a typed
checkpoint path may point into, whether a link may start a run, the page's per-run sequence limit, the
runs directory and history sharing, and the embedding cache. Nothing here is typed into a browser."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Sequence

from core.embed.cache_store import CACHE_ENV
from core.embed.plugins import PluginError
from core.numerics.environment import default_device
from core.numerics.specs import ModelSpec, default_model_spec
from dashboard.paths import PathNotAllowed, allowed_path, default_checkpoint_dirs, resolve_dirs


BUILTIN_V2 = {"packed": "This project's packed path (v2.0)", "fallback": "v1-compatible fallback"}

CONFIG_FILE = Path(__file__).with_name("config.toml")

CONFIG_ENV = "ESM2_DASHBOARD_CONFIG"  # another config file: a deployment's settings outside the checkout

RUNS_DIR_ENV = "ESM2_RUNS_DIR"  # overrides [runs] dir (tests point it at a temporary directory)

DEFAULT_RUNS_DIR = "runs"

DEMO_MODELS = ("demo-8M", "demo-35M")  # offered besides the default model when [models] allowed is not set

DEFAULT_MAX_SEQUENCES = 10_000  # [limits] max_sequences when not set


class ModelNotAllowed(ValueError):
    """A model name the server does not offer to browsers; the message names the allowed ones."""

    def __init__(self, model: str, allowed: Sequence[str]):
        self.model, self.allowed = model, list(allowed)
        super().__init__(
            f"model {model!r} is not offered on this server (allowed: {', '.join(self.allowed)}). Ask the "
            "server's administrator to add it to [models] allowed in dashboard/config.toml."
        )


NOT_ALLOWED = (PathNotAllowed, ModelNotAllowed)
"""What checked_model_spec raises for a model or checkpoint path a browser may not use."""


def config_file() -> Path:
    """The server's config file: $ESM2_DASHBOARD_CONFIG when set, else dashboard/config.toml."""
    return Path(os.environ[CONFIG_ENV]).expanduser() if os.environ.get(CONFIG_ENV) else CONFIG_FILE


def server_config() -> dict[str, Any]:
    """The server's config file as a dict (empty when the file is absent)."""
    path = config_file()
    return tomllib.loads(path.read_text()) if path.is_file() else {}


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


def runs_quota_bytes() -> int | None:
    """[runs] quota_gb in bytes: the most the runs folder may hold before the oldest finished runs are
    removed to make room (dashboard.quota); None (no limit) when absent, 0 or not a positive number."""
    value = server_config().get("runs", {}).get("quota_gb")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value * 1e9)


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


def model_name(text: object) -> str | None:
    """A pretrained or demo model name as the parser spells it ('DEMO-8m' -> 'demo-8M'); None for
    anything else (a path, an unknown demo size, not a string)."""
    if not isinstance(text, str) or not ModelSpec.is_named(text):
        return None
    try:
        return ModelSpec.parse(text).name
    except ValueError:
        return None


def allowed_models() -> list[str]:
    """The model names a browser may choose: [models] allowed (entries that are not ESM-2 or demo-<size>
    names are ignored); when that is absent or empty, the model the page loads by default, demo-8M and
    demo-35M. Local checkpoint files are governed by checkpoint_dirs instead."""
    configured = server_config().get("models", {}).get("allowed") or []
    names = [name for name in map(model_name, configured) if name is not None]
    if not names:
        names = [default_model_spec(default_device()), *DEMO_MODELS]
    return list(dict.fromkeys(names))


def links_autorun() -> bool:
    """[links] autorun: a link with ?example= starts its run on open (default false: it fills the input
    and waits for Run, so no link can start GPU work by itself)."""
    return bool(server_config().get("links", {}).get("autorun", False))


def max_sequences() -> int | None:
    """[limits] max_sequences: the most sequences one run from the page may have (default 10,000);
    0 or less: no limit. The command line has none."""
    limit = int(server_config().get("limits", {}).get("max_sequences", DEFAULT_MAX_SEQUENCES))
    return limit if limit > 0 else None


def sequence_limit_message(n_sequences: int, limit: int | None) -> str | None:
    """Why an input of ``n_sequences`` cannot run from the page, or None when it can."""
    if limit is None or n_sequences <= limit:
        return None
    return (f"{n_sequences:,} sequences is more than this server runs from the page ({limit:,} per run); "
            "nothing was queued. Split the input, or run it with the command line, which has no limit.")


def checked_model_spec(spec: str) -> str:
    """A model name the server allows (as the parser spells it), or a typed checkpoint path as its real
    path if it lies under an allowed directory. Raises ModelNotAllowed or dashboard.paths.PathNotAllowed
    (both ValueErrors, both in NOT_ALLOWED) otherwise, without touching the file."""
    if ModelSpec.is_named(spec):
        name, allowed = model_name(spec), allowed_models()
        if name not in allowed:
            raise ModelNotAllowed(spec, allowed)
        return name
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
        raise PluginError(f"no v2.0 plug-in called {choice!r} in {config_file().name}")
    return plugins[choice]

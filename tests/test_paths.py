"""core.paths.allowed_path: a typed checkpoint path may only reach files under allowed directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dashboard.paths import allowed_path, default_checkpoint_dirs, PathNotAllowed, resolve_dirs


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "model.pt").write_bytes(b"weights")
    (outside / "secret.pt").write_bytes(b"secret")
    return {"allowed": allowed, "outside": outside}


def test_a_file_under_an_allowed_directory_is_returned_resolved(tree):
    path = tree["allowed"] / "sub" / "model.pt"
    assert allowed_path(str(path), [tree["allowed"]]) == path.resolve()
    assert allowed_path(tree["allowed"] / "sub" / ".." / "sub" / "model.pt", [tree["allowed"]]) == path.resolve()


def test_dot_dot_out_of_the_allowed_directory_is_refused(tree):
    sneaky = tree["allowed"] / ".." / "outside" / "secret.pt"
    with pytest.raises(PathNotAllowed) as refused:
        allowed_path(sneaky, [tree["allowed"]])
    assert str(tree["allowed"].resolve()) in str(refused.value), "the message names the allowed directories"


def test_a_symlink_inside_that_points_outside_is_refused(tree):
    link = tree["allowed"] / "innocent.pt"
    link.symlink_to(tree["outside"] / "secret.pt")
    with pytest.raises(PathNotAllowed):
        allowed_path(link, [tree["allowed"]])
    linked_dir = tree["allowed"] / "linked"
    linked_dir.symlink_to(tree["outside"], target_is_directory=True)
    with pytest.raises(PathNotAllowed):
        allowed_path(linked_dir / "secret.pt", [tree["allowed"]])


def test_a_symlinked_allowed_root_still_allows_its_files(tree, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(tree["allowed"], target_is_directory=True)
    assert allowed_path(alias / "sub" / "model.pt", [alias]) == (tree["allowed"] / "sub" / "model.pt").resolve()


def test_absolute_paths_outside_and_prefix_lookalikes_are_refused(tree, tmp_path):
    lookalike = tmp_path / "allowed-not"
    lookalike.mkdir()
    (lookalike / "x.pt").write_bytes(b"x")
    for path in ("/etc/passwd", str(tree["outside"] / "secret.pt"), str(lookalike / "x.pt"), "", "   "):
        with pytest.raises(PathNotAllowed):
            allowed_path(path, [tree["allowed"]])
    with pytest.raises(ValueError):  # a subclass of ValueError, so callers' existing handlers catch it
        allowed_path("/etc/passwd", [])


def test_relative_paths_are_taken_from_the_current_directory(tree, monkeypatch):
    monkeypatch.chdir(tree["allowed"])
    assert allowed_path("sub/model.pt", [tree["allowed"]]) == (tree["allowed"] / "sub" / "model.pt").resolve()
    with pytest.raises(PathNotAllowed):
        allowed_path("../outside/secret.pt", [tree["allowed"]])


def test_the_check_never_opens_the_file(tree, monkeypatch):
    import builtins

    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(PathNotAllowed):
        allowed_path(tree["outside"] / "secret.pt", [tree["allowed"]])
    allowed_path(tree["allowed"] / "sub" / "model.pt", [tree["allowed"]])
    assert opened == []


def test_default_and_configured_directories(tmp_path):
    defaults = default_checkpoint_dirs()
    assert defaults[0].name == "checkpoints" and defaults[1].name == "checkpoints"
    home = Path(os.path.expanduser("~"))
    assert resolve_dirs(["~/ckpt", "rel", "/abs"], base=tmp_path) == [home / "ckpt", tmp_path / "rel", Path("/abs")]

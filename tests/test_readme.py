"""The README points each claim at the test that proves it: every test it names must exist.

References are written `test_file.py::test_name` (a full name), `test_file.py::test_prefix…` (a name
that starts so), or `::test_name…` after one of those (the same file); a file is under tests/ or
tests/integration/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`(?:((?:integration/)?test_\w+\.py)(?:::(test_\w+)(…)?)?|::(test_\w+)(…)?)")
DEFINITION = re.compile(r"^(?:async )?def (test_\w+)", re.MULTILINE)


def defined_tests() -> dict[str, set[str]]:
    """file name (relative to tests/) -> the test functions it defines."""
    return {str(path.relative_to(ROOT / "tests")): set(DEFINITION.findall(path.read_text()))
            for path in (ROOT / "tests").rglob("test_*.py")}


def unresolved(text: str, defined: dict[str, set[str]]) -> list[str]:
    """The references in ``text`` that name no file, or no test of their file."""
    missing, current = [], None
    for match in REFERENCE.finditer(text):
        path, name, prefix, bare_name, bare_prefix = match.groups()
        if path is not None:
            current = path if path in defined else f"integration/{path}"  # the GPU tests, named by file
            if current not in defined:
                missing.append(path)
                continue
        name, prefix = name or bare_name, prefix or bare_prefix
        if name is None:
            continue
        tests = defined.get(current or "", set())
        found = any(test.startswith(name) for test in tests) if prefix else name in tests
        if not found:
            missing.append(f"{current}::{name}{prefix or ''}")
    return missing


def test_every_test_the_readme_names_exists():
    defined = defined_tests()
    text = (ROOT / "README.md").read_text()
    assert len(REFERENCE.findall(text)) > 50
    assert unresolved(text, defined) == []


def test_a_renamed_test_would_be_caught():
    defined = {"test_a.py": {"test_one_thing", "test_another"}}
    assert unresolved("`test_a.py::test_one_thing`, `::test_another`, `::test_one…`", defined) == []
    assert unresolved("`test_a.py::test_gone`, `::test_an…`, `test_b.py`", defined) == ["test_a.py::test_gone",
                                                                                       "test_b.py"]
    assert unresolved("`test_a.py::test_one`", defined) == ["test_a.py::test_one"]  # a full name must match whole
    assert unresolved("`test_gpu.py::test_x`", {"integration/test_gpu.py": {"test_x"}}) == []

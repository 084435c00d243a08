"""The shape of the code base (issue 12): small modules, no import cycles, and
tests laid out as the package is."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "gilfree"
TESTS = ROOT / "tests"
#: "No module above about 450 lines": the bound, with the slack "about" gives.
MAX_LINES = 470


def test_no_module_is_longer_than_about_450_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_there_are_no_import_cycles() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with the dev extra (import-linter)")
    graph = grimp.build_graph("gilfree")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.find_shortest_chain(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_tests_mirror_the_package() -> None:
    """Each subpackage of gilfree has its tests in a folder of the same name."""
    subpackages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    missing = [
        name for name in subpackages if not list((TESTS / name.lstrip("_")).glob("test_*.py"))
    ]
    assert not missing, f"subpackages without tests/<name>/test_*.py: {missing}"

"""Any set of test folders collects together in one pytest run.

The folders under ``tests/`` are not packages (only ``tests/support`` is), so pytest imports a
test module, a ``conftest.py`` and the helpers beside them by their bare file name, with their
folder put on ``sys.path``. Two such modules with one name cannot both be imported in one run,
and a ``from conftest import ...`` gets whichever folder's conftest was imported first: running
``tests/integration/webhooks tests/integration/api`` together failed at collection that way.
What tests share beyond their folder's fixtures lives in a module with a name of its own.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _loose_modules() -> list[Path]:
    """The modules imported by bare name: those outside a package (``tests/support`` is one)."""
    return sorted(
        path
        for path in TESTS.rglob("*.py")
        if not (path.parent / "__init__.py").exists() and "corpus" not in path.parts
    )


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_no_module_imports_a_conftest() -> None:
    importers = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if "corpus" not in path.parts and "conftest" in _imported_names(path)
    ]
    assert importers == [], "a conftest is no module to import from: share through a helper"


def test_modules_imported_by_bare_name_have_names_of_their_own() -> None:
    named = Counter(path.stem for path in _loose_modules() if path.name != "conftest.py")
    twice = sorted(name for name, count in named.items() if count > 1)
    assert twice == []

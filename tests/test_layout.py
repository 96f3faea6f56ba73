"""The packages depend one way: the engine on none of the others, training and export on the
engine and never on the server (docs/design.md)."""

import ast
from pathlib import Path

from conftest import ROOT

FORBIDDEN = {"engine": ("service", "models", "export"), "models": ("service", "export"), "export": ("service",)}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_each_package_imports_only_what_it_may():
    wrong = [f"{path.relative_to(ROOT)} imports {name}"
             for package, forbidden in FORBIDDEN.items() for path in sorted((ROOT / package).rglob("*.py"))
             for name in imported(path) & set(forbidden)]
    assert not wrong, wrong
    assert len(list((ROOT / "engine").rglob("*.py"))) > 10  # the walk found the packages

"""Imports run one way: every module imports only from its own layer's package or from lower layers.

The walk reads every `import` in every module (inside functions too), so a deferred import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ember

ROOT = Path(ember.__file__).parent

# Lowest first. Packages on one row are siblings: neither imports the other.
LAYERS: list[set[str]] = [
    {"errors"},
    {"core"},
    {"config"},
    {"data", "hub"},  # hub: downloads that models resolves ids through, uploads + cards that training/export use
    {"models"},
    {"planning"},
    {"training", "inference"},
    {"serving", "evaluation", "vocab", "export"},
    {"cli"},
    {"__main__", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ember":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from ember import data` names a package, not a symbol of ember/__init__
            if node.module == "ember":
                found += [(node.lineno, f"ember.{alias.name}") for alias in node.names]
    return found


def layer_violations() -> list[str]:
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else "__init__"
        if own not in RANK:
            problems.append(f"{rel}: package '{own}' has no layer in tests/test_layers.py")
            continue
        for line, module in _imports(path):
            target = _package(module)
            if target is None or target == own:
                continue
            if module == "ember" or target == "__init__":
                continue  # the top package itself (version string, public API) is not a layer import
            if target not in RANK:
                problems.append(f"{rel}:{line}: imports unknown package ember.{target}")
            elif RANK[target] >= RANK[own]:
                kind = "a sibling" if RANK[target] == RANK[own] else "a higher layer"
                problems.append(f"{rel}:{line}: ember.{own} imports {module} ({kind})")
    return problems


def test_imports_only_run_downward():
    assert layer_violations() == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ember.serving.api import build_app\n", encoding="utf-8")
    assert _imports(module) == [(2, "ember.serving.api")]

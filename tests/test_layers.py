"""The library's layers import only downward, and ``ssft`` never imports Ray.

Layers, bottom to top (README, "Layout and architecture"): the low-level modules directly in
``ssft/`` (errors, atomic I/O, tracking, models, the final-model contract, ...), then
``ssft.method``, ``ssft.data``, ``ssft.config``, ``ssft.eval``, ``ssft.train``,
``ssft.report``. Every import (also one inside a function) is read from the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ssft"
LAYERS = ("core", "method", "data", "config", "eval", "train", "report")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ROOT / parts[1]).is_dir() else "core"


def _imports(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def violations(source: str, module: str) -> list[str]:
    """Imports of ``source`` (the module ``module``) that go up a layer, or to Ray."""
    rank, found, seen = LAYERS.index(_layer(module)), [], set()
    for line, target in _imports(source):
        top = target.split(".")[0]
        if top in ("ray", "workflows") and (line, top) not in seen:
            found.append(f"line {line}: {target} (ssft never imports Ray or workflows)")
            seen.add((line, top))
        elif top == "ssft" and target != "ssft" and LAYERS.index(_layer(target)) > rank:
            if (line, _layer(target)) not in seen:  # once per import statement and layer
                found.append(f"line {line}: {target} ({_layer(target)}, above {_layer(module)})")
                seen.add((line, _layer(target)))
    return found


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_in_a_known_layer():
    assert {_layer(_module_name(p)) for p in SOURCES} <= set(LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_only_downward_and_never_to_ray(path):
    assert violations(path.read_text(encoding="utf-8"), _module_name(path)) == [], path


def test_the_check_catches_an_upward_import_and_ray():
    source = "import numpy\nfrom ssft.method import sequences\n\n\ndef f():\n"
    source += "    from ssft.train.loop import train\n    import ray.train\n"
    assert violations(source, "ssft.method.losses") == [
        "line 6: ssft.train.loop (train, above method)",
        "line 7: ray.train (ssft never imports Ray or workflows)",
    ]
    assert violations(source, "ssft.report.train") == [
        "line 7: ray.train (ssft never imports Ray or workflows)"
    ]

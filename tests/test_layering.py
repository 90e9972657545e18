"""Layering (issue 14): which packages of l4_sglang may import which.

The router runs in front of real SGLang workers, so it needs nothing of the
emulated one; traces are data and know nothing of the policies replaying them;
the shared tokenizer belongs to neither side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import l4_sglang

PACKAGE = Path(l4_sglang.__file__).parent

FORBIDDEN = {
    "router": ("l4_sglang.worker", "l4_sglang.emulated_worker"),
    "workload": ("l4_sglang.policy", "l4_sglang.sim", "l4_sglang.router"),
    "text": ("l4_sglang.worker", "l4_sglang.router"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package):
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files, f"no modules under {package}/"
    bad = [
        f"{f.name}: {name}"
        for f in files
        for name in sorted(_imports(f))
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[package])
    ]
    assert not bad, bad

"""Policies hold no clocks, sockets, threads or files: time is an argument."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import l4_sglang.policy

FORBIDDEN = {"time", "datetime", "asyncio", "threading", "socket", "aiohttp", "os", "subprocess", "requests"}
SOURCES = sorted(Path(l4_sglang.policy.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_policy_module_imports_nothing_that_reads_the_world(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"open", "print", "input"}

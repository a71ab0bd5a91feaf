"""Layering the import contracts cannot see: private kopf modules (kopf is one node to them)."""

from __future__ import annotations

import ast

from gyre.manifests import repo_root

ROOT = repo_root()


def test_no_private_kopf_api() -> None:
    """handlers.py imported kopf._core.actions.execution.HandlerChildrenRetry, which any kopf
    release may move; only names kopf exports publicly are used."""
    offenders = []
    for path in sorted([*(ROOT / "operators" / "gyre").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("kopf._")]
    assert offenders == []

"""The dependency direction of DESIGN.md: node → analyzers.contract/registry only; analyzers ↛ node."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FROM_NODE = {"analyzers", "analyzers.contract", "analyzers.registry"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names
                         if node.module == "analyzers")
    return names


def test_node_imports_only_the_analyzer_contract_and_registry() -> None:
    offenders = []
    for path in sorted((ROOT / "node").rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] == "analyzers" and name not in ALLOWED_FROM_NODE:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
            if name.split(".")[0] in {"torch", "torchvision", "nnunetv2", "radiomics"}:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_analyzers_and_templates_never_import_node() -> None:
    offenders = []
    for folder in ("analyzers", "sr_templates"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in _imports(path):
                if name == "node" or name.startswith("node."):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []

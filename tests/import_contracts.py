"""A custom import-linter contract: no module imports another package's private names.

    [[tool.importlinter.contracts]]
    type = "no_private_names"
    containers = ["engine"]

`from engine.train.loop import _swap_in` inside `engine.train.distributed` is fine (same package);
inside `engine.cli.compile` it breaks the contract. A private name is one that starts with `_`
(dunders excepted). Registered in pyproject.toml under `contract_types`; `lint-imports` puts the
project root on sys.path, so this file is importable as `tests.import_contracts`.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class NoPrivateNamesContract(Contract):
    type_name = "no_private_names"

    containers = fields.SetField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        broken = []
        for container in sorted(self.containers):
            for module in sorted(graph.find_descendants(container) | {container}):
                for line, imported, name in _private_imports(module):
                    if _package(imported) != _package(module):
                        broken.append({"importer": module, "imported": imported, "name": name, "line": line})
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for b in check.metadata["broken"]:
            output.print_error(f"{b['importer']} (line {b['line']}) imports the private name {b['name']} "
                               f"of {b['imported']}: make it public in its own module, or move the code.",
                               bold=False)
            output.new_line()


def _package(module: str) -> str:
    spec = importlib.util.find_spec(module)
    is_package = bool(spec and spec.submodule_search_locations)
    return module if is_package else module.rpartition(".")[0]


def _private_imports(module: str) -> list[tuple[int, str, str]]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    package = _package(module)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)] if node.level > 1 else parent
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((node.lineno, base, alias.name))
    return found

"""Import contracts of the two packages, read from the source with ``ast`` (nothing is imported).

1. ``probe`` never imports ``editing`` (``editing`` builds on ``probe``, never the reverse).
2. No import cycles between modules: every ``import`` counts, at module level, inside functions
   (a cycle hidden in a function is still a cycle) and under ``if TYPE_CHECKING:``.
3. The command-line modules (``probe/cli``, ``editing/cli``) reach no heavy library (torch,
   numpy, matplotlib, ...) through their module-level imports, parent packages included, so
   ``attnprobe --help`` stays fast. Heavy imports belong inside the command functions. The
   same contract is checked once at run time too, with every registered command loaded.

The checker runs on the real tree, and on small planted trees to show that it fails when it
should.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe", "editing")
CLI_PACKAGES = ("probe.cli", "editing.cli")
HEAVY = frozenset(
    {"torch", "diffusers", "transformers", "sklearn", "matplotlib", "scipy", "numpy", "PIL"}
)


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a module name.

    Attributes:
        source: the importing module (``probe.attention.hooks``).
        target: the imported module; an internal one resolved to a module or package of the
            tree (``from probe.viz import image_grid`` → ``probe.viz``), an external one to
            its top-level name (``torch``).
        line: line number in the source.
        at_import: runs when the module is imported (module level, not under TYPE_CHECKING).
    """

    source: str
    target: str
    line: int
    at_import: bool


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``packages`` under ``root``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of the tree, else its top-level name."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: list[Import] = []
        self.depth = 0  # inside a function, or under `if TYPE_CHECKING:`

    def _add(self, name: str, node: ast.stmt) -> None:
        target = _resolve(name, self.modules)
        self.found.append(Import(self.module, target, node.lineno, self.depth == 0))

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.depth += 1
        for child in node.body:
            self.visit(child)
        self.depth -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one more level up per dot
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if full in self.modules else base, node)


def collect_imports(modules: dict[str, Path]) -> dict[str, list[Import]]:
    """Module → its imports (self-imports left out)."""
    out = {}
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        out[name] = [i for i in collector.found if i.target != name]
    return out


def upward_imports(imports: dict[str, list[Import]]) -> list[str]:
    """``probe`` modules that import ``editing`` (any import, at any level)."""
    return [
        f"{i.source}:{i.line} imports {i.target}"
        for name, found in imports.items()
        if name.split(".")[0] == "probe"
        for i in found
        if i.target.split(".")[0] == "editing"
    ]


def import_cycles(imports: dict[str, list[Import]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules (Tarjan)."""
    graph = {
        m: sorted({i.target for i in found if i.target in imports}) for m, found in imports.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(group)[0], group, graph) for group in groups]


def _cycle_in(start: str, group: set[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in graph[node]:
            if nxt == start:
                return [*paths[node], start]
            if nxt in group and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def _parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for n in range(1, len(parts)):
        yield ".".join(parts[:n])


def heavy_chains(
    imports: dict[str, list[Import]], cli: tuple[str, ...] = CLI_PACKAGES
) -> list[str]:
    """For each command-line module that loads a heavy library when imported, the chain to it.

    Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so parent packages
    count; imports inside functions and under TYPE_CHECKING do not run and do not count.
    """
    problems = []
    for start in sorted(m for m in imports if m.split(".")[:2] in [c.split(".") for c in cli]):
        seen = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            nexts = [*_parents(node), *(i.target for i in imports[node] if i.at_import)]
            for nxt in nexts:
                if nxt in HEAVY:
                    problems.append(" -> ".join([*seen[node], nxt]))
                    queue = []
                    break
                if nxt in imports and nxt not in seen:
                    seen[nxt] = [*seen[node], nxt]
                    queue.append(nxt)
    return problems


# -- the real tree -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree_imports() -> dict[str, list[Import]]:
    return collect_imports(find_modules(ROOT))


def test_the_checker_sees_the_tree(tree_imports):
    assert len(tree_imports) > 60 and {"probe.cli.main", "editing.cli.edit"} <= set(tree_imports)
    hooks = {i.target for i in tree_imports["probe.attention.hooks"]}
    assert {"probe.attention.processor", "torch"} <= hooks


def test_probe_never_imports_editing(tree_imports):
    assert upward_imports(tree_imports) == []


def test_no_import_cycles(tree_imports):
    cycles = [" -> ".join(c) for c in import_cycles(tree_imports)]
    assert cycles == [], (
        "import cycles (break each, e.g. move the shared part lower):\n" + "\n".join(cycles)
    )


def test_command_line_modules_import_nothing_heavy_at_load(tree_imports):
    chains = heavy_chains(tree_imports)
    assert chains == [], "move these imports into the command functions:\n" + "\n".join(chains)


def test_the_whole_command_line_loads_without_heavy_libraries():
    """The same contract at run time: every command registered (entry points included)."""
    code = (
        "import sys; from probe.cli.main import build_parser; build_parser(); "
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- planted trees: the checker fails where it should --------------------------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> dict[str, list[Import]]:
    for name, text in {"probe/__init__.py": "", "editing/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return collect_imports(find_modules(tmp_path))


def test_a_planted_upward_import_is_found(tmp_path):
    imports = plant(
        tmp_path,
        {"editing/edit.py": "", "probe/viz.py": "def f():\n    from editing import edit\n"},
    )
    assert upward_imports(imports) == ["probe.viz:2 imports editing.edit"]


def test_planted_cycles_are_found_also_in_functions_and_type_checking(tmp_path):
    imports = plant(tmp_path, {
        "editing/run.py": "from editing.plots import draw\n",
        "editing/plots.py": "def draw():\n    from editing import run\n",
        "probe/hooks.py": "from .processor import Processor\n",
        "probe/processor.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from probe.hooks import Hooks\n",
        "probe/ok.py": "import probe.hooks\n",
    })  # fmt: skip
    assert sorted(import_cycles(imports)) == [
        ["editing.plots", "editing.run", "editing.plots"],
        ["probe.hooks", "probe.processor", "probe.hooks"],
    ]


def test_a_planted_heavy_cli_import_is_found_through_modules_and_parents(tmp_path):
    imports = plant(tmp_path, {
        "probe/cli/__init__.py": "",
        "probe/cli/fast.py": "import argparse\ndef run():\n    import torch\n",
        "probe/cli/slow.py": "from probe.cli import fast\nfrom probe.maps import Maps\n",
        "probe/maps.py": "from typing import TYPE_CHECKING\nimport numpy as np\nif TYPE_CHECKING:\n    import torch\n",
        "editing/cli/__init__.py": "from probe.maps import Maps\n",
        "editing/cli/edit.py": "",
    })  # fmt: skip
    assert heavy_chains(imports) == [
        "editing.cli -> probe.maps -> numpy",
        "editing.cli.edit -> editing.cli -> probe.maps -> numpy",
        "probe.cli.slow -> probe.maps -> numpy",
    ]

"""The package's imports, read from its source: every module in a layer (LAYERS) and none importing a higher one,
no import cycle (counting every import, wherever it stands), no import of the package's own modules inside a
function but the few listed below with their reason, and no private name (``_name``) of one module imported by
another module or by a recipe or a benchmark.

An import inside a function is how a cycle hides from Python: counted as an arrow like any other, it cannot hide
here. Each check is also run on a small package written for it, which has the fault it must find."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "softprompt_hf"

# The layers, lowest first: a module imports from its own layer and the layers before it only (docs/layout.md,
# the "Package layout", lists them in this order). A new module must be placed in one.
LAYERS = (
    ("softprompt_hf.constants",),
    ("softprompt_hf.core",),
    ("softprompt_hf.data",),
    ("softprompt_hf.modeling",),
    ("softprompt_hf.inference",),
    ("softprompt_hf.evaluation",),
    ("softprompt_hf.adapter",),
    ("softprompt_hf.real", "softprompt_hf.embedded"),
    ("softprompt_hf.serving", "softprompt_hf.training"),
    ("softprompt_hf.steps", "softprompt_hf.quickstart"),
    ("softprompt_hf.commands",),
    ("softprompt_hf.cli",),
)

# (importing module, imported module) -> why the import waits until the function runs. Not a cycle: the checks
# below count these arrows too.
LAZY_IMPORTS = {
    ("softprompt_hf.cli", "softprompt_hf.commands"): "`softprompt-hf --help` and argument errors answer before "
    "torch, transformers and peft load (seconds); the commands need them",
    ("softprompt_hf.real", "softprompt_hf.core.upstream"): "softprompt_hf.real loads the data without torch or peft; "
    "only preparing the model from its GGUF file needs them",
    ("softprompt_hf.evaluation.compute_metrics", "softprompt_hf.evaluation.text_metrics"): "label runs and "
    "`softprompt-hf predict` do not import `evaluate` (about 0.4 s); only free-text metrics need it",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    names: tuple[str, ...]  # the names taken from it ("" for the module itself)
    where: str  # "top", "type-checking" or "function"
    line: int


def module_names(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by its dotted name (a folder's ``__init__.py`` by the folder's)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _place(ancestors: list[ast.AST]) -> str:
    for node in ancestors:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return "function"
    for node in ancestors:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return "type-checking"
    return "top"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of the package's own modules in one file (``name`` is its module, or None for a script)."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, ancestors: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".")
                    if not is_package:
                        base.pop()
                    base = base[: len(base) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                for alias in child.names:
                    if f"{module}.{alias.name}" in modules:  # `from package import module`
                        found.append(Import(name, f"{module}.{alias.name}", ("",), _place(ancestors), child.lineno))
                    elif module in modules:
                        found.append(Import(name, module, (alias.name,), _place(ancestors), child.lineno))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in modules:
                        found.append(Import(name, alias.name, ("",), _place(ancestors), child.lineno))
            visit(child, [*ancestors, child])

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return found


def package_imports(package: Path) -> list[Import]:
    modules = module_names(package)
    found = [found for name, path in modules.items() for found in imports_of(name, path, modules)]
    # The package's face imports each public name when first used (``__getattr__``): it sits above every module.
    return [found for found in found if found.source != package.name and found.target != found.source]


def cycles(imports: list[Import]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (strongly connected components of two or more)."""
    graph: dict[str, set[str]] = {}
    for found in imports:
        graph.setdefault(found.source, set()).add(found.target)
        graph.setdefault(found.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    for rank, prefixes in enumerate(layers):
        if any(module == prefix or module.startswith(f"{prefix}.") for prefix in prefixes):
            return rank
    return None


def upward_imports(imports: list[Import], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    return sorted(
        f"{found.source}:{found.line} imports {found.target}, a higher layer"
        for found in imports
        if (layer_of(found.target, layers) or 0) > (layer_of(found.source, layers) or 0)
    )


def function_imports(imports: list[Import], allowed: dict[tuple[str, str], str]) -> list[str]:
    return sorted(
        f"{found.source}:{found.line} imports {found.target} inside a function"
        for found in imports
        if found.where == "function" and (found.source, found.target) not in allowed
    )


def private_names(imports: list[Import]) -> list[str]:
    return sorted(
        f"{found.source}:{found.line} takes {found.target}.{name}"
        for found in imports
        for name in found.names
        if name.startswith("_") and not name.startswith("__")
    )


def _write(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder / "pkg"


def test_the_package_has_no_import_cycle():
    assert cycles(package_imports(PACKAGE)) == []


def test_every_module_has_a_layer_and_imports_none_above_it():
    unplaced = [name for name in module_names(PACKAGE) if name != PACKAGE.name and layer_of(name, LAYERS) is None]
    assert unplaced == [], "add each module to LAYERS"
    assert upward_imports(package_imports(PACKAGE), LAYERS) == []


def test_the_package_imports_its_own_modules_at_the_top():
    imports = package_imports(PACKAGE)
    assert function_imports(imports, LAZY_IMPORTS) == []
    # Every listed lazy import still exists (a stale entry would let a new one through unseen).
    lazy = {(found.source, found.target) for found in imports if found.where == "function"}
    assert set(LAZY_IMPORTS) <= lazy


def test_no_private_name_crosses_modules():
    assert private_names(package_imports(PACKAGE)) == []
    modules = module_names(PACKAGE)
    for folder in ("recipes", "benchmarks"):  # the scripts a user copies or runs use the public names only
        scripts = [
            found
            for path in sorted((ROOT / folder).glob("*.py"))
            for found in imports_of(f"{folder}.{path.stem}", path, modules)
        ]
        assert scripts, f"the {folder} import the package"
        assert private_names(scripts) == [], folder


def test_the_lazy_imports_keep_what_they_defer_out():
    # What the listed lazy imports are for: the command line and the data loaders load no torch or peft ...
    import subprocess
    import sys

    code = "import sys, softprompt_hf.cli, softprompt_hf.real; print('torch' in sys.modules, 'peft' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
    # ... and predict (with the label metrics) loads no `evaluate` until free-text metrics are built.
    code = "import sys, softprompt_hf.serving.predict as p; print('evaluate' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "files, expected",
    [
        # a loop at the top
        (
            {"pkg/__init__.py": "", "pkg/a.py": "from .b import x\n", "pkg/b.py": "from .a import y\n"},
            [["pkg.a", "pkg.b"]],
        ),
        # the same loop hidden inside a function: still a loop
        (
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from .b import x\n",
                "pkg/b.py": "def f():\n    from .a import y\n",
                "pkg/c.py": "import pkg.a\n",
            },
            [["pkg.a", "pkg.b"]],
        ),
        # through a subpackage, and under TYPE_CHECKING
        (
            {
                "pkg/__init__.py": "",
                "pkg/low/__init__.py": "",
                "pkg/low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import z\n",
                "pkg/top.py": "from .low import a\n",
            },
            [["pkg.low.a", "pkg.top"]],
        ),
        ({"pkg/__init__.py": "from .a import x\n", "pkg/a.py": "from .b import x\n", "pkg/b.py": "x = 1\n"}, []),
    ],
)
def test_the_cycle_check_finds_loops(tmp_path, files, expected):
    assert cycles(package_imports(_write(tmp_path, files))) == expected


def test_the_other_checks_find_their_faults(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def _hidden():\n    pass\n",
            "pkg/b.py": "from .a import _hidden\n\ndef f():\n    from . import a\n    import pkg.c\n",
            "pkg/c.py": "from pkg.a import __doc__\n",
        },
    )
    imports = package_imports(package)
    assert upward_imports(imports, (("pkg.a",), ("pkg.c",), ("pkg.b",))) == []
    assert upward_imports(imports, (("pkg.b",), ("pkg.c", "pkg.a"))) == [
        "pkg.b:1 imports pkg.a, a higher layer",
        "pkg.b:4 imports pkg.a, a higher layer",
        "pkg.b:5 imports pkg.c, a higher layer",
    ]
    assert function_imports(imports, {}) == [
        "pkg.b:4 imports pkg.a inside a function",
        "pkg.b:5 imports pkg.c inside a function",
    ]
    assert function_imports(imports, {("pkg.b", "pkg.a"): "x", ("pkg.b", "pkg.c"): "y"}) == []
    assert private_names(imports) == ["pkg.b:1 takes pkg.a._hidden"]

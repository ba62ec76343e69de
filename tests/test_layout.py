"""docs/layout.md ("Package layout") stays true: the public API it lists is the package's, and it names every
module."""

from __future__ import annotations

import re
from pathlib import Path

import softprompt_hf

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "softprompt_hf"


def _layout_section() -> str:
    return (REPO / "docs" / "layout.md").read_text(encoding="utf-8")


def _table_rows(section: str, header: str) -> list[list[str]]:
    lines = section[section.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_layout_page_lists_exactly_the_public_api():
    rows = _table_rows(_layout_section(), "| you want to | names |")
    listed = [name for _, names in rows for name in re.findall(r"`([A-Za-z_]+)`", names)]
    assert sorted(listed) == sorted(softprompt_hf.__all__)
    assert len(listed) == len(set(listed))
    assert f"The public API is the {len(softprompt_hf.__all__)} names" in _layout_section()
    for name in softprompt_hf.__all__:
        assert getattr(softprompt_hf, name) is not None


def test_the_layout_page_names_every_module_of_the_package():
    rows = _table_rows(_layout_section(), "| module | its job |")
    named = {path for cell, _ in rows for path in re.findall(r"`([\w/.]+)`", cell)}
    modules = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "embedded" not in path.relative_to(PACKAGE).parts
    }
    modules |= {"embedded/"}  # named as one folder: the embedded model, data and their build scripts
    modules |= {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.jinja")}
    assert modules <= named, f"not in docs/layout.md: {sorted(modules - named)}"
    assert named <= modules, f"in docs/layout.md but not in the package: {sorted(named - modules)}"
    layers = {cell.strip("*") for cell, _ in rows if cell.startswith("**") and cell.endswith("/**")}
    folders = {f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()} - {"embedded/"}
    assert layers == folders

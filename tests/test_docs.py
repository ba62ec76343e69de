"""The README and the docs/ pages link to what exists: every relative link names a file of the repository, and
every ``#anchor`` a heading of the page it points to (as GitHub names headings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def _prose(text: str) -> str:
    """The text without its code: fenced blocks and inline code hold no links."""
    return re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, without punctuation but hyphens and underscores, spaces as hyphens."""
    heading = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _without_code_blocks(page.read_text(encoding="utf-8")), re.MULTILINE)
    anchors: set[str] = set()
    for heading in headings:
        anchor = _anchor(heading)
        suffix = 0
        while (f"{anchor}-{suffix}" if suffix else anchor) in anchors:
            suffix += 1
        anchors.add(f"{anchor}-{suffix}" if suffix else anchor)
    return anchors


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))


def test_the_anchors_are_githubs():
    assert _anchor("FSDP: a base model larger than one GPU") == "fsdp-a-base-model-larger-than-one-gpu"
    assert _anchor("In the recipes: `--chat_template`") == "in-the-recipes---chat_template"
    assert _anchor("Free-text targets: summaries, answers, rewrites (Python API)") == (
        "free-text-targets-summaries-answers-rewrites-python-api"
    )


def test_the_docs_pages_are_all_linked_from_the_readme():
    linked = {target.split("#")[0] for target in _links(REPO / "README.md")}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    links = [link for link in _links(page) if not re.match(r"[a-z]+:", link)]  # http(s):, mailto: are not checked
    assert links or page.name != "README.md"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or REPO not in target.parents:
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in _anchors(target):
            broken.append(f"{link}: no heading with that anchor in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"

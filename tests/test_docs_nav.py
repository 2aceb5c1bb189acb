"""Every page of docs/ opens with the same navigation line: the README and every page, itself in bold."""
import re

from tests.conftest import REPO

PAGES = sorted(p.stem for p in (REPO / "docs").glob("*.md"))


def test_every_page_links_every_page():
    for page in PAGES:
        text = (REPO / "docs" / f"{page}.md").read_text()
        nav = " ".join(text.split("\n\n")[1].split())
        assert nav.startswith("[README](../README.md) · "), page
        linked = set(re.findall(r"\[(\w+)\]\(\1\.md\)", nav))
        assert linked == set(PAGES) - {page} and f"**{page}**" in nav, (page, set(PAGES) ^ linked)

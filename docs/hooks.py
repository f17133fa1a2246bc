"""MkDocs hook: the site's front page is README.md.

README.md links into docs/ from the repository root; on the site, those links are relative
to docs/ itself, and CHANGELOG.md is the changelog page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
_INTO_DOCS = re.compile(r"\]\(docs/")
_CHANGELOG = re.compile(r"\]\(CHANGELOG\.md\)")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    text = _INTO_DOCS.sub("](", README.read_text())
    return _CHANGELOG.sub("](changelog.md)", text)

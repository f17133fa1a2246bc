"""The documented settings table is the one the settings model renders: it cannot drift.

The table sits between the markers below, in README.md or docs/deploying.md (the Deploying
section); every copy must be exactly `render_settings_table()`."""

from __future__ import annotations

from pathlib import Path

from foxwork.settings import render_settings_table

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "deploying.md"]
START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"


def test_the_docs_hold_the_settings_table_the_model_renders():
    tables = {
        page.name: text.split(START, 1)[1].split(END, 1)[0]
        for page in PAGES
        if page.exists() and START in (text := page.read_text())
    }
    assert tables, f"README.md or docs/deploying.md needs the markers {START} and {END}"
    for name, table in tables.items():
        assert table.strip("\n") == render_settings_table().strip("\n"), (
            f"{name}: the settings table differs from the model; paste the output of "
            "`python -c 'from foxwork.settings import render_settings_table as r; print(r())'`"
            " between the markers"
        )

"""The README stays true: every setting is documented, every route is in the API table."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    missing = [n for n in Settings.model_fields if f"`BNAAS_{n.upper()}`" not in README]
    assert missing == []


def test_readme_api_table_names_every_v1_route() -> None:
    for route in ("/fit", "/transform", "/backward", "/fold", "/stats", "/merge", "/history"):
        assert f"{{id}}{route}" in README, route

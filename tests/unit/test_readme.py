"""The README's generated tables match the code (topics, CLI commands, settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapas.docs import readme_blocks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", ["topics", "cli", "settings"])
def test_readme_block_is_current(name: str) -> None:
    block = readme_blocks()[name]
    start, end = f"<!-- {name} -->\n", f"\n<!-- /{name} -->"
    assert start in README and end in README, f"README lacks the {name} markers"
    current = README.split(start, 1)[1].split(end, 1)[0]
    assert current == block, f"README {name} table is stale: regenerate with `python -m tapas.docs --write README.md`"

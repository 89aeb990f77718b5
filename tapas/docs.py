"""Generated README tables (topics, CLI, settings), so the README cannot drift from the code.

``python -m tapas.docs`` prints the three blocks, ``python -m tapas.docs --write README.md`` refreshes them; ``tests/unit/test_readme.py`` fails when
the README does not contain them verbatim.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main

from contracts.topics import markdown_table
from foundation.settings import settings_table


def cli_table() -> str:
    """One row per `tapas` command (groups with their own callback included), from the typer app."""
    from tapas.cli import app

    rows = ["| command | what it does |", "|---|---|"]

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if path and (not subs or getattr(cmd, "invoke_without_command", False)):
            text = (getattr(cmd, "help", None) or "").strip().splitlines()
            rows.append(f"| `tapas {' '.join(path)}` | {text[0] if text else ''} |")
        for name, sub in sorted((subs or {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return "\n".join(rows)


def readme_blocks() -> dict[str, str]:
    """The generated blocks by name."""
    return {"topics": markdown_table(), "cli": cli_table(), "settings": settings_table()}


def rewrite_readme(path: Path) -> None:
    """Replace each ``<!-- name --> ... <!-- /name -->`` block of the README with its generated table."""
    text = path.read_text()
    for name, block in readme_blocks().items():
        start, end = f"<!-- {name} -->\n", f"\n<!-- /{name} -->"
        head, rest = text.split(start, 1)
        text = head + start + block + end + rest.split(end, 1)[1]
    path.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        rewrite_readme(Path(sys.argv[2]))
    else:
        for name, block in readme_blocks().items():
            print(f"<!-- {name} -->\n{block}\n")

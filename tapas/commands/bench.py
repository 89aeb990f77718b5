"""``tapas bench [NAME] [--json OUT] [--quick]``: run the benchmark suite and print figures with ratios."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bench.registry import BENCHMARKS

console = Console()


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    name: str = typer.Argument(None, help=f"One benchmark ({', '.join(BENCHMARKS)}); all when omitted."),
    json_out: Path = typer.Option(None, "--json", help="Write the figures as JSON here."),
    quick: bool = typer.Option(False, "--quick", help="Short runs (smoke test); figures are less stable."),
) -> None:
    """Run benchmarks; each prints its figures beside a baseline measured in the same run."""
    from bench.registry import available, load

    if name is not None and name not in BENCHMARKS:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    names = [name] if name else available()
    results: dict[str, dict[str, object]] = {}
    for n in names:
        console.rule(f"bench {n}")
        figures = load(n)(quick=quick)
        results[n] = figures
        table = Table("figure", "value", title=n)
        for k, v in figures.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(table)
    payload: object = results[names[0]] if name else results
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, sort_keys=True))
        console.print(f"wrote {json_out}")

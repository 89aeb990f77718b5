"""The ``tapas`` command line: one typer app; each area registers its commands from ``tapas.commands``.

Command modules import their heavy dependencies inside the command bodies so that
``tapas --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging

import typer

from contracts.errors import TapasError

app = typer.Typer(
    name="tapas",
    help="TAPAS: thermal- and power-aware control for LLM inference GPU clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Modules under tapas.commands that each define ``register(app)``. One line per area.
COMMAND_MODULES = (
    "foundation",
    "inventory",
    "simulate",
    "controller",
    "router",
    "forecasting",
    "streams",
    "ingest",
    "dashboard",
    "demo",
    "bench",
)

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"tapas.commands.{_name}")
    except ModuleNotFoundError as _exc:  # an area not written yet
        if _exc.name != f"tapas.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Entry point: run the app, turning TapasError into a one-line message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The Kafka clients narrate every connection at INFO; keep their warnings and errors only.
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except TapasError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

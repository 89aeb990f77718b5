"""The live controller's configuration catalogue, loaded as data (no simulator import at start-up).

``tapas catalogue export`` writes the file from the simulator's physics, with the sources of
its numbers; the shipped ones live in ``controller/catalogues/<GPU SKU>.json`` (a test
checks they equal a fresh export). Operators may point ``TAPAS_CONTROLLER__CATALOGUE_FILE``
at their own measured catalogue in the same format.
"""

from __future__ import annotations

import json
from pathlib import Path

from contracts.errors import ConfigError
from controller.core.catalogue import Catalogue

SHIPPED_DIR = Path(__file__).resolve().parent / "catalogues"


def shipped_path(sku: str) -> Path:
    """Where the catalogue shipped for GPU SKU ``sku`` lives."""
    return SHIPPED_DIR / f"{sku}.json"


def load_catalogue(path: Path | None, *, sku: str) -> Catalogue:
    """The catalogue at ``path`` (or the shipped one for ``sku``); a missing or malformed file is a ConfigError."""
    p = path if path is not None else shipped_path(sku)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalogue file {p} not found (write one with `tapas catalogue export {p}`)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"catalogue file {p}: not JSON ({exc})") from None
    if data.get("sku") not in (None, sku):
        raise ConfigError(f"catalogue file {p} is for {data.get('sku')!r}, the cluster runs {sku!r}")
    try:
        return Catalogue.from_dict(data)
    except ValueError as exc:
        raise ConfigError(f"catalogue file {p}: {exc}") from None

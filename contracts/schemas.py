"""JSON Schema export of every contract, for consumers in any language."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.messages import ALL_MESSAGES


def schema_documents() -> dict[str, str]:
    """File name → pretty JSON Schema text, one per message, deterministic."""
    docs: dict[str, str] = {}
    for model in ALL_MESSAGES:
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://tapas.dev/contracts/{model.message_name}.json"
        docs[f"{model.message_name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return docs


def export_schemas(directory: Path) -> list[Path]:
    """Write one schema file per message into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written

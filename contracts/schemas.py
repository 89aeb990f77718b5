"""JSON Schema export of every contract, for consumers in any language."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.messages import ALL_MESSAGES, SCHEMA_VERSION

#: The dialect pydantic's ``model_json_schema`` writes.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(message_name: str) -> str:
    """A schema's ``$id``: a URN the project controls (no domain it does not own), with the contract version.

    Examples:
        >>> schema_id("routing_weights")  # doctest: +ELLIPSIS
        'urn:tapas:contracts:routing_weights:1...'
    """
    return f"urn:tapas:contracts:{message_name}:{SCHEMA_VERSION}"


def schema_documents() -> dict[str, str]:
    """File name → pretty JSON Schema text, one per message, deterministic."""
    docs: dict[str, str] = {}
    for model in ALL_MESSAGES:
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = JSON_SCHEMA_DIALECT
        schema["$id"] = schema_id(model.message_name)
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

"""Hypothesis strategies that draw JSON documents from a contract's own JSON Schema.

Drawing from the exported schema (rather than from hand-written examples) reaches
fields the examples leave at their defaults, so "every good input round-trips" is
tested over the whole message, including optional nested objects. The schema does
not carry the model-level checks (physical ranges, ordering, sums), so some drawn
documents are refused; the oracle accepts that as long as the refusal names a field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from contracts import Contract

_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=16)
_OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


def _timestamps() -> st.SearchStrategy[str]:
    return st.builds(
        lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz).isoformat(),
        # hypothesis wants naive bounds; the drawn instant is made aware on the line above.
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),  # noqa: DTZ001
        _OFFSETS,
    )


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if integer:
        return st.integers(int(lo) if lo is not None else -(2**31), int(hi) if hi is not None else 2**31)
    # Mostly physically plausible magnitudes: the model-level range checks are not in the schema.
    lo_f = float(lo) if lo is not None else -1e6
    hi_f = float(hi) if hi is not None else 1e6
    return st.floats(lo_f, hi_f, allow_nan=False, allow_infinity=False,
                     exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema)


def from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """A strategy for the JSON values ``schema`` admits (the subset pydantic emits)."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, name) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return _timestamps()
        if "pattern" in schema:
            if name == "schema_version":
                return st.sampled_from(["1.0", "1.1", "1.7"])
            return st.from_regex(schema["pattern"], fullmatch=True)
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 24), 24)
        return st.text(min_size=lo, max_size=max(lo, hi))
    if kind == "array":
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", 4), max(lo, 4))
        return st.lists(from_schema(schema.get("items", {}), defs, name), min_size=lo, max_size=hi)
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        if not props:
            return st.dictionaries(_NAMES, st.floats(-1e6, 1e6, allow_nan=False), max_size=3)
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs, k) for k, v in props.items() if k in required},
            optional={k: from_schema(v, defs, k) for k, v in props.items() if k not in required},
        )
    return st.none()


def documents(model: type[Contract]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON documents drawn from ``model``'s JSON Schema."""
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}))  # type: ignore[no-any-return]

"""Bad-input generators for the fuzz run: edits of a valid JSON document, and the oracle that judges them.

Every generator works on plain JSON values (dicts, lists, scalars) so the same
mutations serve every contract and every collector parser. The oracle
:func:`check_decode` states the contract the whole project relies on: a payload is
either accepted and round-trips exactly, or refused with :class:`ContractError`
naming the offending field; anything else is a crash.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from contracts import Contract, ContractError, decode

JsonPath = tuple[str | int, ...]

#: Multipliers/offsets that turn a value in the field's unit into a common wrong one.
UNIT_MISTAKES: dict[str, list[tuple[str, Callable[[float], float]]]] = {
    "_c": [("kelvin", lambda v: v + 273.15), ("fahrenheit", lambda v: v * 9 / 5 + 32),
           ("millidegree", lambda v: v * 1000)],
    "_w": [("milliwatt", lambda v: v * 1000), ("kilowatt", lambda v: v / 1000)],
    "_a": [("milliamp", lambda v: v * 1000)],
    "_s": [("milliseconds", lambda v: v * 1000)],
    "_mhz": [("hertz", lambda v: v * 1e6), ("ghz", lambda v: v / 1000)],
    "_pct": [("fraction", lambda v: v / 100), ("per-mille", lambda v: v * 10)],
    "_frac": [("percent", lambda v: v * 100)],
    "_kwh": [("wh", lambda v: v * 1000)],
    "_mib": [("bytes", lambda v: v * 1024 * 1024)],
}

#: Raw JSON number literals that Python's json module and pydantic parse to extremes.
HUGE_LITERALS = ["1e308", "-1e308", "1e999", "-1e999", "1" + "0" * 400, "-" + "9" * 40, "18446744073709551616",
                 "9223372036854775808", "-9223372036854775809", "5e-324", "-0.0", "2.2250738585072014e-308"]
NON_FINITE_LITERALS = ["NaN", "Infinity", "-Infinity"]

BAD_VERSIONS: list[Any] = ["2.0", "0.9", "1", "v1.0", "", "1.0.0", "1.x", "99999999999999999999.0", " 1.0",
                           "1.0\n", 1.0, 1, None, [], {}]
# Unicode digits match pydantic-core's \\d and int() reads them: accepted, round-trips (noted in the report).
GOOD_NEWER_MINORS = ["1.1", "1.99", "1.0000", "１.0"]

BAD_TIMESTAMPS: list[Any] = ["2026-11-25T10:00:00", "2026-11-25", "25/11/2026 10:00", "", "now", "2026-13-01T00:00:00Z",
                             "2026-02-30T00:00:00Z", "10000-01-01T00:00:00Z", "0000-01-01T00:00:00Z", 1e20, -1e20,
                             "2026-11-25T25:00:00Z", None, True, [], {}]
GOOD_TIMESTAMPS = ["2026-11-25T10:00:00+05:30", "2026-11-25T10:00:00.123456Z", "2026-11-25T04:00:00-06:00",
                   "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-11-25T10:00:00.000001+00:00"]

WRONG_TYPES: list[Any] = ["text", "", 0, -1, 1.5, True, False, None, [], [1, 2], {}, {"a": 1}, "12.5", "NaN", "1e3"]


def walk(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, Any]]:
    """Every node of a JSON value with its path, parents before children."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, (*path, i))


def dotted(path: JsonPath) -> str:
    """The path as ContractError names it (``gpus.3.gpu_temp_c``)."""
    return ".".join(str(p) for p in path)


def set_at(doc: Any, path: JsonPath, value: Any) -> Any:
    """A deep copy of ``doc`` with the node at ``path`` replaced."""
    out = copy.deepcopy(doc)
    if not path:
        return value
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def delete_at(doc: Any, path: JsonPath) -> Any:
    """A deep copy of ``doc`` without the node at ``path``."""
    out = copy.deepcopy(doc)
    node = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


_MARK = "\u2063@@raw@@\u2063"


def with_raw_literal(doc: Any, path: JsonPath, literal: str) -> bytes:
    """Serialise ``doc`` with the node at ``path`` replaced by a raw JSON literal (NaN, 1e999, huge ints)."""
    text = json.dumps(set_at(doc, path, _MARK), ensure_ascii=False)
    return text.replace(json.dumps(_MARK, ensure_ascii=False), literal, 1).encode()


@dataclass(frozen=True)
class Mutant:
    """One generated input: the bytes, what was done, and which field it targets ("" for the whole payload)."""

    raw: bytes
    kind: str
    path: JsonPath | None = None
    detail: str = ""
    #: True when the edit cannot produce a valid message (must be refused).
    must_refuse: bool = False
    #: Extra field names a refusal may legitimately name (cross-field constraints).
    also: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        where = dotted(self.path) if self.path is not None else "<payload>"
        return f"Mutant({self.kind} {self.detail} at {where}: {self.raw[:160]!r}...)"


def numeric_leaves(doc: Any) -> list[tuple[JsonPath, float]]:
    return [(p, v) for p, v in walk(doc) if p and isinstance(v, int | float) and not isinstance(v, bool)]


def keyed_paths(doc: Any) -> list[JsonPath]:
    """Paths whose last component is a dict key (deletable fields)."""
    return [p for p, _ in walk(doc) if p and isinstance(p[-1], str)]


def timestamp_paths(doc: Any) -> list[JsonPath]:
    return [p for p, _ in walk(doc) if p and isinstance(p[-1], str) and p[-1].endswith("_at")]


@st.composite
def mutants(draw: st.DrawFn, doc: dict[str, Any]) -> Mutant:
    """One bad (or borderline) variant of a valid JSON document ``doc``."""
    raw = json.dumps(doc).encode()
    kinds = ["truncate", "byte", "wrong_type", "delete", "extra", "huge", "non_finite", "version",
             "timestamp", "duplicate_key", "deep", "unit"]
    nums = numeric_leaves(doc)
    unit_targets = [(p, v) for p, v in nums if isinstance(p[-1], str) and _unit_of(p[-1])]
    if not unit_targets:
        kinds.remove("unit")
    if not nums:
        kinds.remove("huge")
        kinds.remove("non_finite")
    if not timestamp_paths(doc):
        kinds.remove("timestamp")
    kind = draw(st.sampled_from(kinds))
    nodes = [p for p, _ in walk(doc) if p]

    if kind == "truncate":
        cut = draw(st.integers(0, len(raw) - 1))
        return Mutant(raw[:cut], kind, None, f"cut at {cut}/{len(raw)}", must_refuse=True)
    if kind == "byte":
        pos = draw(st.integers(0, len(raw) - 1))
        byte = draw(st.integers(0, 255))
        return Mutant(raw[:pos] + bytes([byte]) + raw[pos + 1:], kind, None, f"byte {pos} -> {byte}")
    if kind == "wrong_type":
        path = draw(st.sampled_from(nodes))
        value = draw(st.sampled_from(WRONG_TYPES))
        return Mutant(json.dumps(set_at(doc, path, value)).encode(), kind, path, repr(value))
    if kind == "delete":
        path = draw(st.sampled_from(keyed_paths(doc)))
        return Mutant(json.dumps(delete_at(doc, path)).encode(), kind, path)
    if kind == "extra":
        containers = [p for p, v in walk(doc) if isinstance(v, dict)]
        path = draw(st.sampled_from(containers))
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).map(lambda s: f"zz_{s}"))
        value = draw(st.sampled_from(WRONG_TYPES))
        return Mutant(json.dumps(set_at(doc, (*path, name), value)).encode(), kind, (*path, name), repr(value))
    if kind == "huge":
        path = draw(st.sampled_from([p for p, _ in nums]))
        lit = draw(st.sampled_from(HUGE_LITERALS))
        return Mutant(with_raw_literal(doc, path, lit), kind, path, lit)
    if kind == "non_finite":
        path = draw(st.sampled_from([p for p, _ in nums]))
        lit = draw(st.sampled_from(NON_FINITE_LITERALS))
        return Mutant(with_raw_literal(doc, path, lit), kind, path, lit, must_refuse=True)
    if kind == "version":
        value = draw(st.sampled_from(BAD_VERSIONS + GOOD_NEWER_MINORS))
        return Mutant(json.dumps(set_at(doc, ("schema_version",), value)).encode(), kind, ("schema_version",),
                      repr(value), must_refuse=value not in GOOD_NEWER_MINORS)
    if kind == "timestamp":
        ts_paths = timestamp_paths(doc)
        path = draw(st.sampled_from(ts_paths))
        choice = draw(st.sampled_from(["bad", "good", "duplicate", "earlier"]))
        others = tuple(str(p[-1]) for p in ts_paths if p != path)
        if choice == "bad":
            value = draw(st.sampled_from(BAD_TIMESTAMPS))  # null is fine where the instant is optional
            return Mutant(json.dumps(set_at(doc, path, value)).encode(), kind, path, repr(value),
                          must_refuse=value is not None)
        if choice == "good":
            value = draw(st.sampled_from(GOOD_TIMESTAMPS))
            return Mutant(json.dumps(set_at(doc, path, value)).encode(), kind, path, repr(value), also=others)
        if choice == "duplicate" and len(ts_paths) > 1:
            src = draw(st.sampled_from([p for p in ts_paths if p != path]))
            value = _get(doc, src)
            return Mutant(json.dumps(set_at(doc, path, value)).encode(), kind, path, f"= {dotted(src)}",
                          also=others)
        # Out of order: move the instant back by up to ten years.
        from datetime import datetime, timedelta

        if not isinstance(_get(doc, path), str):  # an optional instant left null: set it instead
            value = draw(st.sampled_from(GOOD_TIMESTAMPS))
            return Mutant(json.dumps(set_at(doc, path, value)).encode(), kind, path, repr(value), also=others)
        base = datetime.fromisoformat(str(_get(doc, path)).replace("Z", "+00:00"))
        shifted = base - timedelta(seconds=draw(st.integers(1, 10 * 365 * 86400)))
        return Mutant(json.dumps(set_at(doc, path, shifted.isoformat())).encode(), kind, path, "earlier",
                      also=others)
    if kind == "duplicate_key":
        # JSON with a key given twice: the parser keeps one; the result must still validate or be refused.
        key = draw(st.sampled_from(list(doc)))
        value = draw(st.sampled_from(WRONG_TYPES + [doc[key]]))
        text = raw.decode()
        dup = text[:-1] + (", " if len(text) > 2 else "") + f"{json.dumps(key)}: {json.dumps(value)}}}"
        return Mutant(dup.encode(), kind, (key,), repr(value))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 200, 5000, 100_000]))
        text = raw.decode()
        nested = "[" * depth + "]" * depth
        # Refused by the JSON parser's recursion limit (field "") or ignored as an unknown field.
        return Mutant((text[:-1] + f', "zz_deep": {nested}}}').encode(), kind, None, f"depth {depth}")
    # unit mistake on a unit-suffixed number
    path, value = draw(st.sampled_from(unit_targets))
    name, fn = draw(st.sampled_from(UNIT_MISTAKES[_unit_of(str(path[-1]))]))
    return Mutant(json.dumps(set_at(doc, path, fn(float(value)))).encode(), kind, path, name)


def _get(doc: Any, path: JsonPath) -> Any:
    node = doc
    for p in path:
        node = node[p]
    return node


def _unit_of(name: str) -> str:
    for suffix in sorted(UNIT_MISTAKES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


@dataclass
class Tally:
    """What the fuzz run saw; printed in the terminal summary."""

    generated: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, accepted: bool) -> None:
        self.generated += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if accepted:
            self.accepted += 1
        else:
            self.refused += 1


TALLY = Tally()


#: Fields validated together (model-level checks): a refusal may name any member of the group.
CROSS_FIELD_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"issued_at", "expires_at"}),
    frozenset({"horizons_s", "power_forecast_w", "power_forecast_hi_w"}),
)


def field_matches(named: str, path: JsonPath | None, also: tuple[str, ...] = ()) -> bool:
    """True when a refusal naming ``named`` plausibly points at the edit at ``path``.

    The named field must share the edited field's top-level name (a nested error may stop at the
    containing object, e.g. ``horizons.0`` for an ordering check, or ``weights`` for a sum check),
    or be one of the cross-field partners listed in ``also``.
    """
    if path is None:
        return True
    if not path:
        return named == ""
    root, edited = named.split(".", 1)[0], str(path[0])
    grouped = any(root in g and edited in g for g in CROSS_FIELD_GROUPS)
    return root == edited or root in also or grouped


def check_decode(model: type[Contract], mutant: Mutant) -> Contract | None:
    """Decode ``mutant`` and assert the project's input contract; returns the message when accepted.

    Raises AssertionError (the test failure) for a crash, a refusal that names no or the wrong
    field, an accepted must-refuse input, or an accepted message that does not round-trip.
    """
    try:
        msg = decode(model, mutant.raw)
    except ContractError as err:
        TALLY.add(mutant.kind, accepted=False)
        assert err.reason, f"{model.__name__} {mutant.kind} {mutant.detail}: empty reason"
        if mutant.path is not None and mutant.kind not in ("truncate", "byte"):
            assert err.field, f"{model.__name__} {mutant.kind} at {dotted(mutant.path)}: refusal names no field ({err})"
            assert field_matches(err.field, mutant.path, mutant.also), (
                f"{model.__name__} {mutant.kind} {mutant.detail} at {dotted(mutant.path)}: refusal names {err.field!r}"
            )
        return None
    except Exception as exc:  # noqa: BLE001 - the whole point: nothing but ContractError may escape
        TALLY.crashes += 1
        raise AssertionError(
            f"CRASH {model.__name__} {mutant.kind} {mutant.detail}: {type(exc).__name__}: {exc}\n"
            f"input: {mutant.raw[:300]!r}"
        ) from exc
    TALLY.add(mutant.kind, accepted=True)
    assert not mutant.must_refuse, f"{model.__name__} accepted {mutant.kind} {mutant.detail}: {mutant.raw[:300]!r}"
    assert_round_trip(msg)
    return msg


def assert_round_trip(msg: Contract) -> None:
    """An accepted message serialises and decodes back to an equal message (and the same bytes)."""
    wire = msg.to_bytes()
    again = decode(type(msg), wire)
    assert again == msg, f"{type(msg).__name__} did not round-trip: {wire[:300]!r}"
    assert again.to_bytes() == wire

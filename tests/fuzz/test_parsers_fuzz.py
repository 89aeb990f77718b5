"""Fuzz every collector parser under ``ingest/`` with what real devices and files get wrong.

Parsers: the edge rule ``ingest.validate.check``, the Redfish readers (newer
``Sensor``/``EnvironmentMetrics`` and legacy ``Thermal``/``Power`` documents, starting
from the DMTF public mockup), the APC rPDU2/rPDU SNMP parsers, NVML readings through a
test double, and replay rows/files (including duplicate and out-of-order timestamps).

The property: a parser returns messages that satisfy their contract and round-trip
(a broken reading is ``null`` plus a name in ``invalid_fields``), or raises a
``TapasError`` (``SourceError``/``ContractError``) with a message; any other exception
is a crash. A reading in the wrong unit (Kelvin, milliwatts) is never passed on as good.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import Contract, TapasError
from tests.fuzz.mutations import TALLY, WRONG_TYPES, assert_round_trip, delete_at, set_at, walk

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
MOCKUP = "redfish-mockup/public-rackmount1"

#: Python values a device, a BMC's JSON or a CSV cell can carry where a number belongs.
WILD_VALUES: list[Any] = [*WRONG_TYPES, 1e308, -1e308, 10**400, -(10**400), 2**64, 2**31 - 1, -127, -128, 0xFFFF,
                          0xFFFFFFFF, float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, b"\xff\xfe", b"12",
                          "1e999", "  42 ", "4,2"]
wild = st.one_of(st.sampled_from(WILD_VALUES), st.floats(), st.integers(), st.text(max_size=8))

FAST, FULL = 40, 500

#: Crashes the fuzz run found in ingest/ (owner: INGEST). The fuzz tests of these parsers are xfailed
#: (not strict: a run may miss them) until fixed; test_known_ingest_crash pins one minimal input per
#: crash, strictly xfailed while listed here (a fix shows up as an XPASS failure asking for its entry to
#: be removed) and a plain regression test once fixed.
KNOWN_CRASHES: dict[str, str] = {}  # all fixed (edge_check, redfish, snmp, replay_row); add new findings here


def budgets(kind: str | None = None) -> Any:
    """The fast (default run) and full (``-m fuzz``) budgets, xfailed while ``kind`` has a known crash."""
    reason = KNOWN_CRASHES.get(kind or "")
    fast_marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
    full_marks = [pytest.mark.fuzz, *([pytest.mark.xfail(strict=False, reason=reason)] if reason else [])]
    return pytest.mark.parametrize("budget,fast", [pytest.param(FAST, True, marks=fast_marks),
                                                   pytest.param(FULL, False, marks=full_marks)],
                                   ids=["fast", "full"])


def _settings(n: int, *, fast: bool) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=fast,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def judge(kind: str, produce: Callable[[], list[Contract]]) -> list[Contract]:
    """Run one parser call and assert the parser contract; returns the messages it produced."""
    try:
        out = produce()
    except TapasError as err:
        TALLY.add(kind, accepted=False)
        assert str(err), f"{kind}: refusal without a message"
        return []
    except Exception as exc:  # noqa: BLE001 - anything but a TapasError is a crash
        TALLY.crashes += 1
        raise AssertionError(f"CRASH in {kind}: {type(exc).__name__}: {exc}") from exc
    TALLY.add(kind, accepted=True)
    for msg in out:
        assert_round_trip(msg)
    return out


@st.composite
def doc_mutation(draw: st.DrawFn, doc: Any) -> Any:
    """A JSON document with one node replaced, deleted, scaled to a wrong unit, or the whole thing replaced."""
    nodes = [p for p, _ in walk(doc) if p]
    choice = draw(st.sampled_from(["replace", "delete", "unit", "whole"]))
    if choice == "whole" or not nodes:
        return draw(st.sampled_from([None, [], "", 0, [doc], {"Members": "x"}, {}]))
    if choice == "delete":
        keyed = [p for p in nodes if isinstance(p[-1], str)]
        return delete_at(doc, draw(st.sampled_from(keyed))) if keyed else doc
    if choice == "unit":
        nums = [(p, v) for p, v in walk(doc) if p and isinstance(v, int | float) and not isinstance(v, bool)]
        if nums:
            path, value = draw(st.sampled_from(nums))
            scale = draw(st.sampled_from([("kelvin", lambda v: v + 273.15), ("fahrenheit", lambda v: v * 1.8 + 32),
                                          ("milli", lambda v: v * 1000)]))[1]
            return set_at(doc, path, scale(float(value)))
    return set_at(doc, draw(st.sampled_from(nodes)), draw(wild))


# --------------------------------------------------------------------------- edge rule


@budgets('edge_check')
def test_edge_check_never_crashes_and_stays_in_range(budget: int, fast: bool) -> None:
    from ingest.validate import RANGES, check

    @_settings(budget, fast=fast)
    @given(wild, st.sampled_from(sorted(RANGES)), st.sampled_from([1.0, 0.001, 10.0, 0.1, 1 / (1024 * 1024)]))
    def run(raw: Any, field: str, scale: float) -> None:
        try:
            out = check(raw, field, scale=scale)
        except Exception as exc:  # noqa: BLE001
            TALLY.crashes += 1
            raise AssertionError(f"CRASH check({raw!r}, {field!r}, scale={scale}): {type(exc).__name__}: {exc}") from exc
        TALLY.add("edge_check", accepted=out.value is not None)
        if out.value is not None:
            assert math.isfinite(out.value) and RANGES[field].lo <= out.value <= RANGES[field].hi
            assert not out.invalid

    run()


# --------------------------------------------------------------------------- redfish


class MockupGetter:
    """Serves the DMTF mockup's ``index.json`` files by Redfish path, with some documents overridden."""

    def __init__(self, root: Path, overrides: dict[str, Any] | None = None) -> None:
        self.root = root
        self.overrides = overrides or {}

    def get(self, path: str) -> Any:
        key = "/" + path.strip("/")
        if key in self.overrides:
            return copy.deepcopy(self.overrides[key])
        rel = key.removeprefix("/redfish/v1").strip("/")
        f = self.root / rel / "index.json"
        return json.loads(f.read_text()) if f.exists() else None


REDFISH_DOCS = ("Chassis/1U/Sensors/IntakeTemp", "Chassis/1U/Thermal", "Chassis/1U/Power",
                "Chassis/1U/EnvironmentMetrics", "Chassis/1U", "Chassis", "")


@pytest.fixture(scope="module")
def mockup(data_dir: Path) -> Path:
    root = data_dir / MOCKUP
    if not root.exists():
        pytest.skip(f"{root} missing")
    return root


def _read_inlet(getter: MockupGetter) -> list[Contract]:
    from ingest.sources.redfish import discover, read_inlet

    plan = discover(getter)
    return [read_inlet(getter, plan, server_id="s1", now=lambda: T0)]


def test_redfish_mockup_baseline_reads_an_intake_temperature(mockup: Path) -> None:
    (sample,) = judge("redfish", lambda: _read_inlet(MockupGetter(mockup)))
    assert sample.inlet_temp_c is not None and 10 <= sample.inlet_temp_c <= 40  # type: ignore[attr-defined]


@budgets('redfish')
def test_redfish_readers_survive_mutated_documents(mockup: Path, budget: int, fast: bool) -> None:
    base = {f"/redfish/v1/{rel}".rstrip("/"): MockupGetter(mockup).get(f"/redfish/v1/{rel}") for rel in REDFISH_DOCS}

    @_settings(budget, fast=fast)
    @given(st.sampled_from(sorted(base)).flatmap(lambda k: st.tuples(st.just(k), doc_mutation(base[k]))))
    def run(case: tuple[str, Any]) -> None:
        path, doc = case
        judge("redfish", lambda: _read_inlet(MockupGetter(mockup, {path: doc})))

    run()


@pytest.mark.parametrize("mistake,fn", [("kelvin", lambda c: c + 273.15), ("millidegree", lambda c: c * 1000)])
def test_redfish_intake_in_a_wrong_unit_is_flagged_not_passed(mockup: Path, mistake: str,
                                                              fn: Callable[[float], float]) -> None:
    path = "/redfish/v1/Chassis/1U/Sensors/IntakeTemp"
    doc = MockupGetter(mockup).get(path)
    doc["Reading"] = fn(float(doc["Reading"]))
    (sample,) = judge("redfish", lambda: _read_inlet(MockupGetter(mockup, {path: doc})))
    assert sample.inlet_temp_c is None and "inlet_temp_c" in sample.invalid_fields  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- snmp


def _rpdu2_values() -> dict[str, Any]:
    from ingest.sources import snmp

    return {snmp.RPDU2_DEVICE_POWER + ".1": 121, snmp.RPDU2_DEVICE_ENERGY + ".1": 53211,
            snmp.RPDU2_PHASE_CURRENT + ".1": 65, snmp.RPDU2_PHASE_POWER + ".1": 121,
            snmp.RPDU2_BANK_CURRENT + ".1": 30, snmp.RPDU2_BANK_CURRENT + ".2": 35,
            snmp.RPDU2_OUTLET_CURRENT + ".1": 10, snmp.RPDU2_OUTLET_POWER + ".1": 220}


def _rpdu_values() -> dict[str, Any]:
    from ingest.sources import snmp

    return {snmp.RPDU_DEVICE_POWER_W: 1210, snmp.RPDU_LOAD + ".1": 65, snmp.RPDU_LOAD_PHASE + ".1": 1,
            snmp.RPDU_LOAD_BANK + ".1": 0, snmp.RPDU_LOAD + ".2": 30, snmp.RPDU_LOAD_PHASE + ".2": 1,
            snmp.RPDU_LOAD_BANK + ".2": 1}


@st.composite
def snmp_tables(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    values = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["value", "drop", "index", "extra"]))
        oid = draw(st.sampled_from(sorted(base)))
        if action == "value":
            values[oid] = draw(wild)
        elif action == "drop":
            values.pop(oid, None)
        elif action == "index":  # odd row indexes: 0, huge, non-numeric, multi-component
            stem = oid.rsplit(".", 1)[0]
            values[f"{stem}.{draw(st.sampled_from(['0', '4294967295', '99999999999999999999', 'x', '1.2']))}"] = \
                draw(wild)
        else:
            values[f"1.3.6.1.4.1.318.{draw(st.integers(0, 99))}"] = draw(wild)
    return values


@budgets('snmp')
@pytest.mark.parametrize("profile", ["rpdu2", "rpdu"])
def test_snmp_parsers_survive_odd_agent_tables(profile: str, budget: int, fast: bool) -> None:
    from ingest.sources.snmp import parse_rpdu, parse_rpdu2

    parse, base = (parse_rpdu2, _rpdu2_values()) if profile == "rpdu2" else (parse_rpdu, _rpdu_values())
    baseline = judge("snmp", lambda: [parse(base, pdu_id="p1", sampled_at=T0)])
    assert baseline and baseline[0].power_w == pytest.approx(1210.0)  # type: ignore[attr-defined]

    @_settings(budget, fast=fast)
    @given(snmp_tables(base))
    def run(values: dict[str, Any]) -> None:
        judge("snmp", lambda: [parse(values, pdu_id="p1", sampled_at=T0)])

    run()


def test_snmp_power_in_watts_instead_of_hundredths_of_kw_is_flagged_when_impossible() -> None:
    from ingest.sources import snmp

    values = _rpdu2_values()
    values[snmp.RPDU2_DEVICE_POWER + ".1"] = 121 * 10_000_000  # a milliwatt-scale agent bug: 12 GW
    (sample,) = judge("snmp", lambda: [snmp.parse_rpdu2(values, pdu_id="p1", sampled_at=T0)])
    assert sample.power_w is None and "power_w" in sample.invalid_fields  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- nvml


class FakeNvml:
    """An NVML-shaped module whose every call returns a drawn value or raises NVMLError."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_ERROR_NOT_SUPPORTED = 3

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def _answer(self, name: str, default: Any) -> Any:
        value = self.answers.get(name, default)
        if isinstance(value, FakeNvml.NVMLError):
            raise value
        return value

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self._answer("uuid", b"GPU-0000")

    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> Any:
        return self._answer("temp", 65)

    def nvmlDeviceGetPowerUsage(self, h: int) -> Any:
        return self._answer("power_mw", 300_000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> Any:
        return self._answer("limit_mw", 400_000)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> Any:
        return self._answer("sm_clock" if kind == 1 else "mem_clock", 1410)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return type("Util", (), {"gpu": self._answer("util", 80)})()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return type("Mem", (), {"used": self._answer("fb_bytes", 2**34)})()

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> Any:
        return self._answer("energy_mj", 123_456_789)

    def nvmlDeviceGetTemperatureThreshold(self, h: int, kind: int) -> Any:
        return self._answer("slowdown", 87)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> Any:
        return self._answer("reasons", 0)


NVML_KEYS = ("uuid", "temp", "power_mw", "limit_mw", "sm_clock", "mem_clock", "util", "fb_bytes", "energy_mj",
             "slowdown", "reasons")
nvml_values = st.one_of(st.binary(max_size=40), st.text(max_size=40),  # uuid answers; numbers elsewhere
                        st.integers(-(2**70), 2**70), st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, -1, 0]),
                        st.builds(FakeNvml.NVMLError, st.sampled_from([1, 2, 3, 999])))


@budgets()
def test_nvml_reading_survives_driver_values(budget: int, fast: bool) -> None:
    from contracts import GpuSample
    from ingest.sources.nvml import read_gpu

    @_settings(budget, fast=fast)
    @given(st.dictionaries(st.sampled_from(NVML_KEYS), nvml_values, max_size=4))
    def run(answers: dict[str, Any]) -> None:
        # NVML's ctypes bindings return bytes/str only for the UUID and integers everywhere else.
        answers = {k: v for k, v in answers.items()
                   if (k == "uuid") == isinstance(v, bytes | str) or isinstance(v, FakeNvml.NVMLError)}
        judge("nvml", lambda: [GpuSample(server_id="s1", sampled_at=T0, gpus=[read_gpu(FakeNvml(answers), 0)])])

    run()


def test_nvml_power_is_converted_from_milliwatts() -> None:
    from contracts import GpuSample
    from ingest.sources.nvml import read_gpu

    (sample,) = judge("nvml", lambda: [GpuSample(server_id="s1", sampled_at=T0,
                                                 gpus=[read_gpu(FakeNvml({"power_mw": 312_500}), 0)])])
    assert sample.gpus[0].power_usage_w == pytest.approx(312.5)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- replay


def _replay_row(i: int = 0) -> dict[str, Any]:
    return {"server_id": f"s{i}", "at_s": 10.0, "hottest_gpu_temp_c": 66.0, "gpu_power_w": 2400.0,
            "server_power_w": 4100.0, "inlet_temp_c": 24.0, "mean_gpu_util_pct": 70.0,
            "prefill_tokens_per_s": 1500.0, "decode_tokens_per_s": 600.0, "batch_size": 12.0,
            "frequency_cap_mhz": 1410.0, "config_id": "llama2-70b-tp8", "num_gpus": 8, "slowdown_temp_c": 87.0,
            "pdu_id": "pdu-1"}


@budgets('replay_row')
def test_replay_rows_survive_bad_cells(budget: int, fast: bool) -> None:
    from ingest.sources.replay import pdu_messages, row_messages

    @_settings(budget, fast=fast)
    @given(st.sampled_from(sorted(_replay_row())), wild)
    def run(column: str, value: Any) -> None:
        row = {**_replay_row(), column: value}

        def produce() -> list[Contract]:
            gpu, inlet = row_messages(row, T0)
            return [gpu, *([inlet] if inlet else []), *pdu_messages([row], T0)]

        judge("replay_row", produce)

    run()


@pytest.mark.parametrize("budget,fast", [(10, True), pytest.param(150, False, marks=pytest.mark.fuzz)],
                         ids=["fast", "full"])
def test_replay_file_with_duplicate_and_out_of_order_timestamps(tmp_path: Path, budget: int, fast: bool) -> None:
    """Shuffled rows with repeated instants come out in time order, one GPU sample per row, none lost."""
    import pandas as pd

    from contracts import GpuSample
    from ingest.sources.replay import ReplaySource

    @_settings(budget, fast=fast)
    @given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 1.0, 1.0, 2.5, 7.0])), min_size=1, max_size=25),
           st.booleans(), st.randoms(use_true_random=False))
    def run(rows: list[tuple[int, float]], epoch: bool, rnd: Any) -> None:
        # A recording uses either relative seconds or epoch seconds throughout.
        rows = [(s, at + 1.7e9) for s, at in rows] if epoch else rows
        frame = pd.DataFrame([{**_replay_row(s), "at_s": at} for s, at in rows])
        frame = frame.sample(frac=1.0, random_state=rnd.randint(0, 2**31 - 1))
        path = tmp_path / "rec.csv"
        frame.to_csv(path, index=False)
        src = ReplaySource(path, speed=0, start_at=T0)
        out = judge("replay_file", lambda: [m for r in src.rounds() for m in r])
        gpus = [m for m in out if isinstance(m, GpuSample)]
        assert len(gpus) == len(rows), "a duplicate or out-of-order row was lost or invented"
        instants = [g.sampled_at for g in gpus]
        assert instants == sorted(instants), "replay emitted samples out of time order"
        if all(at < 1e9 for _, at in rows):
            assert min(instants) == T0 + timedelta(seconds=min(at for _, at in rows))

    run()


def _known_crash_inputs() -> dict[str, Callable[[], list[Contract]]]:
    from ingest.sources import snmp
    from ingest.sources.redfish import discover
    from ingest.sources.replay import row_messages
    from ingest.validate import check

    class ListRoot:
        def get(self, path: str) -> Any:
            return []

    def check_huge() -> list[Contract]:
        check(10**400, "chassis_power_w")
        return []

    def redfish_list_root() -> list[Contract]:
        discover(ListRoot())
        return []

    def replay(column: str, value: Any) -> Callable[[], list[Contract]]:
        def run() -> list[Contract]:
            gpu, inlet = row_messages({**_replay_row(), column: value}, T0)
            return [gpu, *([inlet] if inlet else [])]
        return run

    def snmp_values(values: dict[str, Any], parse: Callable[..., Contract]) -> Callable[[], list[Contract]]:
        return lambda: [parse(values, pdu_id="p1", sampled_at=T0)]

    return {
        "edge_check-huge-int": check_huge,
        "redfish-list-document": redfish_list_root,
        "replay-num_gpus-half": replay("num_gpus", 0.5),  # int(0.5) == 0 GPUs: ZeroDivisionError
        "replay-num_gpus-65": replay("num_gpus", 65),
        "replay-num_gpus-text": replay("num_gpus", "text"),
        "replay-prefill-text": replay("prefill_tokens_per_s", "text"),
        "replay-batch-negative": replay("batch_size", -1),
        "snmp-rpdu2-huge-counter": snmp_values({**_rpdu2_values(), snmp.RPDU2_DEVICE_POWER + ".1": 10**400},
                                               snmp.parse_rpdu2),
        "snmp-rpdu-text-bank": snmp_values({**_rpdu_values(), snmp.RPDU_LOAD_BANK + ".1": "text"}, snmp.parse_rpdu),
    }


def _case_marks(case: str) -> list[pytest.MarkDecorator]:
    """Strict xfail while the case's parser is still listed in KNOWN_CRASHES; a plain regression test once fixed."""
    kind = {"replay": "replay_row"}.get(case.split("-", 1)[0], case.split("-", 1)[0])
    reason = KNOWN_CRASHES.get(kind)
    return [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []


@pytest.mark.parametrize("case", [pytest.param(c, marks=_case_marks(c)) for c in sorted(_known_crash_inputs())])
def test_known_ingest_crash(case: str) -> None:
    judge(case, _known_crash_inputs()[case])

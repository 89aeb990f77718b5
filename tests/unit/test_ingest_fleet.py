"""The fleet collector's scheduler (intervals, jitter, bound, backoff, isolation) and its TOML source list.

Sources here are plain objects with ``read``/``close`` (the scheduler's whole seam);
the Redfish and SNMP sources behind it are tested against the DMTF mockup and
snmpsim in ``tests/integration``. Timings use the real clock over about a second,
with bounds set by the schedule's arithmetic, not by this machine's speed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from contracts import ConfigError, InletSample, SourceError
from contracts.messages import Contract
from ingest.fleet import FleetPoller, SourceSpec, fleet_specs, load_fleet_config

T0 = datetime(2026, 12, 8, tzinfo=UTC)


class CountingSource:
    """Returns one inlet sample per read; records concurrency and can fail or hang on demand."""

    active = 0
    max_active = 0
    lock = threading.Lock()

    def __init__(self, name: str, *, fail: bool = False, hang: threading.Event | None = None,
                 work_s: float = 0.0) -> None:
        self.name = name
        self.fail = fail
        self.hang = hang
        self.work_s = work_s
        self.reads: list[float] = []
        self.closed = False

    def read(self) -> Sequence[Contract]:
        cls = CountingSource
        with cls.lock:
            cls.active += 1
            cls.max_active = max(cls.max_active, cls.active)
        try:
            self.reads.append(time.monotonic())
            if self.hang is not None:
                self.hang.wait(10.0)
            if self.work_s:
                time.sleep(self.work_s)
            if self.fail:
                raise SourceError(f"redfish {self.name}: connection refused")
            return [InletSample(server_id=self.name, sampled_at=T0, inlet_temp_c=24.0, source="redfish")]
        finally:
            with cls.lock:
                cls.active -= 1

    def close(self) -> None:
        self.closed = True


def spec(src: CountingSource, interval_s: float) -> SourceSpec:
    return SourceSpec(src.name, "test", interval_s, lambda: src)


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    CountingSource.active = CountingSource.max_active = 0


def run(specs: list[SourceSpec], duration_s: float, **kw: object) -> tuple[FleetPoller, list[Contract]]:
    got: list[Contract] = []
    poller = FleetPoller(specs, got.extend, rng=np.random.default_rng(0), **kw)  # type: ignore[arg-type]
    poller.run(duration_s=duration_s)
    poller.close()
    return poller, got


def test_each_source_keeps_its_own_interval() -> None:
    fast, slow = CountingSource("fast"), CountingSource("slow")
    poller, got = run([spec(fast, 0.1), spec(slow, 0.5)], 1.6)
    # first poll jittered within the interval, then one per interval until 1.6 s
    assert 13 <= len(fast.reads) <= 17
    assert 3 <= len(slow.reads) <= 4
    gaps = np.diff(fast.reads)
    assert np.median(gaps) == pytest.approx(0.1, abs=0.03)
    assert len(got) == poller.stats.num_polls == len(fast.reads) + len(slow.reads)
    assert fast.closed and slow.closed


def test_start_is_jittered_across_the_interval() -> None:
    sources = [CountingSource(f"s{i}") for i in range(40)]
    run([spec(s, 1.0) for s in sources], 0.5)
    polled = sum(1 for s in sources if s.reads)
    assert 10 <= polled <= 30  # about half start in the first half of their interval, not all at t=0


def test_in_flight_polls_are_bounded() -> None:
    sources = [CountingSource(f"s{i}", work_s=0.05) for i in range(20)]
    poller, _ = run([spec(s, 0.05) for s in sources], 0.8, max_in_flight=4)
    assert CountingSource.max_active == 4
    assert poller.stats.num_late > 0  # 20 sources x 1 poll/50 ms of 50 ms each need 20 workers: they wait
    assert poller.stats.num_polls <= 4 * 0.8 / 0.05 + 4


def test_a_failing_source_backs_off_and_the_others_keep_their_schedule() -> None:
    bad, good = CountingSource("bad", fail=True), CountingSource("good")
    poller, got = run([spec(bad, 0.05), spec(good, 0.05)], 1.2, max_backoff_s=10.0)
    # backoff 0.1, 0.2, 0.4, 0.8 s (±10 %) after the first failure: at most 5 tries in 1.2 s, not 24
    assert 2 <= len(bad.reads) <= 5
    assert len(good.reads) >= 18
    assert poller.stats.num_errors == len(bad.reads)
    assert poller.metrics.errors.labels("bad")._value.get() == len(bad.reads)
    assert poller.failures() == {"bad": "redfish bad: connection refused"}
    assert all(m.server_id == "good" for m in got)  # type: ignore[attr-defined]


def test_a_hanging_source_does_not_stall_the_others() -> None:
    release = threading.Event()
    stuck, ok = CountingSource("stuck", hang=release), CountingSource("ok")
    timer = threading.Timer(1.0, release.set)
    timer.start()
    try:
        _, _ = run([spec(stuck, 0.05), spec(ok, 0.05)], 0.9, max_in_flight=2)
    finally:
        timer.join()
    assert len(stuck.reads) == 1  # never polled again while its first poll hangs
    assert len(ok.reads) >= 14


def test_once_polls_every_source_a_single_time_and_reports_failures() -> None:
    sources = [CountingSource(f"s{i}", fail=i == 3) for i in range(10)]
    got: list[Contract] = []
    poller = FleetPoller([spec(s, 60.0) for s in sources], got.extend, max_in_flight=3,
                         rng=np.random.default_rng(1))
    stats = poller.run(once=True)
    poller.close()
    assert [len(s.reads) for s in sources] == [1] * 10
    assert stats.num_polls == 9 and stats.num_errors == 1 and len(got) == 9
    assert list(poller.failures()) == ["s3"]


def test_a_source_that_cannot_be_built_is_a_failed_poll_not_a_crash() -> None:
    def refuse() -> CountingSource:
        raise SourceError("redfish http://10.0.0.9: cannot connect")

    good = CountingSource("good")
    poller, _ = run([SourceSpec("dead", "redfish", 0.1, refuse), spec(good, 0.1)], 0.6)
    assert poller.stats.num_errors >= 1 and len(good.reads) >= 4
    assert "cannot connect" in poller.failures()["dead"]


# --------------------------------------------------------------------------- the TOML source list

GOOD = """
[defaults]
redfish_interval_s = 15
snmp_interval_s = 1
max_in_flight = 8

[[redfish]]
server_id = "row01-rack01-srv01"
url = "https://10.0.3.7"
username = "tapas"
password_env = "TAPAS_TEST_BMC_PASSWORD"

[[redfish]]
server_id = "row01-rack01-srv02"
url = "https://10.0.3.8"
interval_s = 30

[[snmp]]
pdu_id = "row01-rack01-pdu-a"
host = "10.0.3.200"
profile = "apc-rpdu2"
server_ids = ["row01-rack01-srv01", "row01-rack01-srv02"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    return p


def test_config_gives_each_source_its_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPAS_TEST_BMC_PASSWORD", "s3cret")
    cfg = load_fleet_config(write(tmp_path, GOOD))
    specs = fleet_specs(cfg)
    assert [(s.name, s.kind, s.interval_s) for s in specs] == [
        ("redfish:row01-rack01-srv01", "redfish", 15.0), ("redfish:row01-rack01-srv02", "redfish", 30.0),
        ("snmp:row01-rack01-pdu-a", "snmp", 1.0)]
    assert cfg.defaults.max_in_flight == 8


def test_default_redfish_interval_is_ten_seconds(tmp_path: Path) -> None:
    cfg = load_fleet_config(write(tmp_path, '[[redfish]]\nserver_id = "a"\nurl = "http://b"\n'))
    assert fleet_specs(cfg)[0].interval_s == 10.0


@pytest.mark.parametrize(("text", "match"), [
    ('[[redfish]]\nserver_id = "a"\n', r"redfish\[0\]\.url: Field required"),
    ('[[snmp]]\npdu_id = "p"\nhost = "h"\nport = 99999\n', r"snmp\[0\]\.port"),
    ('[[redfish]]\nserver_id = "a"\nurl = "u"\npasword = "x"\n', r"redfish\[0\]\.pasword: Extra inputs"),
    ('[[snmp]]\npdu_id = "p"\nhost = "h"\n[[snmp]]\npdu_id = "p"\nhost = "i"\n', "duplicate snmp pdu_id 'p'"),
    ("[defaults]\nredfish_interval_s = 0\n", r"defaults\.redfish_interval_s"),
    ("[defaults]\n", "no \\[\\[redfish\\]\\] or \\[\\[snmp\\]\\] entries"),
    ("[[redfish]\n", "not valid TOML"),
])
def test_bad_config_names_the_entry_and_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_fleet_config(write(tmp_path, text))


def test_missing_secret_variable_is_a_config_error(tmp_path: Path) -> None:
    assert "TAPAS_TEST_BMC_PASSWORD" not in os.environ
    cfg = load_fleet_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"\$TAPAS_TEST_BMC_PASSWORD, which is not set"):
        fleet_specs(cfg)

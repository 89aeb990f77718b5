"""SnmpSource walks the profile's tables once, then GETs the rows it found; a vanished row re-walks.

The client here is the SNMP seam (``get``/``walk`` over an OID map), not a mock of a
library: the real pysnmp client runs against snmpsim in ``tests/integration``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ingest.sources import snmp
from ingest.sources.snmp import SnmpSource

T0 = datetime(2026, 12, 8, tzinfo=UTC)


class TableAgent:
    """An OID → value map answering GET and subtree walks, counting requests of each kind."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.gets = self.walks = 0

    def get(self, oids: list[str]) -> dict[str, Any]:
        self.gets += 1
        return {o: self.values.get(o) for o in oids}

    def walk(self, base: str) -> dict[str, Any]:
        self.walks += 1
        return {o: v for o, v in self.values.items() if o.startswith(base + ".")}


def pdu(outlets: int) -> dict[str, Any]:
    v: dict[str, Any] = {f"{snmp.RPDU2_DEVICE_POWER}.1": 121, f"{snmp.RPDU2_PHASE_CURRENT}.1": 65}
    for i in range(1, outlets + 1):
        v[f"{snmp.RPDU2_OUTLET_POWER}.{i}"] = 40 + i
        v[f"{snmp.RPDU2_OUTLET_CURRENT}.{i}"] = 2
    return v


def test_known_rows_are_fetched_with_gets_and_give_the_same_sample() -> None:
    agent = TableAgent(pdu(40))
    src = SnmpSource(agent, pdu_id="p", profile="apc-rpdu2", rewalk_every=5, now=lambda: T0)
    first = src.read()[0]
    walks = agent.walks
    assert walks == len(snmp.PROFILES["apc-rpdu2"].walk) and agent.gets == 0
    second = src.read()[0]
    assert agent.walks == walks and agent.gets == 3  # 82 known OIDs in GETs of 32
    assert second == first and second.power_w == 1210.0 and len(second.phases) == 41


def test_tables_are_walked_again_every_n_reads() -> None:
    agent = TableAgent(pdu(2))
    src = SnmpSource(agent, pdu_id="p", profile="apc-rpdu2", rewalk_every=3, now=lambda: T0)
    for _ in range(7):
        src.read()
    per_walk = len(snmp.PROFILES["apc-rpdu2"].walk)
    assert agent.walks == 3 * per_walk  # reads 1, 4 and 7 walk; the others GET


def test_a_removed_outlet_is_dropped_and_the_next_read_walks() -> None:
    agent = TableAgent(pdu(3))
    src = SnmpSource(agent, pdu_id="p", profile="apc-rpdu2", rewalk_every=100, now=lambda: T0)
    src.read()
    del agent.values[f"{snmp.RPDU2_OUTLET_POWER}.3"], agent.values[f"{snmp.RPDU2_OUTLET_CURRENT}.3"]
    agent.values[f"{snmp.RPDU2_OUTLET_POWER}.4"] = 99  # a new outlet appears too
    agent.values[f"{snmp.RPDU2_OUTLET_CURRENT}.4"] = 5
    stale = src.read()[0]
    assert [p.name for p in stale.phases if p.name.startswith("outlet")] == ["outlet1", "outlet2"]
    walks = agent.walks
    fresh = src.read()[0]
    assert agent.walks > walks
    assert [p.name for p in fresh.phases if p.name.startswith("outlet")] == ["outlet1", "outlet2", "outlet4"]

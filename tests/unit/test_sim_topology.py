"""Topology: the shipped cluster file loads, budgets follow the oversubscription ratio, ids are consistent."""

from __future__ import annotations

import pytest

from contracts.errors import ConfigError
from foundation.topology import build_topology, default_topology, load_topology


def test_shipped_default_loads_and_is_consistent() -> None:
    topo = load_topology()
    assert topo.num_servers >= 200
    assert topo.num_gpus == 8 * topo.num_servers
    for server in topo.servers:
        rack = topo.racks[topo.rack_ids.index(server.rack_id)]
        assert server.server_id in rack.server_ids
        assert rack.row_id == server.row_id and rack.zone_id == server.zone_id
    assert len(set(topo.server_ids)) == topo.num_servers


def test_budget_is_nameplate_over_ratio() -> None:
    for ratio in (1.0, 1.3, 1.7):
        topo = default_topology(80, oversubscription=ratio)
        for row in topo.rows:
            assert row.budget_w == pytest.approx(row.nameplate_w / ratio)
            assert row.nameplate_w == pytest.approx(sum(s.nameplate_w for s in topo.servers if s.row_id == row.row_id))


def test_higher_slots_are_warmer_and_arrays_align() -> None:
    topo = default_topology(40)
    offsets = topo.server_array("inlet_offset_c")
    slots = topo.server_array("slot_in_rack")
    middle = [i for i, s in enumerate(topo.servers) if s.rack_in_row == 3]
    by_slot = sorted(middle, key=lambda i: slots[i])
    assert list(offsets[by_slot]) == sorted(offsets[by_slot])
    assert topo.server_row.shape == (40,) and topo.server_zone.max() < len(topo.zones)


def test_bad_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="oversubscription"):
        build_topology(oversubscription=40.0)
    with pytest.raises(ConfigError, match="unknown cluster keys"):
        build_topology(num_racks=3)

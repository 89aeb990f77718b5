"""Properties of everything the controller publishes, over random cluster states (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import PlacementHint, PlacementRequest, ReconfigCommand, RoutingWeights
from controller.safety import SafetyBounds, check_bounds
from controller.service import Controller
from foundation.settings import ControllerSettings
from tests.controller_world import T0, forecast, gpu_sample, world_catalogue, world_topology

TOPOLOGY = world_topology(8)
CATALOGUE = world_catalogue()

server_state = st.tuples(
    st.floats(min_value=30, max_value=95),  # hottest GPU now
    st.floats(min_value=0, max_value=12),  # forecast rise
    st.floats(min_value=18, max_value=55),  # inlet
    st.floats(min_value=1000, max_value=7000),  # server power
    st.one_of(st.none(), st.floats(min_value=0, max_value=20000)),  # SaaS tokens/s (None: no instance)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states=st.lists(server_state, min_size=8, max_size=8), min_freq=st.sampled_from([900.0, 1100.0, 1300.0]),
       ticks=st.integers(min_value=1, max_value=4))
def test_published_weights_commands_and_hints_are_valid_and_within_bounds(
        states: list[tuple[float, float, float, float, float | None]], min_freq: float, ticks: int) -> None:
    cs = ControllerSettings(metrics_port=0, min_frequency_mhz=min_freq)
    c = Controller(TOPOLOGY, CATALOGUE, cs, started_at=T0)
    bounds = SafetyBounds.from_settings(cs)
    published = []
    for k in range(ticks):
        now = T0 + timedelta(seconds=6 * k)
        for sid, (temp, rise, inlet, power, tokens) in zip(TOPOLOGY.server_ids, states, strict=True):
            c.handle("f", forecast(sid, now, temp_c=temp, hi_c=temp + rise, inlet_c=inlet, power_w=power), now=now)
            if tokens is not None:
                c.handle("g", gpu_sample(sid, now, tokens_per_s=tokens), now=now)
        published += [o.message for o in c.tick(now)]
        published += [o.message for o in c.handle(
            "p", PlacementRequest(request_id=f"r{k}", requested_at=now, vm_kind="iaas", num_gpus=8), now=now)]
    for m in published:
        if isinstance(m, RoutingWeights):
            assert abs(sum(w.weight for w in m.weights) - 1.0) < 1e-6
            assert all(0.0 <= w.weight <= 1.0 for w in m.weights)
        elif isinstance(m, ReconfigCommand):
            assert check_bounds(m, bounds) is None, m
            assert m.expires_at > m.issued_at
        elif isinstance(m, PlacementHint):
            free = {sid for sid, s in zip(TOPOLOGY.server_ids, states, strict=True) if s[4] is None}
            assert {x.server_id for x in m.candidates} <= free
            if m.reason.startswith("no server within limits"):
                # The policy's best-fit fallback (the one the simulator evaluates) says so and claims no headroom.
                assert "fallback best-fit" in m.reason and all(x.thermal_headroom_c < 0 for x in m.candidates)
            else:
                assert all(x.thermal_headroom_c >= 0 for x in m.candidates)
    ids = [m.command_id for m in published if isinstance(m, ReconfigCommand)]
    assert len(ids) == len(set(ids))

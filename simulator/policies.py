"""Policy registry and the ``baseline`` policy (thermal- and power-unaware, as clusters run today).

``POLICIES`` is the only place policy names are listed; the CLI's choices derive from it.
Each entry is a factory ``factory(*, topology, catalogue, seed) -> Policy`` (the
``controller.core.snapshot.Policy`` protocol: ``place(snapshot, request)`` and
``tick(snapshot, emergencies) -> TickActions``). The ``tapas`` family lives in
``simulator/policy_tapas.py`` (owned by the controller team) and is imported lazily, so
the simulator runs without it.

Baseline, mechanism by mechanism:

* placement — best-fit packing: the server with the fewest free GPUs that still fits the
  VM (whole free servers for SaaS instances), lowest index first; no temperature, power
  or cooling input.
* routing — none from the policy: the engine's default least-outstanding-work router.
* configuration — fixed (the endpoint's default); no reconfiguration.
* emergencies — nothing beyond the cluster's reactive power manager, which caps each
  row's clock uniformly (SaaS and IaaS alike) when the row exceeds its budget.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from contracts.errors import ConfigError
from controller.core.snapshot import (
    Emergency,
    PlacementCandidate,
    PlacementDecision,
    PlacementRequest,
    Policy,
    Snapshot,
    TickActions,
)


class BaselinePolicy:
    """Best-fit placement, no routing/reconfiguration decisions (engine's LOW router and reactive cap act)."""

    name = "baseline"
    perfect_forecasts = False

    def __init__(self, **_: Any) -> None:
        pass

    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        """Best fit: fewest free GPUs that still fit (SaaS needs a whole free server)."""
        free = snapshot.free_gpus
        if request.vm_kind == "saas":
            fits = free >= snapshot.num_gpus
        else:
            fits = free >= request.num_gpus
        idx = np.flatnonzero(fits)
        if len(idx) == 0:
            return PlacementDecision(request.request_id, False, (), "best-fit: no server has enough free GPUs")
        order = idx[np.lexsort((idx, free[idx]))][:10]
        cands = tuple(
            PlacementCandidate(server_index=int(s), server_id=snapshot.server_ids[int(s)], rank=r + 1,
                               score=float(free[s]), predicted_peak_gpu_temp_c=float("nan"),
                               thermal_headroom_c=float("nan"), row_power_headroom_w=float("nan"),
                               zone_heat_headroom_w=float("nan"), free_gpus=int(free[s]))
            for r, s in enumerate(order))
        return PlacementDecision(request.request_id, True, cands,
                                 f"best-fit: {int(free[order[0]])} free GPUs on {snapshot.server_ids[int(order[0])]}")

    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        """No decisions: fixed configurations, default routing."""
        del snapshot, emergencies
        return TickActions()


def _lazy(name: str) -> Callable[..., Policy]:
    def factory(**kwargs: Any) -> Policy:
        try:
            mod = importlib.import_module("simulator.policy_tapas")
        except ModuleNotFoundError as exc:
            if exc.name != "simulator.policy_tapas":
                raise
            raise ConfigError(f"policy {name!r} needs simulator/policy_tapas.py (controller team), not present yet") from None
        attr = "make_" + name.replace("-", "_")
        make = getattr(mod, attr, None)
        if make is None:
            raise ConfigError(f"simulator.policy_tapas has no {attr}() for policy {name!r}")
        return make(**kwargs)  # type: ignore[no-any-return]

    return factory


POLICIES: dict[str, Callable[..., Policy]] = {
    "baseline": BaselinePolicy,
    "tapas": _lazy("tapas"),
    "tapas-placement": _lazy("tapas-placement"),
    "tapas-routing": _lazy("tapas-routing"),
    "tapas-reconfig": _lazy("tapas-reconfig"),
    "oracle": _lazy("oracle"),
}


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Instantiate a registered policy (kwargs: ``topology``, ``catalogue``, ``seed``)."""
    if name not in POLICIES:
        raise ConfigError(f"policy={name!r} unknown; choose from {', '.join(POLICIES)}")
    return POLICIES[name](**kwargs)

"""A configuration sweep on top of any policy: telemetry with configuration changes to learn from.

Forecasting models must be trained and backtested on history in which SaaS instances
change configuration (frequency cap, precision, tensor parallelism, model variant), or
they will never have seen the steps a reconfiguration causes. A calm cluster run by
``baseline`` (or by ``tapas`` with headroom to spare) hardly reconfigures, so
``record_telemetry(config_sweep_s=...)`` wraps its policy in :class:`ConfigSweep`,
which does what an operator's calibration campaign does: every ``every_s`` it moves a
random share of the instances to a random catalogue option of their endpoint that can
still carry the instance's current load at the SLO (with ``capacity_margin`` to spare),
so the sweep varies power and heat without melting the SLO down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller.core.catalogue import Catalogue
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    PlacementDecision,
    PlacementRequest,
    Policy,
    Snapshot,
    TickActions,
)


class ConfigSweep:
    """Delegate to ``base``; every ``every_s`` also switch ``share`` of the instances to random feasible options.

    Args:
        base: the policy that runs the cluster (placement, routing, its own reconfiguration).
        catalogue: the simulation's catalogue (options per endpoint).
        every_s: seconds between sweep rounds.
        share: fraction of the instances switched per round.
        capacity_margin: an option qualifies when its SLO capacity is at least this times the
            instance's current load.
        seed: random seed of the choices.
    """

    perfect_forecasts = False

    def __init__(self, base: Policy, catalogue: Catalogue, *, every_s: float = 600.0, share: float = 0.1,
                 capacity_margin: float = 1.2, seed: int = 0) -> None:
        if every_s <= 0 or not 0.0 < share <= 1.0:
            raise ValueError(f"ConfigSweep: every_s={every_s} must be > 0 and share={share} in (0, 1]")
        self.base = base
        self.name = f"{getattr(base, 'name', 'custom')}+sweep"
        self.perfect_forecasts = bool(getattr(base, "perfect_forecasts", False))
        self.catalogue = catalogue
        self.every_s = every_s
        self.share = share
        self.capacity_margin = capacity_margin
        self.rng = np.random.default_rng(seed)
        self.next_round_s = every_s
        self.switches = 0

    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        """The base policy's placement."""
        return self.base.place(snapshot, request)

    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        """The base policy's actions, plus this round's switches (none for instances the base switches)."""
        actions = self.base.tick(snapshot, emergencies)
        if snapshot.now_s < self.next_round_s or len(snapshot.instances) == 0:
            return actions
        self.next_round_s = snapshot.now_s + self.every_s
        inst = snapshot.instances
        taken = {c.instance_index for c in actions.changes}
        k = max(1, int(round(self.share * len(inst))))
        chosen = self.rng.choice(len(inst), size=min(k, len(inst)), replace=False)
        extra: list[ConfigChange] = []
        for i in sorted(int(x) for x in chosen):
            if i in taken or inst.draining[i] or inst.busy_until_s[i] > snapshot.now_s:
                continue
            current = inst.config_ids[i]
            load = float(inst.load_tokens_per_s[i])
            options = [o for o in self.catalogue.options[inst.endpoint_ids[i]]
                       if o.config_id != current and o.capacity_tokens_per_s_at_slo >= self.capacity_margin * load]
            if not options:
                continue
            to = options[int(self.rng.integers(len(options)))]
            extra.append(ConfigChange(
                instance_id=inst.instance_ids[i], instance_index=i, server_index=int(inst.server_index[i]),
                server_id=snapshot.server_ids[int(inst.server_index[i])], from_config_id=current,
                to_config_id=to.config_id, slow=self.catalogue.is_slow_switch(current, to.config_id),
                trigger="load", headroom=float(to.capacity_tokens_per_s_at_slo - load),
                reason="configuration sweep (training data)", issued_at_s=snapshot.now_s,
                expires_at_s=snapshot.now_s + 2.0 * self.every_s))
        self.switches += len(extra)
        return TickActions(routing=actions.routing, changes=(*actions.changes, *extra), caps=actions.caps,
                           released_caps=actions.released_caps, plans=actions.plans)

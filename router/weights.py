"""Routing weights → what a router applies: pure functions, time passed in.

Two consumers share these rules:

* the HAProxy adapter turns each endpoint's latest :class:`~contracts.RoutingWeights`
  into integer server weights (``0..256``, HAProxy's range);
* the per-endpoint sidecar turns them into one instance's gauges.

**Failing safe.** Weights are *stale* once ``now`` passes their ``valid_until`` or
they are older than ``stale_after_s``. A server whose instance has no fresh weights
gets the equal weight (:data:`HAPROXY_MAX_WEIGHT`, the same for every server), so the
router then balances as it would without TAPAS; a drained instance's weight 0 is
lifted too. Until ``stale_after_s`` has passed since the router started, servers
without any weights keep whatever weight HAProxy's configuration gave them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from contracts import ConfigError, RoutingWeights

#: HAProxy accepts absolute weights 0..256 (``set server <b>/<s> weight``).
HAPROXY_MAX_WEIGHT = 256
#: The weight every mapped server gets while its weights are stale (equal weights).
EQUAL_WEIGHT = HAPROXY_MAX_WEIGHT

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True, order=True)
class ServerRef:
    """One HAProxy server: ``backend/server``."""

    backend: str
    server: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.server}"


def parse_map(text: str, source: str = "<map>") -> dict[str, ServerRef]:
    """Parse a map file: one ``<instance_id> <backend>/<server>`` per line, ``#`` comments.

    Args:
        text: the file's contents.
        source: the file name, for error messages.

    Returns:
        TAPAS instance id → HAProxy server.

    Raises:
        ConfigError: naming the file, the line and what is wrong with it.

    Examples:
        >>> parse_map("llama-0  llama/s0  # rack 1\\nllama-1 llama/s1\\n")["llama-1"]
        ServerRef(backend='llama', server='s1')
    """
    mapping: dict[str, ServerRef] = {}
    used: dict[ServerRef, str] = {}
    for num, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source}:{num}"
        if len(parts) != 2 or parts[1].count("/") != 1:
            raise ConfigError(f"{where}: expected '<instance_id> <backend>/<server>', got {raw.strip()!r}")
        instance_id, target = parts
        backend, server = target.split("/")
        for what, name in (("instance id", instance_id), ("backend", backend), ("server", server)):
            if not _NAME.match(name):
                raise ConfigError(f"{where}: {what} {name!r} may only hold letters, digits and _ . : -")
        ref = ServerRef(backend, server)
        if instance_id in mapping:
            raise ConfigError(f"{where}: instance {instance_id!r} is mapped twice (first to {mapping[instance_id]})")
        if ref in used:
            raise ConfigError(f"{where}: server {ref} is already mapped to instance {used[ref]!r}")
        mapping[instance_id] = ref
        used[ref] = instance_id
    if not mapping:
        raise ConfigError(f"{source}: maps no instance (expected lines '<instance_id> <backend>/<server>')")
    return mapping


def is_fresh(msg: RoutingWeights, now: datetime, stale_after_s: float) -> bool:
    """True while ``msg`` may be applied: before its ``valid_until`` and younger than ``stale_after_s``."""
    return now <= msg.valid_until and (now - msg.issued_at).total_seconds() <= stale_after_s


def haproxy_weights(latest: Mapping[str, RoutingWeights], mapping: Mapping[str, ServerRef], *, now: datetime,
                    stale_after_s: float, started_at: datetime) -> dict[ServerRef, int]:
    """The integer weight each mapped HAProxy server should have now.

    Fresh weights are scaled so that an endpoint's largest weight becomes 256 (ratios
    kept at HAProxy's full resolution); a drained instance gets 0; an active one never
    rounds down to 0. Servers whose weights are stale get :data:`EQUAL_WEIGHT`; servers
    never named by any weights get it once the start-up grace of ``stale_after_s`` is
    over, and are left out (untouched) before. When two endpoints name one instance,
    fresh weights win over stale ones.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> from contracts import InstanceWeight
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> msg = RoutingWeights(endpoint_id="llama", issued_at=t, valid_until=t + timedelta(seconds=10),
        ...                      weights=[InstanceWeight(instance_id="a", weight=0.75),
        ...                               InstanceWeight(instance_id="b", weight=0.25)])
        >>> m = {"a": ServerRef("llama", "s0"), "b": ServerRef("llama", "s1")}
        >>> w = haproxy_weights({"llama": msg}, m, now=t, stale_after_s=15, started_at=t)
        >>> w[m["a"]], w[m["b"]]
        (256, 85)
        >>> late = t + timedelta(seconds=11)  # past valid_until: equal weights
        >>> sorted(haproxy_weights({"llama": msg}, m, now=late, stale_after_s=15, started_at=t).values())
        [256, 256]
    """
    out: dict[ServerRef, int] = {}
    for msg in latest.values():
        if not is_fresh(msg, now, stale_after_s):
            for w in msg.weights:  # stale: equal weights at once, start-up grace or not
                ref = mapping.get(w.instance_id)
                if ref is not None:
                    out.setdefault(ref, EQUAL_WEIGHT)
            continue
        top = max((w.weight for w in msg.weights if w.state == "active"), default=0.0)
        for w in msg.weights:
            ref = mapping.get(w.instance_id)
            if ref is None:
                continue
            if w.state == "drain" or w.weight <= 0.0 or top <= 0.0:
                out[ref] = 0
            else:
                out[ref] = max(1, min(HAPROXY_MAX_WEIGHT, round(HAPROXY_MAX_WEIGHT * w.weight / top)))
    if (now - started_at).total_seconds() >= stale_after_s:
        for ref in mapping.values():
            out.setdefault(ref, EQUAL_WEIGHT)
    return out


@dataclass(frozen=True)
class InstanceView:
    """What the sidecar exports for its one instance."""

    endpoint_id: str
    instance_id: str
    weight: float
    draining: bool
    stale: bool
    num_instances: int
    thermal_headroom_c: float | None
    power_headroom_w: float | None
    capacity_tokens_per_s: float | None
    age_s: float


def instance_view(msg: RoutingWeights, instance_id: str, *, now: datetime, stale_after_s: float) -> InstanceView | None:
    """The sidecar's view of ``instance_id`` in ``msg`` (None when the message does not name it).

    Stale weights report the equal share ``1/n`` and no drain, so an endpoint picker
    scoring on the weight balances evenly, as it would without TAPAS.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> from contracts import InstanceWeight
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> msg = RoutingWeights(endpoint_id="llama", issued_at=t, valid_until=t + timedelta(seconds=10),
        ...                      weights=[InstanceWeight(instance_id="a", weight=0.75, thermal_headroom_c=12.5),
        ...                               InstanceWeight(instance_id="b", weight=0.25)])
        >>> v = instance_view(msg, "a", now=t, stale_after_s=15)
        >>> v.weight, v.thermal_headroom_c, v.stale
        (0.75, 12.5, False)
        >>> instance_view(msg, "a", now=t + timedelta(seconds=20), stale_after_s=15).weight
        0.5
    """
    mine = next((w for w in msg.weights if w.instance_id == instance_id), None)
    if mine is None:
        return None
    fresh = is_fresh(msg, now, stale_after_s)
    n = len(msg.weights)
    return InstanceView(
        endpoint_id=msg.endpoint_id, instance_id=instance_id,
        weight=mine.weight if fresh else 1.0 / n,
        draining=fresh and (mine.state == "drain" or mine.weight <= 0.0),
        stale=not fresh, num_instances=n,
        thermal_headroom_c=mine.thermal_headroom_c, power_headroom_w=mine.power_headroom_w,
        capacity_tokens_per_s=mine.capacity_tokens_per_s,
        age_s=max(0.0, (now - msg.issued_at).total_seconds()),
    )

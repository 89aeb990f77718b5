"""Safety bounds for reconfiguration commands, applied when issuing and again when receiving.

The controller (``controller.service``) and the node agent (``controller.agent``) both
pass every :class:`~contracts.ReconfigCommand` through a :class:`SafetyGate` before
acting on it. A command outside the bounds is *refused and reported* (a
``safety_refused`` :class:`~contracts.ControlEvent`), never applied; a command id seen
before is reported as a duplicate and applied once only.

Bounds (all from :class:`foundation.settings.ControllerSettings`):

* frequency cap within ``[min_frequency_mhz, max_frequency_mhz]``;
* power limit within ``[min_power_limit_w, max_power_limit_w]``;
* no command leaves an instance below ``min_capacity_frac`` of its nominal capacity at
  SLO (checked where the caller knows the capacity the command leads to);
* expiry after issue and no later than ``max_command_ttl_s`` after it;
* on the receiver's clock: ``issued_at`` no more than ``max_clock_skew_s`` ahead of
  ``now`` and ``expires_at - now <= max_command_ttl_s + max_clock_skew_s`` (the sender's
  times alone prove nothing: a command "issued" ten years ahead would otherwise stay in
  force for ten years);
* at most ``max_commands_per_instance_per_min`` commands per target in any 60 s
  window. The target is what the gate's owner chooses (``rate_keys``): the controller
  counts per instance (or server); the node agent counts per GPU of its server, so an
  attacker-chosen ``instance_id`` opens no new budget. Emergency commands (``trigger ==
  "emergency"``) are exempt from the rate limit only when they *tighten* the current
  state (the caller says so: the agent compares with what it has applied), because a
  power emergency has a deadline of seconds (POLCA, ASPLOS 2024); never a ``revert`` or
  a command that raises a cap. They still must respect every bound.
* a ``command_id`` is bound to its content (:func:`controller.signing.content_digest`):
  the same id with other content is refused, not treated as a duplicate.

Everything here is pure or holds only bounded in-memory state; time is an argument.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from contracts import ControlEvent, ReconfigCommand, ReconfigParams, SafetyViolation
from controller.signing import content_digest
from foundation.settings import ControllerSettings

RATE_WINDOW_S = 60.0
#: Actions the node agent applies on the host through NVML; the rest are for the serving layer.
HOST_ACTIONS = frozenset({"set_frequency_cap", "set_power_limit", "revert"})


@dataclass(frozen=True)
class SafetyBounds:
    """The limits no command may cross, whoever issued it."""

    min_frequency_mhz: float = 900.0
    max_frequency_mhz: float = 3000.0
    min_power_limit_w: float = 100.0
    max_power_limit_w: float = 1200.0
    min_capacity_frac: float = 0.3
    max_ttl_s: float = 900.0
    max_commands_per_window: int = 6
    rate_window_s: float = RATE_WINDOW_S
    max_clock_skew_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: ControllerSettings) -> SafetyBounds:
        """The bounds configured for the controller and the agent."""
        return cls(
            min_frequency_mhz=settings.min_frequency_mhz,
            max_frequency_mhz=settings.max_frequency_mhz,
            min_power_limit_w=settings.min_power_limit_w,
            max_power_limit_w=settings.max_power_limit_w,
            min_capacity_frac=settings.min_capacity_frac,
            max_ttl_s=settings.max_command_ttl_s,
            max_commands_per_window=settings.max_commands_per_instance_per_min,
            max_clock_skew_s=settings.agent_max_clock_skew_s,
        )


def check_bounds(command: ReconfigCommand, bounds: SafetyBounds, *, capacity_frac_after: float | None = None) -> str | None:
    """Why ``command`` breaks a bound, or ``None`` when it is within all of them.

    Args:
        command: the command to check.
        bounds: the configured limits.
        capacity_frac_after: the instance's capacity at SLO after the command as a
            fraction of its nominal capacity, when the caller can compute it
            (the controller knows the catalogue; the agent does not).

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> cmd = ReconfigCommand(command_id="cmd-00000001", issued_at=t, expires_at=t + timedelta(minutes=2),
        ...                       server_id="s1", action="set_frequency_cap",
        ...                       params=ReconfigParams(frequency_cap_mhz=600), reason="test")
        >>> check_bounds(cmd, SafetyBounds(min_frequency_mhz=900))
        'params.frequency_cap_mhz=600 below the minimum frequency 900 MHz'
    """
    p = command.params
    ttl_s = (command.expires_at - command.issued_at).total_seconds()
    if ttl_s <= 0:
        return "expires_at must be after issued_at"
    if ttl_s > bounds.max_ttl_s + 1e-6:
        return f"expiry {ttl_s:.0f} s after issue exceeds the maximum {bounds.max_ttl_s:.0f} s"
    if command.action == "set_frequency_cap":
        if p.frequency_cap_mhz is None:
            return "set_frequency_cap needs params.frequency_cap_mhz"
    if p.frequency_cap_mhz is not None:
        if p.frequency_cap_mhz < bounds.min_frequency_mhz:
            return (f"params.frequency_cap_mhz={p.frequency_cap_mhz:g} below the minimum frequency "
                    f"{bounds.min_frequency_mhz:g} MHz")
        if p.frequency_cap_mhz > bounds.max_frequency_mhz:
            return (f"params.frequency_cap_mhz={p.frequency_cap_mhz:g} above the maximum frequency "
                    f"{bounds.max_frequency_mhz:g} MHz")
    if command.action == "set_power_limit" and p.power_limit_w is None:
        return "set_power_limit needs params.power_limit_w"
    if p.power_limit_w is not None and not bounds.min_power_limit_w <= p.power_limit_w <= bounds.max_power_limit_w:
        return (f"params.power_limit_w={p.power_limit_w:g} outside [{bounds.min_power_limit_w:g}, "
                f"{bounds.max_power_limit_w:g}] W")
    needs = {"set_max_batch": p.max_batch, "set_tensor_parallelism": p.tensor_parallelism,
             "set_precision": p.precision, "set_model_variant": p.model_variant}
    if command.action in needs and needs[command.action] is None:
        return f"{command.action} needs its parameter in params"
    if capacity_frac_after is not None and capacity_frac_after < bounds.min_capacity_frac - 1e-9:
        return (f"leaves the instance at {capacity_frac_after:.0%} of its nominal capacity at SLO, below the "
                f"minimum {bounds.min_capacity_frac:.0%}")
    if command.layer == "host" and command.action not in HOST_ACTIONS:
        return f"{command.action} is a serving-layer action but layer='host'"
    return None


def check_times(command: ReconfigCommand, bounds: SafetyBounds, *, now: datetime) -> str | None:
    """Why ``command``'s times are unacceptable on the receiver's clock ``now``, or ``None``.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> future = t.replace(year=2036)
        >>> cmd = ReconfigCommand(command_id="cmd-00000001", issued_at=future, expires_at=future + timedelta(minutes=2),
        ...                       server_id="s1", action="revert", reason="test")
        >>> check_times(cmd, SafetyBounds(max_clock_skew_s=30), now=t)[:40]
        'issued_at 2036-01-01T00:00:00+00:00 is 3'
    """
    ahead_s = (command.issued_at - now).total_seconds()
    if ahead_s > bounds.max_clock_skew_s:
        return (f"issued_at {command.issued_at.isoformat()} is {ahead_s:.0f} s ahead of this clock "
                f"(max skew {bounds.max_clock_skew_s:g} s)")
    left_s = (command.expires_at - now).total_seconds()
    if left_s > bounds.max_ttl_s + bounds.max_clock_skew_s + 1e-6:
        return (f"expires_at {command.expires_at.isoformat()} is {left_s:.0f} s from now, more than the maximum "
                f"{bounds.max_ttl_s:g} s (+{bounds.max_clock_skew_s:g} s skew)")
    return None


def rate_key(command: ReconfigCommand) -> str:
    """What a rate limit counts against: the instance, or the server for host commands."""
    return f"instance:{command.instance_id}" if command.instance_id else f"server:{command.server_id}"


def make_command_id(*, target: str, action: str, params: ReconfigParams, epoch: int) -> str:
    """A deterministic id: the same decision in the same planning epoch gets the same id.

    A controller that restarts and re-issues a decision therefore publishes an id the
    agent has already applied, and the agent ignores it.

    Examples:
        >>> a = make_command_id(target="s1", action="set_frequency_cap",
        ...                     params=ReconfigParams(frequency_cap_mhz=1200), epoch=7)
        >>> a == make_command_id(target="s1", action="set_frequency_cap",
        ...                      params=ReconfigParams(frequency_cap_mhz=1200), epoch=7)
        True
        >>> a.startswith("cmd-") and len(a) == 24
        True
    """
    blob = json.dumps([target, action, params.model_dump(mode="json"), epoch], sort_keys=True)
    return "cmd-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class CommandLedger:
    """Command ids already handled with their content digest, kept until their expiry (bounded)."""

    max_entries: int = 100_000
    _expiry: OrderedDict[str, tuple[datetime, str]] = field(default_factory=OrderedDict)

    def seen(self, command_id: str) -> bool:
        return command_id in self._expiry

    def digest(self, command_id: str) -> str | None:
        """The content digest remembered for ``command_id`` (None when unseen)."""
        entry = self._expiry.get(command_id)
        return entry[1] if entry is not None else None

    def remember(self, command_id: str, expires_at: datetime, digest: str = "") -> None:
        self._expiry[command_id] = (expires_at, digest)
        self._expiry.move_to_end(command_id)
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)

    def forget_expired(self, now: datetime, grace_s: float = 60.0) -> None:
        """Drop ids expired more than ``grace_s`` ago (a replay after that is refused as expired anyway)."""
        cutoff = now - timedelta(seconds=grace_s)
        for cid in [c for c, (exp, _d) in self._expiry.items() if exp < cutoff]:
            del self._expiry[cid]

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass
class RateLimiter:
    """A sliding-window counter per target."""

    max_per_window: int
    window_s: float = RATE_WINDOW_S
    _history: dict[str, deque[datetime]] = field(default_factory=dict)

    def allows(self, key: str, now: datetime) -> bool:
        hist = self._history.get(key)
        if hist is None:
            return True
        cutoff = now - timedelta(seconds=self.window_s)
        while hist and hist[0] <= cutoff:
            hist.popleft()
        if not hist:
            del self._history[key]
            return True
        return len(hist) < self.max_per_window

    def record(self, key: str, now: datetime) -> None:
        self._history.setdefault(key, deque()).append(now)


@dataclass(frozen=True)
class Verdict:
    """What the gate decided about one command."""

    status: Literal["ok", "refused", "duplicate", "expired"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SafetyGate:
    """Bounds, times, rate limits and idempotence for a stream of commands.

    Both the controller (before publishing) and the agent (on receipt) own one. The
    gate remembers admitted ids with their content digest, so a duplicate is answered
    ``duplicate`` and never applied twice, and the same id with other content is
    refused; a refused id is remembered too, so a replay is refused again without
    counting against the rate limit.

    Args:
        bounds: the configured limits.
        rate_keys: what a command counts against (default: :func:`rate_key`); the
            agent passes one key per GPU of its server.
    """

    def __init__(self, bounds: SafetyBounds, *,
                 rate_keys: Callable[[ReconfigCommand], list[str]] | None = None) -> None:
        self.bounds = bounds
        self.ledger = CommandLedger()
        self.rates = RateLimiter(bounds.max_commands_per_window, bounds.rate_window_s)
        self._refused: dict[str, str] = {}
        self._rate_keys = rate_keys or (lambda c: [rate_key(c)])

    def admit(self, command: ReconfigCommand, *, now: datetime, capacity_frac_after: float | None = None,
              tightens: bool | None = None, count: bool = True) -> Verdict:
        """Decide on ``command`` at ``now``; an ``ok`` verdict records it as applied.

        Args:
            command: the command.
            now: the receiver's clock.
            capacity_frac_after: see :func:`check_bounds`.
            tightens: whether the command only lowers caps below the current state
                (the agent knows; ``None`` = the caller cannot tell, and an emergency
                command other than ``revert`` is then exempt from the rate limit as
                before: the controller's own emergency plans only lower power).
            count: ``False`` checks without recording anything (advisory commands: they
                use no rate budget and no ledger entry).
        """
        cid = command.command_id
        digest = content_digest(command)
        if self.ledger.seen(cid):
            if self.ledger.digest(cid) not in (digest, ""):
                return Verdict("refused", f"command id {cid} was already used for other content (altered replay)")
            if cid in self._refused:
                return Verdict("refused", self._refused[cid])
            return Verdict("duplicate", f"command {cid} already handled")
        if command.expires_at <= now:
            return Verdict("expired", f"expired at {command.expires_at.isoformat()}")
        reason = check_bounds(command, self.bounds, capacity_frac_after=capacity_frac_after)
        if reason is None:
            reason = check_times(command, self.bounds, now=now)
        keys = self._rate_keys(command)
        if reason is None and not self._rate_exempt(command, tightens):
            full = [k for k in keys if not self.rates.allows(k, now)]
            if full:
                reason = (f"rate limit: {full[0]} already had {self.bounds.max_commands_per_window} commands in "
                          f"{self.bounds.rate_window_s:.0f} s")
        if not count:
            return Verdict("refused", reason) if reason is not None else Verdict("ok")
        self.ledger.remember(cid, command.expires_at, digest)
        if reason is not None:
            self._refused[cid] = reason
            return Verdict("refused", reason)
        if not self._rate_exempt(command, tightens):
            for k in keys:
                self.rates.record(k, now)
        return Verdict("ok")

    def restore(self, command: ReconfigCommand) -> None:
        """Record a command admitted in an earlier life of this process (id, content and rate history)."""
        self.ledger.remember(command.command_id, command.expires_at, content_digest(command))
        if not self._rate_exempt(command, None):
            for k in self._rate_keys(command):
                self.rates.record(k, command.issued_at)

    def check(self, command: ReconfigCommand, *, now: datetime, capacity_frac_after: float | None = None) -> None:
        """Like :meth:`admit` but raises :class:`SafetyViolation` unless the command is admitted."""
        verdict = self.admit(command, now=now, capacity_frac_after=capacity_frac_after)
        if not verdict.ok:
            raise SafetyViolation(f"command {command.command_id} ({command.action} on {command.server_id}): "
                                  f"{verdict.status}: {verdict.reason}")

    def forget_expired(self, now: datetime) -> None:
        """Bound the memory: drop ids whose commands expired a while ago."""
        self.ledger.forget_expired(now)
        for cid in [c for c in self._refused if not self.ledger.seen(c)]:
            del self._refused[cid]

    @staticmethod
    def _rate_exempt(command: ReconfigCommand, tightens: bool | None) -> bool:
        if command.trigger != "emergency" or command.action == "revert":
            return False
        return tightens is None or tightens


def refusal_event(command: ReconfigCommand, reason: str, *, now: datetime, refused_by: str) -> ControlEvent:
    """The ``safety_refused`` event that reports a refused command."""
    return ControlEvent(
        event_id=f"refused-{command.command_id}"[:64],
        event_kind="safety_refused",
        severity="warning",
        occurred_at=now,
        domain_kind="server",
        domain_id=command.server_id,
        detail=(f"{refused_by} refused {command.command_id} ({command.action} on {command.server_id}"
                f"{'/' + command.instance_id if command.instance_id else ''}): {reason}")[:4000],
    )

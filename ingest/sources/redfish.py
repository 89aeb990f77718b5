"""Inlet (intake) temperature and chassis power from a server's BMC over Redfish.

Two generations of the schema are in the field, so both are read:

* newer: ``Chassis/{id}/Sensors/*`` (the intake sensor is the one whose
  ``PhysicalContext`` is ``Intake`` and whose ``ReadingUnits`` are ``Cel``) and
  ``Chassis/{id}/EnvironmentMetrics`` (``PowerWatts.Reading``);
* legacy: ``Chassis/{id}/Thermal`` (``Temperatures[]`` with ``PhysicalContext``
  ``Intake``, ``ReadingCelsius``) and ``Chassis/{id}/Power``
  (``PowerControl[0].PowerConsumedWatts``).

The intake sensor is found by ``PhysicalContext``, never by name (vendors call it
"Inlet Temp", "Front Panel Intake", "Ambient"...). Discovery walks the chassis once
and remembers the URIs, so each poll costs two GETs. The parsing functions take the
JSON documents and are pure; the HTTP client is injected (:class:`RedfishGetter`).

A BMC answering something other than a JSON object (a list, a string, a number) is
refused during discovery with a :class:`SourceError` naming the URI; once the
chassis is known, such an answer for the intake sensor or power resource flags that
reading (``null`` plus its name in ``invalid_fields``). Malformed members inside a
document (``Members``, ``Temperatures`` or ``PowerControl`` that are not lists,
links that are not strings) are skipped like absent ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from contracts.errors import SourceError
from contracts.messages import InletSample
from ingest.validate import Checked, FieldChecker, check

log = logging.getLogger(__name__)

Document = Mapping[str, Any]
_DISABLED_STATES = {"Absent", "Disabled", "UnavailableOffline"}


class RedfishGetter(Protocol):
    """Fetch one Redfish resource as JSON; None when the BMC answers 404."""

    def get(self, path: str) -> Document | None: ...


def _document(client: RedfishGetter, path: str) -> Document | None:
    """GET ``path``: the JSON object, or None when the BMC has no such resource (404).

    Raises:
        SourceError: naming the URI when the answer is JSON but not an object.
    """
    doc: Any = client.get(path)
    if doc is None or isinstance(doc, Mapping):
        return doc
    kind = {list: "array", str: "string", bool: "boolean"}.get(type(doc), "number" if isinstance(doc, int | float)
                                                              else type(doc).__name__)
    raise SourceError(f"redfish: {path} answered a JSON {kind} instead of an object "
                      "(is this a Redfish service? check the BMC firmware)")


def _poll(client: RedfishGetter, path: str) -> tuple[Document | None, bool]:
    """GET ``path`` for a reading: ``(document or None, True)``, or ``(None, False)`` for a non-object answer."""
    try:
        return _document(client, path), True
    except SourceError as exc:
        log.warning("event=redfish_bad_document error=%s", exc)
        return None, False


BROKEN = Checked(None, True)


def _list(doc: Document, name: str) -> list[Any]:
    value = doc.get(name)
    return value if isinstance(value, list) else []


def _uri(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _link(doc: Document, name: str) -> str | None:
    ref = doc.get(name)
    return _uri(ref.get("@odata.id")) if isinstance(ref, Mapping) else None


def _members(doc: Document | None) -> list[str]:
    if not doc:
        return []
    return [uri for m in _list(doc, "Members") if isinstance(m, Mapping) and (uri := _uri(m.get("@odata.id")))]


def _enabled(doc: Document) -> bool:
    status = doc.get("Status")
    return not (isinstance(status, Mapping) and status.get("State") in _DISABLED_STATES)


def is_intake_sensor(doc: Document) -> bool:
    """True for a newer-schema ``Sensor`` measuring intake air temperature in °C.

    Examples:
        >>> is_intake_sensor({"PhysicalContext": "Intake", "ReadingUnits": "Cel", "Reading": 24.8})
        True
        >>> is_intake_sensor({"PhysicalContext": "Exhaust", "ReadingUnits": "Cel", "Reading": 40})
        False
    """
    units = doc.get("ReadingUnits")
    is_temp = units == "Cel" or doc.get("ReadingType") == "Temperature"
    return doc.get("PhysicalContext") == "Intake" and is_temp and _enabled(doc)


def intake_from_sensor(doc: Document) -> Checked:
    """The intake temperature of a newer-schema ``Sensor`` document (°C); an enabled sensor without one is broken."""
    reading = doc.get("Reading")
    return Checked(None, True) if reading is None else check(reading, "inlet_temp_c")


def intake_from_thermal(doc: Document) -> tuple[Checked, str | None]:
    """The first enabled ``Intake`` entry of a legacy ``Thermal`` document, with its member URI."""
    for entry in _list(doc, "Temperatures"):
        if isinstance(entry, Mapping) and entry.get("PhysicalContext") == "Intake" and _enabled(entry):
            reading = entry.get("ReadingCelsius")
            checked = Checked(None, True) if reading is None else check(reading, "inlet_temp_c")
            return checked, _uri(entry.get("@odata.id"))
    return Checked(None, False), None


def power_from_environment(doc: Document) -> Checked:
    """Chassis power from ``EnvironmentMetrics.PowerWatts.Reading`` (W)."""
    power = doc.get("PowerWatts")
    if not isinstance(power, Mapping) or "Reading" not in power:
        return Checked(None, False)
    return check(power.get("Reading"), "chassis_power_w")


def power_from_power(doc: Document) -> Checked:
    """Chassis input power from a legacy ``Power`` document (first ``PowerControl`` entry, W)."""
    for ctl in _list(doc, "PowerControl"):
        if isinstance(ctl, Mapping) and "PowerConsumedWatts" in ctl:
            return check(ctl.get("PowerConsumedWatts"), "chassis_power_w")
    return Checked(None, False)


@dataclass(frozen=True)
class ChassisPlan:
    """Where one chassis' readings live, found once by :func:`discover`."""

    chassis_uri: str
    intake_sensor_uri: str | None
    environment_uri: str | None
    thermal_uri: str | None
    power_uri: str | None


def discover(client: RedfishGetter, *, chassis_id: str | None = None) -> ChassisPlan:
    """Walk ``/redfish/v1/Chassis`` and find the intake sensor and power resources.

    The first chassis offering an intake reading wins unless ``chassis_id`` names one.

    Raises:
        SourceError: when no chassis exposes an intake temperature in either schema.
    """
    root = _document(client, "/redfish/v1/")
    if root is None:
        raise SourceError("redfish: /redfish/v1/ not found (is this a Redfish service?)")
    chassis = _members(_document(client, _link(root, "Chassis") or "/redfish/v1/Chassis"))
    if chassis_id is not None:
        chassis = [c for c in chassis if c.rstrip("/").rsplit("/", 1)[-1] == chassis_id]
        if not chassis:
            raise SourceError(f"redfish: chassis {chassis_id!r} not found; omit --chassis to pick the first")
    for uri in chassis:
        doc = _document(client, uri)
        if doc is None:
            continue
        sensor_uri = None
        sensors_uri = _link(doc, "Sensors")
        sensors = _document(client, sensors_uri) if sensors_uri else None
        for member in _members(sensors):
            sdoc, _ = _poll(client, member)  # one odd sensor among many is skipped, not fatal
            if sdoc is not None and is_intake_sensor(sdoc):
                sensor_uri = member
                break
        env_uri = _link(doc, "EnvironmentMetrics")
        if env_uri is not None and _document(client, env_uri) is None:
            env_uri = None
        thermal_uri = _link(doc, "Thermal")
        power_uri = _link(doc, "Power")
        legacy_intake = False
        if thermal_uri:
            tdoc = _document(client, thermal_uri)
            legacy_intake = tdoc is not None and intake_from_thermal(tdoc)[1] is not None
            thermal_uri = thermal_uri if tdoc is not None else None
        if sensor_uri or legacy_intake:
            return ChassisPlan(uri, sensor_uri, env_uri, thermal_uri, power_uri)
    raise SourceError("redfish: no chassis exposes a sensor with PhysicalContext 'Intake' "
                      "(neither Sensors nor legacy Thermal); check the BMC firmware or --chassis")


def read_inlet(client: RedfishGetter, plan: ChassisPlan, *, server_id: str,
               now: Callable[[], datetime]) -> InletSample:
    """One inlet sample following ``plan``: newer resources first, legacy ones as fallback."""
    fc = FieldChecker()
    inlet: Checked = Checked(None, False)
    sensor_id = None
    if plan.intake_sensor_uri:
        sdoc, ok = _poll(client, plan.intake_sensor_uri)
        if sdoc is not None or not ok:
            inlet = intake_from_sensor(sdoc) if sdoc is not None else BROKEN
            sensor_id = plan.intake_sensor_uri
    if sensor_id is None and plan.thermal_uri:
        tdoc, ok = _poll(client, plan.thermal_uri)
        if tdoc is not None:
            inlet, sensor_id = intake_from_thermal(tdoc)
        elif not ok:
            inlet, sensor_id = BROKEN, plan.thermal_uri
    power: Checked = Checked(None, False)
    if plan.environment_uri:
        edoc, ok = _poll(client, plan.environment_uri)
        power = power_from_environment(edoc) if edoc is not None else power if ok else BROKEN
    if power.value is None and not power.invalid and plan.power_uri:
        pdoc, ok = _poll(client, plan.power_uri)
        power = power_from_power(pdoc) if pdoc is not None else power if ok else BROKEN
    return InletSample(
        server_id=server_id, sampled_at=now(), source="redfish",
        inlet_temp_c=fc.take("inlet_temp_c", inlet), chassis_power_w=fc.take("chassis_power_w", power),
        sensor_id=sensor_id, invalid_fields=fc.invalid_fields,
    )


class RedfishLibraryClient:
    """:class:`RedfishGetter` over the DMTF ``redfish`` library (session or basic auth)."""

    def __init__(self, base_url: str, *, username: str | None = None, password: str | None = None,
                 timeout_s: float = 5.0, auth: str = "session") -> None:
        import redfish

        logging.getLogger("redfish").setLevel(logging.WARNING)  # its INFO lines narrate every retry
        try:
            self._client = redfish.redfish_client(base_url=base_url, username=username, password=password,
                                                  timeout=timeout_s, max_retry=1)
            if username:
                self._client.login(auth=auth)
        except Exception as exc:  # noqa: BLE001 - the library raises many unrelated types
            detail = str(exc).strip() or "no answer"
            raise SourceError(f"redfish {base_url}: cannot connect ({exc.__class__.__name__}: {detail}); "
                              "check --url, that the BMC is reachable, and the credentials") from None
        self.base_url = base_url
        self._logged_in = bool(username)

    def get(self, path: str) -> Document | None:
        try:
            resp = self._client.get(path)
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"redfish {self.base_url}{path}: {exc.__class__.__name__}: {exc}") from None
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise SourceError(f"redfish {self.base_url}{path}: HTTP {resp.status}")
        body = resp.dict
        return body if isinstance(body, Mapping) else None

    def close(self) -> None:
        if self._logged_in:
            try:
                self._client.logout()
            except Exception as exc:  # noqa: BLE001 - a failed logout must not hide the reading
                log.warning("event=redfish_logout_failed url=%s error=%r", self.base_url, exc)


class RedfishSource:
    """Reads one server's BMC: ``read()`` returns ``[InletSample]`` each round.

    Args:
        client: the HTTP seam (:class:`RedfishLibraryClient` in production).
        server_id: the TAPAS server id the sample is keyed by.
        chassis_id: pick a chassis by id instead of the first with an intake sensor.
        now: clock returning an aware UTC datetime.
    """

    def __init__(self, client: RedfishGetter, *, server_id: str, chassis_id: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.server_id = server_id
        self.chassis_id = chassis_id
        self.now = now
        self._plan: ChassisPlan | None = None

    @property
    def plan(self) -> ChassisPlan:
        if self._plan is None:
            self._plan = discover(self.client, chassis_id=self.chassis_id)
            log.info("event=redfish_discovered server=%s chassis=%s intake=%s legacy_thermal=%s",
                     self.server_id, self._plan.chassis_uri, self._plan.intake_sensor_uri, self._plan.thermal_uri)
        return self._plan

    def read(self) -> list[InletSample]:
        return [read_inlet(self.client, self.plan, server_id=self.server_id, now=self.now)]

    def close(self) -> None:
        closer = getattr(self.client, "close", None)
        if callable(closer):
            closer()

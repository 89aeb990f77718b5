"""The controller's synchronous placement API: ``/v1/placement``, ``/v1/headroom`` and the scheduler extender.

Allocators that call a scheduler synchronously (the Kubernetes scheduler extender, an
OpenStack weigher) cannot wait on a Kafka round trip; this serves the same decisions
over HTTP from the live :class:`~controller.service.Controller` (``tapas controller``
starts it when ``TAPAS_API__PORT`` is set). Routes (OpenAPI: ``GET /openapi.json``,
committed as ``docs/placement-api.json``):

* ``POST /v1/placement`` — a :class:`PlacementQuery` in, the ranked
  :class:`~contracts.PlacementHint` out (``Controller.place``: the Kafka path's answer,
  infeasible while forecasts are stale).
* ``GET /v1/headroom[?level=server|row|zone]`` — per server, row and zone headroom.
* ``POST /v1/extender/filter`` and ``/v1/extender/prioritize`` — the scheduler
  extender verbs (``ExtenderArgs`` → ``ExtenderFilterResult`` / ``HostPriorityList``,
  k8s.io/kube-scheduler/extender/v1). Nodes are matched by the inventory's
  ``node_name``; a node the inventory does not list passes the filter with score 0 (not
  ours to judge). While forecasts are stale the verbs answer with ``Error`` set:
  configure the extender ``ignorable: true`` so scheduling fails open.

Transport: the standard library's threading HTTP server (HTTP/1.1 keep-alive, one
thread per connection, at most ``max_connections``; more get 503). Decisions are
CPU-bound numpy work under the GIL, so an asyncio server would not answer sooner;
``tapas bench placement_api`` measures the latency it gives. Bodies are bounded
(``TAPAS_API__MAX_BODY_BYTES``, 413 beyond) and every client error is a JSON 4xx
naming the field.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from contracts import PlacementHint, PlacementRequest
from controller.core.snapshot import PlacementRequest as CorePlacementRequest

if TYPE_CHECKING:
    from foundation.settings import ApiSettings

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
MAX_EXTENDER_PRIORITY = 10
"""``MaxExtenderPriority`` of k8s.io/kube-scheduler/extender/v1: scores run 0..10."""


# --------------------------------------------------------------------------- API models


def _whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


WholeNumber = Annotated[int, BeforeValidator(_whole)]
"""A JSON Schema integer: ``13.0`` is one (JSON Schema counts numbers, not spellings), ``13.5`` and ``"13"`` are not."""


class PlacementQuery(BaseModel):
    """A placement request over HTTP (the Kafka ``PlacementRequest`` without its timestamp).

    Strict: JSON types are not coerced (``false`` is not a power), so what the schema forbids is refused.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str | None = Field(default=None, min_length=1, max_length=128,
                                   description="Echoed in the hint; generated when absent.")
    vm_kind: Literal["iaas", "saas"]
    num_gpus: WholeNumber = Field(ge=1, le=64)
    vm_class: str | None = Field(default=None, max_length=64)
    expected_power_w_per_gpu: float | None = Field(default=None, ge=0, le=2000)
    expected_lifetime_s: float = Field(default=3600.0, gt=0, le=1e9)
    endpoint_id: str | None = Field(default=None, max_length=128)


class ServerHeadroom(BaseModel):
    """One server's headroom at the decision horizon."""

    server_id: str
    node_name: str
    row_id: str
    zone_id: str
    thermal_headroom_c: float = Field(description="Slowdown threshold minus the forecast-high GPU temperature.")
    power_hi_w: float
    free_gpus: int


class DomainHeadroom(BaseModel):
    """A row's power or a zone's cooling headroom."""

    domain_id: str
    limit_w: float = Field(description="Row power budget or zone cooling capacity, W.")
    forecast_hi_w: float
    headroom_w: float


class HeadroomReport(BaseModel):
    """``GET /v1/headroom``."""

    issued_at: datetime
    forecast_age_s: float | None = Field(description="Age of the newest forecast; null before the first.")
    stale: bool
    servers: list[ServerHeadroom] = Field(default_factory=list)
    rows: list[DomainHeadroom] = Field(default_factory=list)
    zones: list[DomainHeadroom] = Field(default_factory=list)


class ObjectMeta(BaseModel):
    """The part of a Kubernetes ObjectMeta the extender reads."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(default="", max_length=253)
    annotations: dict[str, str] | None = None


class ResourceRequirements(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    limits: dict[str, str | WholeNumber] | None = None
    requests: dict[str, str | WholeNumber] | None = None


class Container(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = ""
    resources: ResourceRequirements | None = None


class PodSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    containers: list[Container] = Field(default_factory=list, max_length=100)


class Pod(BaseModel):
    """The part of a Kubernetes Pod the extender reads: GPUs requested and the ``tapas-*`` annotations."""

    model_config = ConfigDict(extra="allow", strict=True)

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)


class Node(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


class NodeList(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    items: list[Node] = Field(default_factory=list, max_length=100_000)


class ExtenderArgs(BaseModel):
    """``ExtenderArgs``: the pod and the candidate nodes (full objects, or names when nodeCacheCapable)."""

    model_config = ConfigDict(extra="allow", strict=True)

    Pod: Pod
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = Field(default=None, max_length=100_000)


class ExtenderFilterResult(BaseModel):
    """``ExtenderFilterResult``."""

    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(BaseModel):
    """One entry of ``HostPriorityList``."""

    Host: str
    Score: int = Field(ge=0, le=MAX_EXTENDER_PRIORITY)


class ApiError(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    field: str = ""


# --------------------------------------------------------------------------- OpenAPI


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API (schemas from the pydantic models above)."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (PlacementQuery, "validation"), (PlacementHint, "serialization"), (HeadroomReport, "serialization"),
        (ExtenderArgs, "validation"), (ExtenderFilterResult, "serialization"), (HostPriority, "serialization"),
        (ApiError, "serialization")]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(name)}}}

    def ok(schema: dict[str, Any], what: str) -> dict[str, Any]:
        return {"description": what, "content": {"application/json": {"schema": schema}}}

    err = {"content": {"application/json": {"schema": ref("ApiError")}}}
    client_errors = {"400": {"description": "Malformed JSON or a field outside its contract.", **err},
                     "411": {"description": "Content-Length missing.", **err},
                     "413": {"description": "Body larger than TAPAS_API__MAX_BODY_BYTES.", **err}}
    extender = {"requestBody": body("ExtenderArgs"), "tags": ["scheduler-extender"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "TAPAS placement API", "version": "1",
                 "description": "Synchronous placement hints and headroom from the live TAPAS controller, and the "
                                "Kubernetes scheduler-extender verbs (docs/placement-api.md)."},
        "paths": {
            "/v1/placement": {"post": {
                "operationId": "place", "summary": "Rank servers for one VM or instance.",
                "requestBody": body("PlacementQuery"),
                "responses": {"200": ok(ref("PlacementHint"), "Ranked hints (feasible=false with a reason when "
                                                              "none fits or forecasts are stale)."),
                              **client_errors}}},
            "/v1/headroom": {"get": {
                "operationId": "headroom", "summary": "Per server, row and zone headroom.",
                "parameters": [{"name": "level", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["server", "row", "zone"]},
                                "description": "Only this level (default: all three)."}],
                "responses": {"200": ok(ref("HeadroomReport"), "Headroom at the decision horizon."),
                              "400": {"description": "Unknown query parameter or level.", **err}}}},
            "/v1/extender/filter": {"post": {
                "operationId": "extenderFilter", "summary": "Scheduler extender filter verb.", **extender,
                "responses": {"200": ok(ref("ExtenderFilterResult"), "Nodes that keep their limits."),
                              **client_errors}}},
            "/v1/extender/prioritize": {"post": {
                "operationId": "extenderPrioritize", "summary": "Scheduler extender prioritize verb.", **extender,
                "responses": {"200": ok({"type": "array", "items": ref("HostPriority")},
                                        "HostPriorityList: 0..10 per node."),
                              **client_errors}}},
        },
        "components": {"schemas": schemas},
    }


# --------------------------------------------------------------------------- request handling


class ClientError(Exception):
    """A request the API refuses with a 4xx status."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.field = field


Response = tuple[int, bytes]


class PlacementApi:
    """Routes and answers, no sockets: ``handle(method, target, body)`` → ``(status, JSON bytes)``.

    ``controller`` is the live Controller; ``lock`` serialises access with the service loop
    (the Controller is not thread-safe). ``now`` is the clock (tests pass their own).
    """

    def __init__(self, controller: Any, *, lock: threading.RLock | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.controller = controller
        self.lock = lock or threading.RLock()
        self.now = now or (lambda: datetime.now(UTC))
        self._openapi = json.dumps(openapi_document()).encode()
        topo = controller.topology
        self._node_index = {name: topo.server_ids.index(s.server_id) for name, s in topo.by_node_name.items()}
        self._node_names = tuple((s.node_name or s.server_id) for s in topo.servers)

    def handle(self, method: str, target: str, body: bytes) -> Response:
        """Answer one request; a ClientError becomes its 4xx, anything else a 500 (logged)."""
        try:
            return self._route(method, target, body)
        except ClientError as exc:
            return exc.status, _json(ApiError(error=str(exc), field=exc.field))
        except Exception:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            log.exception("event=api_failed method=%s target=%s", method, target[:200])
            return 500, _json(ApiError(error="internal error (logged by the controller)"))

    def _routes(self) -> dict[str, tuple[str, Callable[[str, bytes], Response]]]:
        return {"/v1/placement": ("POST", self._placement), "/v1/headroom": ("GET", self._headroom),
                "/v1/extender/filter": ("POST", self._filter), "/v1/extender/prioritize": ("POST", self._prioritize),
                "/openapi.json": ("GET", lambda _q, _b: (200, self._openapi))}

    def allowed(self, target: str) -> str:
        """The method a path answers (for a 405's Allow header)."""
        route = self._routes().get(urlsplit(target).path)
        return route[0] if route else ""

    def _route(self, method: str, target: str, body: bytes) -> Response:
        url = urlsplit(target)
        routes = self._routes()
        if url.path not in routes:
            raise ClientError(404, f"no route {url.path!r}; see /openapi.json")
        want, fn = routes[url.path]
        if method != want:
            raise ClientError(405, f"{url.path} answers {want}, not {method}")
        return fn(url.query, body)

    # ------------------------------------------------------------------ verbs
    def _placement(self, _query: str, body: bytes) -> Response:
        q = _parse(PlacementQuery, body)
        now = self.now()
        req = PlacementRequest(
            request_id=q.request_id or f"http-{uuid.uuid4().hex[:16]}", requested_at=now, vm_kind=q.vm_kind,
            num_gpus=q.num_gpus, vm_class=q.vm_class, expected_power_w_per_gpu=q.expected_power_w_per_gpu,
            expected_lifetime_s=q.expected_lifetime_s, endpoint_id=q.endpoint_id)
        with self.lock:
            out = self.controller.place(req, now=now)
        return 200, out.message.to_bytes()

    def _headroom(self, query: str, _body: bytes) -> Response:
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"level"}
        if unknown:
            raise ClientError(400, f"unknown query parameter(s) {sorted(unknown)}; allowed: level", sorted(unknown)[0])
        levels = params.get("level", [])
        if len(levels) > 1:
            raise ClientError(400, "give level at most once", "level")
        level = levels[0] if levels else ""
        if levels and level not in ("server", "row", "zone"):
            raise ClientError(400, f"level={level!r}: choose server, row or zone", "level")
        now = self.now()
        with self.lock:
            snap = self.controller.snapshot(now)
            age_s = float(self.controller.state.forecast_age_s(now))
            stale_after_s = float(self.controller.settings.stale_after_s)
        report = HeadroomReport(issued_at=now, forecast_age_s=age_s if age_s < 1e8 else None,
                                stale=age_s > stale_after_s)
        if level in ("", "server"):
            th = (snap.slowdown_temp_c - snap.gpu_temp_hi_c).tolist()
            pw = snap.server_power_hi_w.tolist()
            free = snap.free_gpus.tolist()
            rows, zones = snap.server_row.tolist(), snap.server_zone.tolist()
            report.servers = [ServerHeadroom(
                server_id=sid, node_name=self._node_names[i], row_id=snap.row_ids[rows[i]],
                zone_id=snap.zone_ids[zones[i]], thermal_headroom_c=_finite(th[i]), power_hi_w=_finite(pw[i]),
                free_gpus=int(free[i])) for i, sid in enumerate(snap.server_ids)]
        if level in ("", "row"):
            report.rows = _domains(snap.row_ids, snap.row_budget_w, snap.row_power_hi_w)
        if level in ("", "zone"):
            report.zones = _domains(snap.zone_ids, snap.zone_capacity_w, snap.zone_heat_hi_w)
        return 200, report.model_dump_json().encode()

    def _rank_nodes(self, args: ExtenderArgs) -> tuple[list[str], dict[str, float], str, int]:
        """Candidate node names, feasible node → score, the stale/infeasible reason, GPUs requested."""
        names = args.NodeNames if args.NodeNames is not None else [n.metadata.name for n in (
            args.Nodes.items if args.Nodes is not None else [])]
        gpus = _pod_gpus(args.Pod)
        if gpus == 0:
            return names, {}, "", 0
        ann = args.Pod.metadata.annotations or {}
        kind = ann.get("tapas-vm-kind", "saas")
        if kind not in ("iaas", "saas"):
            raise ClientError(400, f"annotation tapas-vm-kind={kind!r}: choose iaas or saas",
                              "Pod.metadata.annotations.tapas-vm-kind")
        power: float | None = None
        if "tapas-power-w-per-gpu" in ann:
            try:
                power = float(ann["tapas-power-w-per-gpu"])
            except ValueError:
                raise ClientError(400, "annotation tapas-power-w-per-gpu is not a number",
                                  "Pod.metadata.annotations.tapas-power-w-per-gpu") from None
            if not 0 <= power <= 2000:
                raise ClientError(400, "annotation tapas-power-w-per-gpu outside [0, 2000] W",
                                  "Pod.metadata.annotations.tapas-power-w-per-gpu")
        now = self.now()
        core_req = CorePlacementRequest(request_id=args.Pod.metadata.name or "pod", vm_kind=kind,  # type: ignore[arg-type]
                                        num_gpus=gpus, gpu_power_w=power, endpoint_id=ann.get("tapas-endpoint"))
        ctl = self.controller
        with self.lock:
            age_s = float(ctl.state.forecast_age_s(now))
            if age_s > ctl.settings.stale_after_s:
                return names, {}, (f"TAPAS forecasts stale ({age_s:.0f} s old): cannot vouch for headroom "
                                   f"(configure the extender ignorable to fail open)"), gpus
            snap = ctl.snapshot(now)
            # every feasible server, not the hint's top few: the filter must keep all that fit
            decision = ctl.policy.place(snap, replace(core_req, max_candidates=snap.num_servers))
        scores = {self._node_names[c.server_index]: c.score for c in decision.candidates}
        return names, scores, "", gpus

    def _filter(self, _query: str, body: bytes) -> Response:
        args = _parse(ExtenderArgs, body)
        names, scores, stale, gpus = self._rank_nodes(args)
        if stale:
            return 200, _json(ExtenderFilterResult(Error=stale))
        failed: dict[str, str] = {}
        keep: set[str] = set()
        for name in names:
            if gpus == 0 or name not in self._node_index or name in scores:
                keep.add(name)
            else:
                failed[name] = f"TAPAS: no room for {gpus} GPU(s) within thermal, row power and zone heat limits"
        result = ExtenderFilterResult(FailedNodes=failed)
        if args.NodeNames is not None:
            result.NodeNames = [n for n in names if n in keep]
        else:
            items = args.Nodes.items if args.Nodes is not None else []
            result.Nodes = NodeList(items=[n for n in items if n.metadata.name in keep])
        return 200, _json(result)

    def _prioritize(self, _query: str, body: bytes) -> Response:
        args = _parse(ExtenderArgs, body)
        names, scores, stale, _gpus = self._rank_nodes(args)
        if stale:
            raise ClientError(503, stale)
        mine = [scores[n] for n in names if n in scores]
        lo, hi = (min(mine), max(mine)) if mine else (0.0, 0.0)
        out = []
        for name in names:
            if name not in scores:
                out.append({"Host": name, "Score": 0})
                continue
            frac = (scores[name] - lo) / (hi - lo) if hi > lo else 1.0
            out.append({"Host": name, "Score": 1 + round(frac * (MAX_EXTENDER_PRIORITY - 1))})
        return 200, json.dumps(out).encode()


def _pod_gpus(pod: Pod) -> int:
    total = 0
    for i, c in enumerate(pod.spec.containers):
        res = c.resources
        if res is None:
            continue
        raw = (res.limits or {}).get(GPU_RESOURCE, (res.requests or {}).get(GPU_RESOURCE))
        if raw is None:
            continue
        try:
            n = int(raw)
        except ValueError:
            raise ClientError(400, f"{GPU_RESOURCE}={raw!r} is not a whole number of GPUs",
                              f"Pod.spec.containers[{i}].resources.limits") from None
        if not 0 <= n <= 64:
            raise ClientError(400, f"{GPU_RESOURCE}={n} outside 0..64", f"Pod.spec.containers[{i}].resources")
        total += n
    if total > 64:
        raise ClientError(400, f"pod requests {total} GPUs; at most 64 per server", "Pod.spec.containers")
    return total


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ClientError(400, f"{field or '<body>'}: {err['msg']}", field) from None


def _domains(ids: tuple[str, ...], limit: Any, hi: Any) -> list[DomainHeadroom]:
    lim, h = np.asarray(limit, dtype=float).tolist(), np.asarray(hi, dtype=float).tolist()
    return [DomainHeadroom(domain_id=d, limit_w=_finite(lim[i]), forecast_hi_w=_finite(h[i]),
                           headroom_w=_finite(lim[i] - h[i])) for i, d in enumerate(ids)]


def _finite(x: float) -> float:
    v = float(x)
    return v if np.isfinite(v) else (1e9 if v > 0 else -1e9)


def _json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


# --------------------------------------------------------------------------- transport


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes: without TCP_NODELAY, Nagle holds the body until the client's
    # delayed ACK (40 ms per keep-alive request, measured by bench/placement_api.py)
    disable_nagle_algorithm = True
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("event=api_request " + format, *args)

    def _answer(self, status: int, body: bytes, *, close: bool = False, allow: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 405 and allow:
            self.send_header("Allow", allow)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, method: str) -> None:
        body = b""
        if method != "GET" and ("Content-Length" in self.headers or method == "POST"):
            length = self.headers.get("Content-Length")
            if length is None:
                self._answer(411, _json(ApiError(error="Content-Length required (chunked bodies are not "
                                                       "accepted)")), close=True)
                return
            try:
                n = int(length)
            except ValueError:
                self._answer(400, _json(ApiError(error="Content-Length is not a number")), close=True)
                return
            if n < 0 or n > self.server.max_body_bytes:
                self._answer(413, _json(ApiError(error=f"body of {n} bytes; at most {self.server.max_body_bytes} "
                                                       f"(TAPAS_API__MAX_BODY_BYTES)")), close=True)
                return
            body = self.rfile.read(n)
        status, payload = self.server.api.handle(method, self.path, body)
        self._answer(status, payload, allow=self.server.api.allowed(self.path) if status == 405 else "")

    def __getattr__(self, name: str) -> Callable[[], None]:
        """``do_<METHOD>`` for every method (the stdlib answers unknown ones 501): the router says 405."""
        if name.startswith("do_"):
            return partial(self._serve, name[3:])
        raise AttributeError(name)


class ApiServer(ThreadingHTTPServer):
    """The HTTP server around a :class:`PlacementApi`; ``serve_in_thread`` starts it, ``close`` stops it."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, api: PlacementApi, host: str, port: int, *, max_body_bytes: int = 1_048_576,
                 max_connections: int = 256) -> None:
        self.api = api
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most ``max_connections``; beyond that a 503 and close."""
        if not self._slots.acquire(blocking=False):
            try:
                body = _json(ApiError(error="too many connections; retry"))
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                                + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def serve_in_thread(self) -> ApiServer:
        """Serve on a daemon thread named ``placement-api``; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="placement-api", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


def start_api(controller: Any, settings: ApiSettings, *, now: Callable[[], datetime] | None = None) -> ApiServer:
    """Serve the placement API for a live Controller (sharing its ``lock`` with the service loop)."""
    api = PlacementApi(controller, lock=controller.lock, now=now)
    server = ApiServer(api, settings.host, settings.port, max_body_bytes=settings.max_body_bytes,
                       max_connections=settings.max_connections)
    log.info("event=api_started host=%s port=%d", settings.host, server.port)
    return server.serve_in_thread()


if __name__ == "__main__":  # python -m controller.api > docs/placement-api.json
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))

"""The real pipeline as a child process for the browser tests: simulator → stream-worker core → controller.

Each tick the closed-loop simulation (``simulator.feed.TelemetryFeed``) produces the
telemetry collectors publish; the stream worker's processing core
(``streams.processor.StreamProcessor``, the logic inside the Faust agents, with the
registry's forecaster) turns it into server and domain forecasts; the live controller's
state machine (``controller.service.Controller``) answers with routing weights,
reconfiguration commands and events. GPU samples, forecasts, the simulator's events and
the controller's output go through the broker to the dashboard's topics. The Faust and
controller shells are left out only because a consumer-group join costs tens of seconds
on Tansu.

``--backfill-s`` ticks run at once (history for the charts), then one tick per second
until SIGTERM. Every simulator event is appended to ``--events`` (JSON lines) with the
wall-clock time it was published, so a test can time the page against it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contracts import ServerForecast, decode


class SimPipeline:
    """One tick at a time: simulator → stream-worker core → controller → the dashboard's topics."""

    def __init__(self, bootstrap: str, topics: Any, topology: Any, *, trace_path: Path, scenario: str,
                 hours: float, backfill_s: int, registry_dir: Path, events_path: Path, seed: int = 1,
                 with_controller: bool = True) -> None:
        from kafka import KafkaProducer

        from simulator.feed import TelemetryFeed
        from streams.app import load_forecaster
        from streams.processor import StreamProcessor, TopologyView

        self.topics = topics
        self.topology = topology
        self.backfill_s = backfill_s
        self.feed = TelemetryFeed(topology, seed=seed, scenario=scenario, hours=hours, trace_path=trace_path,
                                  start_at=datetime.now(UTC) - timedelta(seconds=backfill_s))
        self.processor = StreamProcessor(TopologyView.from_topology(topology, inlet_limit_c=27.0),
                                         load_forecaster(registry_dir), horizons_s=[10.0, 60.0, 300.0],
                                         store_enabled=False)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.events_path = events_path
        self.controller = self._controller() if with_controller else None

    def _controller(self) -> Any:
        """The live controller's state machine, publishing to the dashboard's topics."""
        from controller.service import Controller, ControllerTopics
        from foundation.settings import ControllerSettings
        from simulator.catalogue import build_catalogue

        t = self.topics
        catalogue = build_catalogue(self.topology.servers[0].sku)
        return Controller(self.topology, catalogue, ControllerSettings(), started_at=self.feed.start_at,
                          topics=ControllerTopics(server_forecasts=t.server_forecasts,
                                                  domain_forecasts=t.domain_forecasts, gpu_samples=t.gpu_samples,
                                                  placement_hints=t.placement_hints,
                                                  routing_weights=t.routing_weights, commands=t.commands,
                                                  events=t.events))

    def _control(self, at: datetime, inputs: list[tuple[str, Any]]) -> None:
        """Feed the tick's messages to the controller and publish its hints, weights, commands and events."""
        if self.controller is None:
            return
        outgoing = []
        for topic, message in inputs:
            outgoing += self.controller.handle(topic, message, now=at)
        outgoing += self.controller.tick(at)
        for o in outgoing:
            self.producer.send(o.topic, key=o.key.encode(), value=o.message.to_bytes())

    def tick(self, *, backfill: bool) -> None:
        from streams.processor import RawRecord

        if self.feed.finished:
            return
        t = self.feed.step()
        p = self.processor
        out = p.handle_gpu([RawRecord(s.server_id.encode(), s.to_bytes(), "gpu") for s in t.gpu])
        p.handle_inlet([RawRecord(s.server_id.encode(), s.to_bytes(), "inlet") for s in t.inlet])
        p.handle_pdu([RawRecord(s.pdu_id.encode(), s.to_bytes(), "pdu") for s in t.pdu])
        for partial in p.domain_partials():
            p.combiner.add(partial)
        send = self.producer.send
        for s in t.gpu:
            send(self.topics.gpu_samples, key=s.server_id.encode(), value=s.to_bytes())
        for key, value in out.forecasts:
            send(self.topics.server_forecasts, key=key, value=value)
        domains = []
        for d in p.domain_forecasts():
            if backfill:  # the combiner stamps wall time; keep the backfilled history spread over its ticks
                d = d.model_copy(update={"issued_at": t.at})
            domains.append(d)
            send(self.topics.domain_forecasts, key=d.domain_id.encode(), value=d.to_bytes())
        for e in t.events:
            send(self.topics.events, key=e.domain_id.encode(), value=e.to_bytes())
        tp = self.topics
        self._control(t.at if backfill else datetime.now(UTC), [(tp.gpu_samples, s) for s in t.gpu]
                      + [(tp.server_forecasts, decode(ServerForecast, v)) for _, v in out.forecasts]
                      + [(tp.domain_forecasts, d) for d in domains] + [(tp.events, e) for e in t.events])
        self.producer.flush(10)
        if t.events:
            published_at_s = time.time()
            with open(self.events_path, "a") as fh:
                for e in t.events:
                    fh.write(json.dumps({"published_at_s": published_at_s, "event": e.model_dump(mode="json")}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="JSON of dashboard.view.DashboardTopics fields")
    parser.add_argument("--servers", type=int, required=True)
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--scenario", default="normal")
    parser.add_argument("--hours", type=float, default=0.04)
    parser.add_argument("--backfill-s", type=int, default=0)
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--layout", default="{}", help="JSON of foundation.topology layout overrides")
    args = parser.parse_args(argv)

    from dashboard.view import DashboardTopics
    from foundation.topology import load_topology

    topics = DashboardTopics(**json.loads(args.topics))
    pipeline = SimPipeline(args.bootstrap, topics, load_topology(None, num_servers=args.servers, **json.loads(args.layout)), trace_path=args.trace,
                           scenario=args.scenario, hours=args.hours, backfill_s=args.backfill_s,
                           registry_dir=args.registry, events_path=args.events)
    stop = {"now": False}

    def on_term(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    for _ in range(args.backfill_s):
        pipeline.tick(backfill=True)
    args.ready.write_text("ready")
    while not stop["now"] and not pipeline.feed.finished:
        started = time.monotonic()
        pipeline.tick(backfill=False)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    while not stop["now"]:  # the run is over: stay up quietly until stopped
        time.sleep(0.2)
    pipeline.producer.close(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

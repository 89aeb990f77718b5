"""The collector loop shared by every source: read a round, publish it (or print it), repeat.

Sources come in two shapes — polled devices (``read()`` once per interval) and
streams (replay, sim) that pace themselves — and both become an iterator of rounds
here. A failed device read in a long run is logged and retried next interval (a BMC
that times out once must not stop the collector); with ``--once`` it is an error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TextIO

from contracts.errors import SourceError
from contracts.messages import Contract
from ingest.producer import BufferedProducer, publish_all
from ingest.validate import count_invalid

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a round of messages goes."""

    def write(self, messages: Sequence[Contract]) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """JSON lines, one contract message per line (``--stdout``), for checking a device by hand."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.num_invalid = 0

    def write(self, messages: Sequence[Contract]) -> None:
        for msg in messages:
            self.num_invalid += count_invalid(msg)
            self.out.write(msg.model_dump_json() + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class KafkaSink:
    """Publish through a :class:`BufferedProducer`; flush what is buffered on close."""

    def __init__(self, producer: BufferedProducer, *, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s

    def write(self, messages: Sequence[Contract]) -> None:
        publish_all(self.producer, messages)
        self.producer.pump()

    def close(self) -> None:
        self.producer.close(self.flush_timeout_s)
        log.info("event=ingest_stopped source=%s sent=%d dropped=%d buffered_left=%d", self.producer.source,
                 self.producer.num_sent, self.producer.num_dropped, self.producer.num_buffered)


def poll_rounds(read: Callable[[], list[Any]], *, interval_s: float, once: bool = False,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[list[Contract]]:
    """Call ``read`` every ``interval_s`` (drift-free); a failed read is logged and skipped unless ``once``."""
    next_at = clock()
    while True:
        try:
            yield read()
        except SourceError as exc:
            if once:
                raise
            log.warning("event=ingest_read_failed error=%s", exc)
        if once:
            return
        next_at += interval_s
        delay = next_at - clock()
        if delay > 0:
            sleep(delay)
        else:
            next_at = clock()


def run_collector(rounds: Iterable[list[Contract]], sink: Sink, *, once: bool = False,
                  max_rounds: int | None = None) -> int:
    """Drive ``rounds`` into ``sink`` until exhausted, interrupted, or ``once``/``max_rounds``; returns rounds."""
    done = 0
    try:
        for messages in rounds:
            sink.write(messages)
            done += 1
            if once or (max_rounds is not None and done >= max_rounds):
                break
    except KeyboardInterrupt:
        log.info("event=ingest_interrupted rounds=%d", done)
    finally:
        sink.close()
    return done

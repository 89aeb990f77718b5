"""The InfluxQL v1 history store: line protocol to ``/write``, InfluxQL over ``/query``.

Every InfluxDB generation serves this pair: 1.x natively, 2.x through its v1
compatibility API (a DBRP mapping names the database, a token authenticates) and
3.x (which cannot serve Flux). The HTTP session is injected (a seam for tests);
:meth:`InfluxQLStore.from_settings` builds it from settings.

Behaviour shared with the other stores (``tests/integration/test_store_contract.py``):
``write`` sends batches of ``batch_size`` points; ``add``/``flush`` buffer points
for callers that produce them one by one, and ``add`` reports backpressure
(``False`` once ``max_pending`` points wait). A request that fails for a transient
reason (connection refused or reset, timeout, 429, 5xx) is retried with an
exponential back-off up to ``max_retries`` times; then, and for every refusal
(400 field-type conflict, 401, 403, 404), :class:`contracts.StoreError` names the
server and the server's own message. A query returning more than ``max_rows``
rows fails instead of exhausting memory.

Encoding: timestamps go out in microseconds (``precision=u``) and come back as
epoch microseconds (``epoch=u``). Commas, spaces and ``=`` in names and tag values
are escaped as line protocol requires; a newline, or a backslash before such a
character or at the end, cannot round-trip through InfluxDB 1.x/2.x line protocol
and is refused with a :class:`StoreError` naming the point. Unlike the embedded
store, InfluxDB keeps one point per series and timestamp (a second write replaces it).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contracts.errors import ConfigError, StoreError
from streams.store.base import Point

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import requests

    from foundation.settings import StoreSettings

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: the server is overloaded or restarting, the request was sound.
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_BAD_BACKSLASH = re.compile(r"\\([ ,=]|$)")


class _Unreachable(StoreError):
    """The request failed for a transient reason after every retry (points worth keeping)."""


def _to_us(at: datetime) -> int:
    if at.tzinfo is None:
        raise StoreError(f"naive datetime {at.isoformat()} in a store query; pass a timezone-aware instant")
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _escape(text: str, specials: str, what: str, p: Point) -> str:
    """``text`` with line-protocol ``specials`` escaped; refuses what line protocol cannot carry."""
    if "\n" in text or "\r" in text or _BAD_BACKSLASH.search(text):
        raise StoreError(f"point {p.measurement!r} at {p.at.isoformat()}: {what} {text!r} holds a newline or a "
                         "backslash before a space, comma, '=' or the end, which line protocol cannot carry; "
                         "rename it")
    for ch in specials:
        text = text.replace(ch, "\\" + ch)
    return text


def encode_point(p: Point) -> str:
    """One point as InfluxDB line protocol, time in microseconds (skips non-finite fields).

    Examples:
        >>> from datetime import UTC, datetime
        >>> encode_point(Point("inlet", {"server_id": "row 1,a=b"}, {"inlet_temp_c": 22.5},
        ...                    datetime(2026, 1, 1, tzinfo=UTC)))
        'inlet,server_id=row\\\\ 1\\\\,a\\\\=b inlet_temp_c=22.5 1767225600000000'
    """
    head = _escape(p.measurement, ", ", "measurement", p)
    for k in sorted(p.tags):
        v = p.tags[k]
        if v != "":  # line protocol has no empty tag value: an empty tag is an absent tag
            head += f",{_escape(k, ',= ', 'tag key', p)}={_escape(v, ',= ', 'tag value', p)}"
    fields = ",".join(f"{_escape(k, ',= ', 'field key', p)}={float(v)!r}"
                      for k, v in p.fields.items() if math.isfinite(v))
    if not fields:
        raise StoreError(f"point {p.measurement!r} at {p.at.isoformat()} has no finite field to write")
    return f"{head} {fields} {_to_us(p.at)}"


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier.

    Examples:
        >>> quote_ident('gpu "a"')
        '"gpu \\\\"a\\\\""'
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_str(value: str) -> str:
    """An InfluxQL single-quoted string literal.

    Examples:
        >>> quote_str("it's")
        "'it\\\\'s'"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def select_statement(measurement: str, start: datetime, end: datetime, tags: Mapping[str, str] | None,
                     limit: int, retention_policy: str | None = None) -> str:
    """The bounded InfluxQL ``SELECT`` behind :meth:`InfluxQLStore.query` (times as epoch nanoseconds).

    Examples:
        >>> from datetime import UTC, datetime
        >>> select_statement("gpu", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        ...                  {"server_id": "s1"}, 10)
        'SELECT * FROM "gpu" WHERE time >= 1767225600000000000 AND time < 1767225660000000000 AND "server_id" = \\'s1\\' ORDER BY time ASC LIMIT 10'
    """
    source = quote_ident(measurement)
    if retention_policy:
        source = f"{quote_ident(retention_policy)}.{source}"
    where = f"time >= {_to_us(start) * 1000} AND time < {_to_us(end) * 1000}"
    for k, v in (tags or {}).items():
        where += f" AND {quote_ident(k)} = {quote_str(v)}"
    return f"SELECT * FROM {source} WHERE {where} ORDER BY time ASC LIMIT {limit}"  # noqa: S608 - quoted above


class InfluxQLStore:
    """History store speaking the InfluxDB v1 HTTP API (``/write``, ``/query``).

    Args:
        session: a ``requests.Session`` (injected; it carries auth headers if any).
        url: server base URL, e.g. ``http://influxdb:8086``.
        database: InfluxQL database (2.x: the DBRP-mapped name; 3.x: the database).
        retention_policy: retention policy to write to and read from; ``None`` uses the default.
        batch_size: points per ``/write`` request.
        max_pending: points ``add`` buffers before it reports backpressure.
        max_rows: most rows one query may return.
        max_retries: retries of a transiently failing request.
        timeout_s: timeout of one HTTP request.
        create_database: on a write answered "database not found", create it and retry once.
        sleep: how to wait between retries (a seam for tests).
    """

    def __init__(self, session: requests.Session, *, url: str, database: str,
                 retention_policy: str | None = None, batch_size: int = 5000, max_pending: int = 500_000,
                 max_rows: int = 1_000_000, max_retries: int = 3, timeout_s: float = 30.0,
                 create_database: bool = True, min_backoff_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._session = session
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_rows = max_rows
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.create_database = create_database
        self.min_backoff_s = min_backoff_s
        self._sleep = sleep
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self.num_written = 0
        self.num_retries = 0

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> InfluxQLStore:
        """Build the session (token or basic auth) and the store from ``settings.influx_*``."""
        import requests

        if not settings.influx_url:
            raise ConfigError("TAPAS_STORE__INFLUX_URL: required when TAPAS_STORE__KIND=influxql")
        session = requests.Session()
        if settings.influx_token is not None and settings.influx_token.get_secret_value():
            session.headers["Authorization"] = f"Token {settings.influx_token.get_secret_value()}"
        elif settings.influx_username:
            password = settings.influx_password.get_secret_value() if settings.influx_password else ""
            session.auth = (settings.influx_username, password)
        return cls(session, url=settings.influx_url, database=settings.influx_database,
                   retention_policy=settings.influx_retention_policy, batch_size=settings.batch_size,
                   max_pending=settings.max_buffered_points, max_rows=settings.query_max_rows,
                   max_retries=settings.influx_max_retries, timeout_s=settings.influx_timeout_s,
                   create_database=settings.influx_create_database)

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, *, params: dict[str, str], data: bytes | None = None,
                 what: str) -> requests.Response:
        """One request with retries on transient failures; StoreError on refusal or when retries run out."""
        import requests

        backoff = self.min_backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._session.request(method, f"{self.url}{path}", params=params, data=data,
                                             timeout=self.timeout_s)
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    return resp
                reason = f"HTTP {resp.status_code}: {_server_error(resp)}"
                if resp.status_code not in _TRANSIENT_STATUS:
                    raise StoreError(f"influxql store {self.url} db {self.database}: {what} refused: {reason}"
                                     + _hint(resp.status_code))
            if attempt < self.max_retries:
                self.num_retries += 1
                log.warning("event=influxql_retry what=%s attempt=%d wait_s=%.2f error=%s",
                            what, attempt + 1, backoff, reason)
                self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        raise _Unreachable(f"influxql store {self.url} db {self.database}: {what} failed after "
                         f"{self.max_retries + 1} attempts: {reason}")

    def _post_lines(self, lines: Sequence[str]) -> None:
        params = {"db": self.database, "precision": "u"}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        body = "\n".join(lines).encode()
        try:
            self._request("POST", "/write", params=params, data=body, what="write")
        except StoreError as exc:
            if not (self.create_database and "database not found" in str(exc)):
                raise
            log.info("event=influxql_create_database db=%s", self.database)
            self._request("POST", "/query", params={"q": f"CREATE DATABASE {quote_ident(self.database)}"},
                          what="create database")
            self._request("POST", "/write", params=params, data=body, what="write")
        self.num_written += len(lines)

    # ------------------------------------------------------------------ HistoryStore
    def write(self, points: Sequence[Point]) -> None:
        """Write ``points`` in requests of ``batch_size`` lines; StoreError when the server refuses or is away.

        Nothing is kept on failure: the caller (``BufferedStore``, the worker) owns the retry.
        """
        lines = [encode_point(p) for p in points]
        for i in range(0, len(lines), self.batch_size):
            self._post_lines(lines[i:i + self.batch_size])

    def add(self, point: Point) -> bool:
        """Buffer one point, writing a batch once ``batch_size`` wait; False means back off (``max_pending``).

        A bad point raises :class:`StoreError` at once (nothing is buffered); a failed
        batch write raises as :meth:`flush` does.
        """
        line = encode_point(point)
        with self._pending_lock:
            self._pending.append(line)
            full = len(self._pending) >= self.batch_size
        if full:
            self.flush()
        return len(self._pending) < self.max_pending

    def flush(self) -> None:
        """Write every buffered point now, oldest first.

        While the server is unreachable the points stay buffered (the error says how
        many); a batch the server refuses (field-type conflict, auth) is dropped, and
        the error says so, rather than blocking every later point.
        """
        with self._pending_lock:
            while self._pending:
                batch = self._pending[:self.batch_size]
                try:
                    self._post_lines(batch)
                except _Unreachable as exc:
                    raise StoreError(f"{exc}; {len(self._pending)} points stay buffered") from exc
                except StoreError as exc:
                    del self._pending[:len(batch)]
                    raise StoreError(f"{exc}; {len(batch)} refused points dropped") from exc
                del self._pending[:len(batch)]

    @property
    def pending(self) -> int:
        """Points buffered by ``add`` (kept while the server is unreachable) and not yet written."""
        return len(self._pending)

    def query(self, measurement: str, start: datetime, end: datetime,
              tags: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Points of ``measurement`` with ``start <= at < end`` matching ``tags``, in time order."""
        import pandas as pd

        select = select_statement(measurement, start, end, tags, self.max_rows + 1, self.retention_policy)
        result = self._statement(select, measurement)
        if result is None:
            return pd.DataFrame({"at": pd.to_datetime([], utc=True)})
        series = result.get("series", [])
        if not series:
            return pd.DataFrame({"at": pd.to_datetime([], utc=True)})
        # SELECT * does not say which columns are tags; ask only when there are rows to label
        source = quote_ident(measurement)
        if self.retention_policy:
            source = f"{quote_ident(self.retention_policy)}.{source}"
        tag_result = self._statement(f"SHOW TAG KEYS FROM {source}", measurement) or {}
        tag_keys_known = {row[0] for s in tag_result.get("series", []) for row in s.get("values", [])}
        columns, values = series[0]["columns"], series[0]["values"]
        if len(values) > self.max_rows:
            raise StoreError(f"influxql store {self.url}: query of {measurement!r} from {start.isoformat()} to "
                             f"{end.isoformat()} returns more than {self.max_rows} rows "
                             "(TAPAS_STORE__QUERY_MAX_ROWS); narrow the range or the tags")
        frame = pd.DataFrame(values, columns=columns)
        frame.insert(0, "at", pd.to_datetime(frame.pop("time"), unit="us", utc=True))
        present = [c for c in frame.columns[1:] if frame[c].notna().any()]  # keys seen in the range only
        tag_keys = sorted(c for c in present if c in tag_keys_known)
        field_keys = sorted(c for c in present if c not in tag_keys_known)
        for c in field_keys:
            frame[c] = frame[c].astype(float)
        return frame[["at", *tag_keys, *field_keys]]

    def _statement(self, statement: str, measurement: str) -> dict[str, Any] | None:
        """The result of one InfluxQL statement; None for a database not created yet (when we create it on write)."""
        params = {"db": self.database, "epoch": "u", "q": statement}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        resp = self._request("POST", "/query", params=params, what=f"query of {measurement!r}")
        try:
            result: dict[str, Any] = resp.json()["results"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise StoreError(f"influxql store {self.url}: query of {measurement!r}: unexpected answer "
                             f"{resp.text[:200]!r}") from exc
        if "error" in result:
            if self.create_database and str(result["error"]).startswith("database not found"):
                return None  # nothing written yet: the first write creates it
            raise StoreError(f"influxql store {self.url} db {self.database}: query of {measurement!r} "
                             f"failed: {result['error']}" + _hint(404 if "not found" in str(result["error"]) else 0))
        return result

    def close(self) -> None:
        """Write what ``add`` buffered, then close the session (the session closes even if the write fails)."""
        try:
            if self._pending:
                self.flush()
        finally:
            self._session.close()


def _server_error(resp: Any) -> str:
    """InfluxDB's own message (``{"error": ...}``) or the start of the body."""
    try:
        return str(resp.json()["error"])
    except (ValueError, KeyError, TypeError):
        return str(resp.text[:200]) or resp.reason


def _hint(status: int) -> str:
    if status in (401, 403):
        return (" (check TAPAS_STORE__INFLUX_TOKEN, or TAPAS_STORE__INFLUX_USERNAME/_PASSWORD; "
                "InfluxDB 2.x needs a token with write access to the DBRP-mapped bucket)")
    if status == 404:
        return (" (create the database, set TAPAS_STORE__INFLUX_CREATE_DATABASE=true on 1.x, "
                "or map it on 2.x: influx v1 dbrp create)")
    return ""

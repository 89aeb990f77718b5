"""The embedded history store: one SQLite file in WAL mode (the default store).

WAL lets the worker write while the dashboard, ``forecasting.history`` and other
processes read the same file. Points are kept in one narrow table
(measurement, time in µs, tags JSON, fields JSON) so any measurement fits without
migrations; tag filters use SQLite's JSON functions and the result is widened
into a DataFrame on the way out.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.errors import StoreError
from streams.store.base import Point

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS points_m_at ON points (measurement, at_us);
"""


def _to_us(at: datetime) -> int:
    if at.tzinfo is None:
        raise StoreError(f"naive datetime {at.isoformat()} in a store query; pass a timezone-aware instant")
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@functools.lru_cache(maxsize=65536)
def _tags_json(items: tuple[tuple[str, str], ...]) -> str:
    """Tags as stored (sorted keys); cached because a server's tags repeat at every write."""
    return json.dumps(dict(items), sort_keys=True)


class EmbeddedStore:
    """SQLite WAL store at ``path`` (created with its parent folder when missing).

    Examples:
        >>> import tempfile, pathlib
        >>> from datetime import UTC, datetime
        >>> with tempfile.TemporaryDirectory() as d:
        ...     store = EmbeddedStore(pathlib.Path(d) / "h.sqlite")
        ...     at = datetime(2026, 1, 1, tzinfo=UTC)
        ...     store.write([Point("inlet", {"server_id": "s1"}, {"inlet_temp_c": 22.5}, at)])
        ...     df = store.query("inlet", at, datetime(2026, 1, 2, tzinfo=UTC))
        ...     store.close()
        >>> df["inlet_temp_c"].tolist()
        [22.5]
    """

    def __init__(self, path: Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"embedded store {self.path}: {exc} (is the folder writable?)") from exc
        self._lock = threading.Lock()

    def write(self, points: Sequence[Point]) -> None:
        """Insert ``points`` in one transaction."""
        if not points:
            return
        rows = [(p.measurement, _to_us(p.at), _tags_json(tuple(sorted(p.tags.items()))),
                 json.dumps({k: float(v) for k, v in p.fields.items()})) for p in points]
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"embedded store {self.path}: write failed: {exc}") from exc

    def query(self, measurement: str, start: datetime, end: datetime,
              tags: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Points of ``measurement`` with ``start <= at < end`` matching every tag in ``tags``."""
        import pandas as pd

        sql = "SELECT at_us, tags, fields FROM points WHERE measurement = ? AND at_us >= ? AND at_us < ?"
        args: list[object] = [measurement, _to_us(start), _to_us(end)]
        for key, value in (tags or {}).items():
            sql += " AND json_extract(tags, ?) = ?"
            args += [f'$."{key}"', value]
        sql += " ORDER BY at_us, rowid"
        with self._lock:
            try:
                rows = self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"embedded store {self.path}: query failed: {exc}") from exc
        records = [{**json.loads(t), **json.loads(f)} for _, t, f in rows]
        tag_keys = sorted({k for _, t, _ in rows for k in json.loads(t)})
        frame = pd.DataFrame.from_records(records)
        at = pd.to_datetime([r[0] for r in rows], unit="us", utc=True)
        frame.insert(0, "at", at)
        field_keys = sorted(c for c in frame.columns if c != "at" and c not in tag_keys)
        return frame[["at", *tag_keys, *field_keys]]

    def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - close rarely fails
                raise StoreError(f"embedded store {self.path}: close failed: {exc}") from exc

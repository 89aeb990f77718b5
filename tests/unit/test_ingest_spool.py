"""The on-disk buffer: FIFO order, records put back in front, survives a restart, ignores a torn frame."""

from __future__ import annotations

from pathlib import Path

from ingest.producer import DiskSpool, Record


def rec(i: int, key: bytes | None = b"k") -> Record:
    return Record("tapas.telemetry.gpu", key, f"v{i}".encode())


def drain(spool: DiskSpool) -> list[bytes]:
    out: list[bytes] = []
    while len(spool):
        out += [r.value for r in spool.pop_segment()]
    return out


def test_fifo_across_segments(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_records=3)
    for i in range(10):
        assert spool.append(rec(i, key=None if i == 4 else b"k"))
    assert len(spool) == 10
    segment = spool.pop_segment()
    assert [r.value for r in segment] == [b"v0", b"v1", b"v2"]
    rest = []
    while len(spool):
        rest += spool.pop_segment()
    assert [r.value for r in rest] == [f"v{i}".encode() for i in range(3, 10)]
    assert rest[1].key is None and rest[0].key == b"k" and rest[0].topic == "tapas.telemetry.gpu"
    assert list(tmp_path.iterdir()) == []


def test_prepend_goes_before_everything_and_survives_restart(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_records=4)
    for i in range(5, 9):
        spool.append(rec(i))
    spool.prepend([rec(3), rec(4)])
    spool.close()
    reopened = DiskSpool(tmp_path, max_bytes=1 << 20)
    assert len(reopened) == 6
    assert drain(reopened) == [f"v{i}".encode() for i in range(3, 9)]


def test_size_cap_refuses(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=60)
    accepted = [spool.append(rec(i)) for i in range(10)]
    assert accepted[0] and not all(accepted)
    assert len(spool) == sum(accepted)


def test_torn_last_frame_is_ignored(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append(rec(i))
    spool.close()
    seg = next(tmp_path.glob("seg-*.bin"))
    seg.write_bytes(seg.read_bytes()[:-2])  # crash mid-write
    assert drain(DiskSpool(tmp_path, max_bytes=1 << 20)) == [b"v0", b"v1"]

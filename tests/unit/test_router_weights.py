"""Router rules: the map file, HAProxy integer weights, the sidecar's view, failing safe when stale."""

from __future__ import annotations

import doctest
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import router.weights
from contracts import ConfigError, InstanceWeight, RoutingWeights
from router.weights import (
    EQUAL_WEIGHT,
    HAPROXY_MAX_WEIGHT,
    ServerRef,
    haproxy_weights,
    instance_view,
    parse_map,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def test_docstring_examples() -> None:
    result = doctest.testmod(router.weights)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("text", "needle"), [
    ("inst-0 llama/s0\ninst-1 llama\n", "test.map:2: expected '<instance_id> <backend>/<server>'"),
    ("inst-0 llama/s0\ninst-0 llama/s1\n", "test.map:2: instance 'inst-0' is mapped twice"),
    ("a llama/s0\nb llama/s0\n", "test.map:2: server llama/s0 is already mapped to instance 'a'"),
    ("# only a comment\n", "test.map: maps no instance"),
    ("inst-0 lla;ma/s0\n", "test.map:1: backend 'lla;ma'"),
])
def test_map_file_errors_name_line_and_problem(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_map(text, "test.map")
    assert needle in str(err.value)


def _msg(shares: list[float], states: list[str], *, issued_at: datetime = T0, valid_s: float = 10.0) -> RoutingWeights:
    total = sum(shares)
    ws = [s / total for s in shares] if total > 0 else [1.0 / len(shares)] * len(shares)
    ws[-1] = 1.0 - sum(ws[:-1])
    return RoutingWeights(endpoint_id="ep", issued_at=issued_at, valid_until=issued_at + timedelta(seconds=valid_s),
                          weights=[InstanceWeight(instance_id=f"i{j}", weight=max(0.0, min(1.0, w)),
                                                  state=st_)  # type: ignore[arg-type]
                                   for j, (w, st_) in enumerate(zip(ws, states, strict=True))])


shares_and_states = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.sampled_from(["active", "drain"]), min_size=n, max_size=n)))


@given(shares_and_states)
def test_fresh_weights_keep_order_range_and_drains(case: tuple[list[float], list[str]]) -> None:
    shares, states = case
    msg = _msg(shares, states)
    mapping = {w.instance_id: ServerRef("be", w.instance_id) for w in msg.weights}
    out = haproxy_weights({"ep": msg}, mapping, now=T0, stale_after_s=15, started_at=T0)
    assert set(out) == set(mapping.values())
    for w in msg.weights:
        got = out[mapping[w.instance_id]]
        assert 0 <= got <= HAPROXY_MAX_WEIGHT
        if w.state == "drain" or w.weight <= 0:
            assert got == 0
        else:
            assert got >= 1
    active = [w for w in msg.weights if w.state == "active" and w.weight > 0]
    if active:
        top = max(active, key=lambda w: w.weight)
        assert out[mapping[top.instance_id]] == HAPROXY_MAX_WEIGHT
    for a in active:  # the order of shares survives the integer scaling
        for b in active:
            if a.weight > b.weight:
                assert out[mapping[a.instance_id]] >= out[mapping[b.instance_id]]


@given(shares_and_states, st.floats(10.001, 1e5))
def test_stale_weights_fall_back_to_equal_weights(case: tuple[list[float], list[str]], late_s: float) -> None:
    shares, states = case
    msg = _msg(shares, states, valid_s=10.0)
    mapping = {w.instance_id: ServerRef("be", w.instance_id) for w in msg.weights}
    out = haproxy_weights({"ep": msg}, mapping, now=T0 + timedelta(seconds=late_s), stale_after_s=1e6,
                          started_at=T0 + timedelta(seconds=late_s))  # within the start-up grace: still equal
    assert out == {ref: EQUAL_WEIGHT for ref in mapping.values()}
    view = instance_view(msg, "i0", now=T0 + timedelta(seconds=late_s), stale_after_s=1e6)
    assert view is not None and view.stale and not view.draining
    assert view.weight == pytest.approx(1.0 / len(shares))


def test_unnamed_servers_untouched_during_grace_then_equal() -> None:
    msg = _msg([3.0, 1.0], ["active", "active"])
    mapping = {"i0": ServerRef("be", "s0"), "i1": ServerRef("be", "s1"), "other": ServerRef("be", "s9")}
    early = haproxy_weights({"ep": msg}, mapping, now=T0 + timedelta(seconds=1), stale_after_s=5, started_at=T0)
    assert ServerRef("be", "s9") not in early and early[ServerRef("be", "s0")] == 256
    later = haproxy_weights({"ep": msg}, mapping, now=T0 + timedelta(seconds=5), stale_after_s=5, started_at=T0)
    assert later[ServerRef("be", "s9")] == EQUAL_WEIGHT and later[ServerRef("be", "s1")] == 85


def test_cli_refuses_a_bad_map_file_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "routes.map"
    bad.write_text("inst-0 llama/s0\ninst-1\n")
    proc = subprocess.run([sys.executable, "-m", "tapas.cli", "router", "haproxy", "--socket",
                           str(tmp_path / "none.sock"), "--map", str(bad)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert f"{bad}:2: expected" in proc.stderr

"""``tapas bench collectors``: one fleet collector process polling 500 Redfish BMCs and 100 SNMP PDUs on loopback.

Sources, all on 127.0.0.1:

* **Redfish**: the DMTF ``public-rackmount1`` mockup served on 500 ports (500 separate
  services, as 500 BMCs are) by one asyncio process (:mod:`bench.redfish_farm`);
* **SNMP**: one snmpsim process serving 100 copies of the ``snmpsim-data`` APC AP8641
  (rPDU2) recording, one community per copy (``pdu/pdu000`` ... ``pdu/pdu099``): 100
  agents as snmpsim addresses them, on one UDP port. The copies keep the recording's
  system and rPDU2 subtrees (what the ``apc-rpdu2`` profile walks), so snmpsim indexes
  100 small files instead of 100 full ones.

The collector is :class:`ingest.fleet.FleetPoller` in this process at the default
intervals (Redfish 10 s, SNMP 2 s) with the default 32 polls in flight
(``TAPAS_BENCH_COLLECTORS_IN_FLIGHT`` to try another bound); its sink
counts messages (no Kafka: the producer has its own benchmark). CPU is this
process's (all threads) over a measurement window after one Redfish interval of
warm-up (the first poll of a BMC walks its chassis: discovery), so the window is
the steady state. The servers' CPU is reported beside it, not in it.

Baseline, same run, same servers, after the fleet run: today's deployment of one
``tapas ingest redfish|snmp --stdout`` process per device at its old default
interval (1 s), a few of each, measured from ``/proc`` over a window after their
start-up; their CPU per poll and resident memory are scaled to 500 + 100 devices
(``baseline_*_projected_*``), at the fleet's intervals and at the old 1 s default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contracts.messages import Contract

RPDU2_KEEP = ("1.3.6.1.2.1.1.", "1.3.6.1.4.1.318.1.1.26.")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group, then SIGKILL after 5 s."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5.0)


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _data_dir() -> Path:
    from foundation.settings import load_settings

    return Path(load_settings().data_dir)


class RedfishFarm:
    """:mod:`bench.redfish_farm` in a child process; ``ports`` once it listens."""

    def __init__(self, root: Path, num_ports: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.redfish_farm", "--root", str(root),
                                      "--ports", str(num_ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout is not None else ""
        if not line:
            raise RuntimeError("redfish farm exited before listening")
        self.ports: list[int] = json.loads(line)["ports"]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        _stop(self.proc)


def _snmp_farm(num_agents: int) -> Any:
    """An snmpsim agent serving ``num_agents`` communities ``pdu/pduNNN`` (the AP8641 recording, trimmed).

    The environment is the one the SNMP integration tests build (``tests/integration/snmpsim_env.py``).
    """
    from tests.integration.snmpsim_env import SNMPSIM_HOME, SnmpSimAgent, _run, ensure_snmpsim, recordings_dir

    class Farm(SnmpSimAgent):
        def start(self) -> Farm:
            bindir = ensure_snmpsim()
            src = recordings_dir() / "UPS" / "apc-8641.snmprec"
            keep = "".join(ln for ln in src.read_text().splitlines(keepends=True) if ln.startswith(RPDU2_KEEP))
            self.workdir = Path(tempfile.mkdtemp(prefix="snmpsim-bench-", dir=SNMPSIM_HOME))
            (self.data_dir / "UPS").mkdir(parents=True)
            shutil.copyfile(src, self.data_dir / "UPS" / "apc-8641.snmprec")  # what _wait_ready asks
            (self.data_dir / "pdu").mkdir()
            for k in range(num_agents):
                (self.data_dir / "pdu" / f"pdu{k:03d}.snmprec").write_text(keep)
            cache = self.workdir / "cache"
            cache.mkdir()
            _run(["chmod", "-R", "a+rwX", str(self.workdir)])
            log = self.workdir / "snmpsim.log"
            self.proc = subprocess.Popen(
                [str(bindir / "snmpsim-command-responder"), f"--data-dir={self.data_dir}", f"--cache-dir={cache}",
                 f"--agent-udpv4-endpoint=127.0.0.1:{self.port}", "--process-user=nobody",
                 "--process-group=nogroup"],
                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
            self._wait_ready(log)
            return self

    return Farm(start_timeout_s=120.0).start()


def _fleet_specs(ports: Sequence[int], snmp_port: int, num_pdus: int, *, redfish_interval_s: float,
                 snmp_interval_s: float, timeout_s: float) -> list[Any]:
    from ingest.fleet import FleetConfig, fleet_specs

    cfg = FleetConfig.model_validate({
        "defaults": {"redfish_interval_s": redfish_interval_s, "snmp_interval_s": snmp_interval_s,
                     "timeout_s": timeout_s},
        "redfish": [{"server_id": f"srv-{i:03d}", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)],
        "snmp": [{"pdu_id": f"pdu-{k:03d}", "host": "127.0.0.1", "port": snmp_port, "community": f"pdu/pdu{k:03d}",
                  "profile": "apc-rpdu2"} for k in range(num_pdus)],
    })
    return fleet_specs(cfg)


def _measure_fleet(specs: list[Any], *, warmup_s: float, window_s: float, max_in_flight: int,
                   servers: Sequence[int]) -> dict[str, float]:
    from ingest.fleet import FleetPoller

    kinds: Counter[str] = Counter()
    lock = threading.Lock()

    def sink(messages: Sequence[Contract]) -> None:
        with lock:
            for m in messages:
                kinds[m.message_name] += 1

    poller = FleetPoller(specs, sink, max_in_flight=max_in_flight, rng=np.random.default_rng(0), keep_lateness=True)
    runner = threading.Thread(target=poller.run, kwargs={"duration_s": warmup_s + window_s}, name="bench-fleet")
    runner.start()
    time.sleep(warmup_s)
    cpu0, polls0, err0, late0, n0 = (time.process_time(), poller.stats.num_polls, poller.stats.num_errors,
                                     poller.stats.num_late, len(poller.stats.lateness_s))
    busy0 = {st.spec.name: (st.busy_s, st.num_polls) for st in poller.states}
    kinds0 = dict(kinds)
    srv0 = [_proc_cpu_s(p) for p in servers]
    t0 = time.monotonic()
    time.sleep(window_s)
    cpu1, polls1, err1, late1, n1 = (time.process_time(), poller.stats.num_polls, poller.stats.num_errors,
                                     poller.stats.num_late, len(poller.stats.lateness_s))
    srv1 = [_proc_cpu_s(p) for p in servers]
    elapsed = time.monotonic() - t0
    busy: dict[str, list[float]] = {"redfish": [0.0, 0.0], "snmp": [0.0, 0.0]}
    for st in poller.states:
        b, n = busy0[st.spec.name]
        busy[st.spec.kind][0] += st.busy_s - b
        busy[st.spec.kind][1] += st.num_polls - n
    kinds1 = dict(kinds)
    runner.join()
    poller.close()
    lateness = np.asarray(poller.stats.lateness_s[n0:n1])
    polls = polls1 - polls0
    cpu = cpu1 - cpu0
    return {
        "fleet_window_s": round(elapsed, 2),
        "fleet_cpu_s_per_s": cpu / elapsed,
        "fleet_polls_per_s": polls / elapsed,
        "fleet_redfish_samples_per_s": (kinds1.get("inlet_sample", 0) - kinds0.get("inlet_sample", 0)) / elapsed,
        "fleet_snmp_samples_per_s": (kinds1.get("pdu_power_sample", 0) - kinds0.get("pdu_power_sample", 0)) / elapsed,
        "fleet_cpu_ms_per_poll": 1000.0 * cpu / max(polls, 1),
        "fleet_poll_errors": err1 - err0,
        "fleet_late_frac": (late1 - late0) / max(n1 - n0, 1),
        "fleet_lateness_p99_s": float(np.quantile(lateness, 0.99)) if lateness.size else float("nan"),
        "servers_cpu_s_per_s": (sum(srv1) - sum(srv0)) / elapsed,
        "fleet_rss_mib": _proc_rss_mib(os.getpid()),
        "fleet_redfish_poll_wall_ms": 1000.0 * busy["redfish"][0] / max(busy["redfish"][1], 1.0),
        "fleet_snmp_poll_wall_ms": 1000.0 * busy["snmp"][0] / max(busy["snmp"][1], 1.0),
    }


def _measure_processes(cmds: list[list[str]], *, startup_s: float, window_s: float) -> dict[str, float]:
    """CPU per poll and RSS of single-device collector processes (one poll per printed line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPAS_") or k == "TAPAS_DATA_DIR"}
    procs = [subprocess.Popen([sys.executable, "-m", "tapas.cli", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True) for c in cmds]
    lines = [0] * len(procs)

    def count(k: int, p: subprocess.Popen[str]) -> None:
        for _ in p.stdout or ():
            lines[k] += 1

    readers = [threading.Thread(target=count, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for r in readers:
        r.start()
    try:
        time.sleep(startup_s)
        cpu0, n0 = [_proc_cpu_s(p.pid) for p in procs], list(lines)
        t0 = time.monotonic()
        time.sleep(window_s)
        cpu1, n1 = [_proc_cpu_s(p.pid) for p in procs], list(lines)
        elapsed = time.monotonic() - t0
        rss = [_proc_rss_mib(p.pid) for p in procs]
    finally:
        for p in procs:
            _stop(p)
        for r in readers:
            r.join(5.0)
    polls = sum(b - a for a, b in zip(n0, n1, strict=True))
    cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    return {"cpu_ms_per_poll": 1000.0 * cpu / max(polls, 1), "cpu_s_per_s_per_process": cpu / elapsed / len(procs),
            "polls_per_s_per_process": polls / elapsed / len(procs), "rss_mib": float(np.mean(rss))}


def run(quick: bool = False) -> dict[str, Any]:
    """The fleet collector against 500 + 100 loopback devices (quick: 50 + 10), with the per-process baseline."""
    num_bmcs, num_pdus = (50, 10) if quick else (500, 100)
    redfish_interval_s, snmp_interval_s = 10.0, 2.0
    max_in_flight = int(os.environ.get("TAPAS_BENCH_COLLECTORS_IN_FLIGHT", "32"))  # the fleet default
    warmup_s, window_s = (11.0, 8.0) if quick else (12.0, 40.0)
    root = _data_dir() / "redfish-mockup" / "public-rackmount1"
    if not (root / "index.json").exists():
        raise FileNotFoundError(f"DMTF mockup not found under {root}; set TAPAS_DATA_DIR")
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * (num_bmcs + num_pdus) + 256)), hard))
    farm = RedfishFarm(root, num_bmcs)
    snmp = None
    try:
        t = time.monotonic()
        snmp = _snmp_farm(num_pdus)
        snmp_start_s = time.monotonic() - t
        if snmp.proc is None:
            raise RuntimeError("snmpsim did not start")
        specs = _fleet_specs(farm.ports, snmp.port, num_pdus, redfish_interval_s=redfish_interval_s,
                             snmp_interval_s=snmp_interval_s, timeout_s=5.0)
        out: dict[str, Any] = {"redfish_endpoints": num_bmcs, "snmp_endpoints": num_pdus,
                               "redfish_interval_s": redfish_interval_s, "snmp_interval_s": snmp_interval_s,
                               "max_in_flight": max_in_flight,
                               "scheduled_polls_per_s": num_bmcs / redfish_interval_s + num_pdus / snmp_interval_s,
                               "snmpsim_start_s": round(snmp_start_s, 1)}
        out.update(_measure_fleet(specs, warmup_s=warmup_s, window_s=window_s, max_in_flight=max_in_flight,
                                  servers=[farm.proc.pid, snmp.proc.pid]))
        k = 1 if quick else 2
        base_window = 6.0 if quick else 15.0
        rf = _measure_processes([["ingest", "redfish", "--url", f"http://127.0.0.1:{p}", "--server-id", f"b{i}",
                                  "--stdout", "--interval", "1"] for i, p in enumerate(farm.ports[:k])],
                                startup_s=8.0, window_s=base_window)
        sn = _measure_processes([["ingest", "snmp", "--host", "127.0.0.1", "--port", str(snmp.port), "--community",
                                  f"pdu/pdu{i:03d}", "--pdu-id", f"b{i}", "--profile", "apc-rpdu2", "--stdout",
                                  "--interval", "1"] for i in range(k)], startup_s=8.0, window_s=base_window)
    finally:
        farm.stop()
        if snmp is not None:
            snmp.stop()
    rate_rf, rate_sn = num_bmcs / redfish_interval_s, num_pdus / snmp_interval_s
    out.update({
        "baseline_processes_measured": 2 * k,
        "baseline_redfish_cpu_ms_per_poll": rf["cpu_ms_per_poll"],
        "baseline_snmp_cpu_ms_per_poll": sn["cpu_ms_per_poll"],
        "baseline_rss_mib_per_process": (rf["rss_mib"] + sn["rss_mib"]) / 2.0,
        "baseline_projected_cpu_s_per_s_at_fleet_intervals": (rf["cpu_ms_per_poll"] * rate_rf
                                                              + sn["cpu_ms_per_poll"] * rate_sn) / 1000.0,
        "baseline_projected_cpu_s_per_s_at_1s": num_bmcs * rf["cpu_s_per_s_per_process"]
        + num_pdus * sn["cpu_s_per_s_per_process"],
        "baseline_projected_rss_gib": (num_bmcs * rf["rss_mib"] + num_pdus * sn["rss_mib"]) / 1024.0,
    })
    base_per_poll = out["baseline_projected_cpu_s_per_s_at_fleet_intervals"] * 1000.0 / (rate_rf + rate_sn)
    out["baseline_cpu_ms_per_poll"] = base_per_poll
    out["cpu_per_poll_ratio"] = out["fleet_cpu_ms_per_poll"] / base_per_poll if base_per_poll else float("nan")
    out["cpu_ratio_vs_processes_at_fleet_intervals"] = (out["fleet_cpu_s_per_s"]
                                                        / out["baseline_projected_cpu_s_per_s_at_fleet_intervals"])
    out["polls_on_schedule_frac"] = out["fleet_polls_per_s"] / out["scheduled_polls_per_s"]
    return out


if __name__ == "__main__":  # pragma: no cover - for a by-hand run: python -m bench.collectors [--quick]
    shutil.get_terminal_size()
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

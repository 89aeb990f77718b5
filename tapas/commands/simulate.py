"""``tapas simulate``: compare policies in the closed-loop cluster simulator; ``tapas simulate capacity``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

#: The metric keys of ``--json`` (per policy), in table order.
METRIC_KEYS = (
    "thermal_throttle_events", "power_throttle_events", "throttled_gpu_seconds", "max_gpu_temp_c",
    "peak_row_power_frac", "slo_attainment", "p99_ttft_s", "p99_tbt_s", "tokens_per_s", "quality_loss",
    "saas_perf_loss", "iaas_perf_loss",
)

simulate_app = typer.Typer(
    help="Closed-loop cluster simulation: compare policies on the same physics, trace, scenario and seed.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(simulate_app, name="simulate")


def _policy_names() -> list[str]:
    from controller.core.policy import POLICIES

    return list(POLICIES)


def _knobs(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs (VALUE as JSON, else a string), checked against the knobs of every policy."""
    from controller.core.policy import knobs_for

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--knob")
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw
    knobs_for("tapas", out)  # unknown names fail here, before any run
    return out


def _clean(x: Any) -> Any:
    """JSON-safe numbers (NaN/inf become null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _trace(trace: Path | None) -> Path:
    from foundation.settings import load_settings

    return trace or load_settings().resolved_trace_file


@simulate_app.callback()
def simulate(
    ctx: typer.Context,
    trace: Path = typer.Option(None, "--trace", help="Azure-LLM-schema trace CSV (default: settings.trace_file)."),
    scenario: str = typer.Option("normal", "--scenario", help="normal, load-spike, cooling-failure, power-failure."),
    compare: str = typer.Option("baseline,tapas", "--compare", help="Comma-separated policies (see --list-policies)."),
    servers: int = typer.Option(240, "--servers", min=1, help="Servers in the default layout (ignored with --cluster)."),
    hours: float = typer.Option(2.0, "--hours", min=0.001, help="Simulated hours."),
    oversubscription: float = typer.Option(1.5, "--oversubscription", help="Row nameplate / row budget."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same results."),
    cluster: Path = typer.Option(None, "--cluster", help="Cluster TOML (default: simulator/clusters/default.toml)."),
    json_out: Path = typer.Option(None, "--json", help="Write the comparison JSON here (plots beside it)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write temperature, row power and throttling plots."),
    list_policies: bool = typer.Option(False, "--list-policies", help="Print the registered policies and exit."),
    knob: list[str] = typer.Option([], "--knob", help="Policy knob override NAME=VALUE (JSON value; repeatable), as "
                                                      "TAPAS_CONTROLLER__KNOBS does for the live controller."),
) -> None:
    """Run each policy of --compare on the same cluster, trace, scenario and seed; print a side-by-side table."""
    if ctx.invoked_subcommand is not None:
        return
    names = _policy_names()
    if list_policies:
        console.print(", ".join(names))
        return
    chosen = [p.strip() for p in compare.split(",") if p.strip()]
    bad = [p for p in chosen if p not in names]
    if bad:
        raise typer.BadParameter(f"unknown policies {bad}; choose from {', '.join(names)}", param_hint="--compare")
    knobs = _knobs(knob)
    from foundation.topology import default_topology, load_topology
    from simulator.engine import run
    from simulator.scenarios import SCENARIOS
    from simulator.workload import load_trace

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"choose from {', '.join(SCENARIOS)}", param_hint="--scenario")
    topo = load_topology(cluster, oversubscription=oversubscription) if cluster else default_topology(servers, oversubscription)
    tr = load_trace(_trace(trace))
    results = {}
    failed: dict[str, str] = {}
    for name in chosen:
        with console.status(f"simulating {name} ({scenario}, {topo.num_servers} servers, {hours} h)"):
            try:
                results[name] = run(topo, scenario, name, hours=hours, seed=seed, trace=tr, knobs=knobs)
            except Exception as exc:  # one broken policy must not discard the others' runs
                logging.getLogger(__name__).exception("event=policy_failed policy=%s", name)
                failed[name] = f"{type(exc).__name__}: {exc}"
    chosen = [n for n in chosen if n in results]
    if not chosen:
        raise typer.Exit(1)
    if not console.is_terminal:
        console.width = max(console.width, 40 + 14 * len(chosen))  # files and pipes get the whole table
    table = Table("metric", *chosen, title=f"{scenario} · {topo.num_servers} servers · {hours} h · "
                  f"oversubscription {oversubscription} · seed {seed}")
    for key in METRIC_KEYS:
        table.add_row(key, *[f"{results[n].metrics[key]:.4g}" for n in chosen])
    console.print(table)
    if json_out:
        payload = {
            "policies": {n: {k: r.metrics[k] for k in METRIC_KEYS} for n, r in results.items()},
            "diagnostics": {n: {k: v for k, v in r.metrics.items() if k not in METRIC_KEYS} | {"info": r.info}
                            for n, r in results.items()},
            "scenario": scenario, "servers": topo.num_servers, "hours": hours, "oversubscription": oversubscription,
            "seed": seed, "trace": str(_trace(trace)), "failed": failed,
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True))
        console.print(f"wrote {json_out}")
        if plots:
            from simulator.plots import write_plots

            for p in write_plots(results, json_out.parent, json_out.stem):
                console.print(f"wrote {p}")
    if failed:
        console.print(f"[red]failed policies: {failed}[/red]")
        raise typer.Exit(1)


@simulate_app.command("capacity")
def capacity(
    trace: Path = typer.Option(None, "--trace", help="Azure-LLM-schema trace CSV (default: settings.trace_file)."),
    policies: str = typer.Option("baseline,tapas", "--policies", help="Comma-separated policies."),
    hours: float = typer.Option(1.0, "--hours", min=0.001, help="Simulated hours per size tried."),
    rows: int = typer.Option(2, "--rows", min=1, help="Power domains (rows) in the test cluster."),
    oversubscription: float = typer.Option(1.0, "--oversubscription", help="Base rows' nameplate / budget."),
    seed: int = typer.Option(0, "--seed"),
    max_racks: int = typer.Option(30, "--max-racks", help="Stop the search at this many racks per row."),
    past_failure: int = typer.Option(0, "--past-failure", min=0,
                                     help="Sizes to run after a policy's first failure (to see how far past its edge)."),
    json_out: Path = typer.Option(None, "--json", help="Write the capacity JSON here."),
) -> None:
    """Add servers per power domain (same budgets and cooling) until each policy breaks the tolerance."""
    from simulator.capacity import search_capacity

    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    bad = [p for p in chosen if p not in _policy_names()]
    if bad:
        raise typer.BadParameter(f"unknown policies {bad}", param_hint="--policies")
    out = search_capacity(chosen, trace_path=_trace(trace), hours=hours, seed=seed, rows=rows,
                          oversubscription=oversubscription, max_racks=max_racks, past_failure=past_failure,
                          progress=console.print)
    table = Table("policy", "max_servers_per_domain", title="capacity at equal tolerance")
    for n, v in out["policies"].items():
        table.add_row(n, str(v["max_servers_per_domain"]))
    console.print(table)
    console.print(f"ratio (tapas / baseline): {out['ratio']}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(_clean(out), indent=2, sort_keys=True))
        console.print(f"wrote {json_out}")

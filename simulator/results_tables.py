"""Rewrite the tables of ``simulator/results/README.md`` from the JSON files beside it.

The committed results are JSON written by ``tapas simulate --json`` and ``tapas simulate
capacity --json``; the README's tables are derived from them so that no figure is typed by
hand. Run ``python -m simulator.results_tables simulator/results`` after refreshing the JSON.
The README's opening paragraph (how the files were made) is kept; everything from the first
scenario heading on is regenerated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCENARIO_ORDER = ("normal", "load-spike", "cooling-failure", "power-failure")
METRICS = (
    "thermal_throttle_events", "power_throttle_events", "throttled_gpu_seconds", "max_gpu_temp_c",
    "peak_row_power_frac", "slo_attainment", "p99_ttft_s", "p99_tbt_s", "tokens_per_s", "quality_loss",
    "saas_perf_loss", "iaas_perf_loss",
)


def _fmt(value: Any) -> str:
    v = float(value)
    return "0" if v == 0 else f"{v:.4g}"


def scenario_table(result: dict[str, Any]) -> str:
    """One scenario's metric × policy table (baseline first, then the others alphabetically)."""
    names = sorted(result["policies"])
    names = ["baseline", *[n for n in names if n != "baseline"]] if "baseline" in names else names
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in METRICS:
        lines.append(f"| {k} | " + " | ".join(_fmt(result["policies"][n][k]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def capacity_section(cap: dict[str, Any]) -> str:
    """The capacity search: each policy's steps and the ratio."""
    past = f" --past-failure {cap['past_failure']}" if cap.get("past_failure") else ""
    out = [f"`tapas simulate capacity --policies {','.join(cap['policies'])} --rows 2 --hours {cap['hours']:g} "
           f"--max-racks 24{past}` (row budget {cap['row_budget_w']:.0f} W and zone cooling fixed; tolerance "
           f"{cap['tolerance']}):\n"]
    for name, v in cap["policies"].items():
        steps = "; ".join(f"{s['servers_per_domain']}: {'pass' if s['passed'] else 'FAIL ' + s['why']}"
                          for s in v["steps"])
        out.append(f"- {name}: max_servers_per_domain = {v['max_servers_per_domain']} ({steps})")
    rows = [(name, s) for name, v in cap["policies"].items() for s in v["steps"] if "mean_row_power_w" in s]
    if rows:
        out.append("\nMean power per row (kW) and per SaaS GPU (W), by policy and size:\n")
        out.append("| policy | servers | base | CPU | non-SaaS GPUs | SaaS GPUs | W per SaaS GPU | SLO |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name, s in rows:
            w = s["mean_row_power_w"]
            out.append(f"| {name} | {s['servers_per_domain']} | {w['base'] / 1e3:.1f} | {w['cpu'] / 1e3:.1f} | "
                       f"{w['non_saas_gpus'] / 1e3:.1f} | {w['saas_gpus'] / 1e3:.1f} | {s['mean_saas_gpu_power_w']:.0f} | "
                       f"{s['slo_attainment']:.3f} |")
    ratio = cap.get("ratio")
    out.append(f"\nratio (tapas / baseline) = {ratio:.3f}" if ratio is not None else "\nratio: not computed")
    return "\n".join(out) + "\n"


def render(folder: Path) -> str:
    """The README text for ``folder`` (its current opening paragraph plus regenerated tables)."""
    readme = folder / "README.md"
    head = readme.read_text().split("\n## ")[0].rstrip("\n") + "\n" if readme.exists() else (
        "# Closed-loop results (generated from the JSON files in this folder)\n")
    parts = [head]
    for sc in SCENARIO_ORDER:
        f = folder / f"{sc}.json"
        if f.exists():
            parts.append(f"\n## {sc}\n\n" + scenario_table(json.loads(f.read_text())))
    cap = folder / "capacity.json"
    if cap.exists():
        parts.append("\n## capacity\n\n" + capacity_section(json.loads(cap.read_text())))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.results_tables FOLDER``: rewrite FOLDER/README.md."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "simulator/results")
    (folder / "README.md").write_text(render(folder))
    print(f"wrote {folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

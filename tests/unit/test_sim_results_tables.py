"""The results README's tables come from the JSON files, not from hand-typed figures."""

from __future__ import annotations

import json
from pathlib import Path

from simulator.results_tables import METRICS, main


def test_tables_are_rewritten_from_the_json(tmp_path: Path) -> None:
    metrics = {k: 0.5 for k in METRICS}
    result = {"policies": {"tapas": {**metrics, "slo_attainment": 0.98765}, "baseline": metrics}}
    (tmp_path / "normal.json").write_text(json.dumps(result))
    cap = {"policies": {"baseline": {"max_servers_per_domain": 60, "steps": [
        {"servers_per_domain": 60, "passed": True, "why": "within tolerance"}]}},
        "hours": 0.5, "row_budget_w": 1.0, "tolerance": {}, "ratio": 1.2}
    (tmp_path / "capacity.json").write_text(json.dumps(cap))
    (tmp_path / "README.md").write_text("# Results\n\nHow they were made.\n\n## normal\n\nstale table\n")
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Results\n\nHow they were made.\n")
    assert "stale table" not in text
    assert "| metric | baseline | tapas |" in text
    assert "| slo_attainment | 0.5 | 0.9877 |" in text
    assert "ratio (tapas / baseline) = 1.200" in text

"""The catalogue is data: one record per configuration, exported with its sources, loaded by the live controller
without the simulator's physics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.errors import ConfigError
from controller.catalogue_file import load_catalogue, shipped_path
from controller.core.catalogue import Catalogue
from foundation.topology import SKUS
from simulator.catalogue import SOURCES, build_catalogue, export_catalogue

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sku", ["A100-SXM-80GB", "H100-SXM-80GB"])
def test_shipped_catalogue_is_a_fresh_export_and_loads_to_the_same_records(sku: str) -> None:
    shipped = json.loads(shipped_path(sku).read_text())
    fresh = json.loads(json.dumps(export_catalogue(SKUS[sku])))
    assert shipped == fresh, f"stale: rerun `tapas catalogue export --sku {sku}`"
    assert shipped["sources"] == SOURCES and shipped["sku"] == sku
    assert load_catalogue(None, sku=sku) == build_catalogue(SKUS[sku])


def test_controller_start_up_loads_the_catalogue_without_the_simulator() -> None:
    code = ("import sys; from controller.catalogue_file import load_catalogue; import controller.service; "
            "import tapas.commands.controller; c = load_catalogue(None, sku='A100-SXM-80GB'); "
            "bad = sorted(m for m in sys.modules if m.startswith('simulator')); "
            "print(len(c.endpoint_ids), bad); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2 []"


def test_bad_catalogue_files_are_clear_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_catalogue(tmp_path / "none.json", sku="A100-SXM-80GB")
    data = json.loads(shipped_path("A100-SXM-80GB").read_text())
    wrong_sku = tmp_path / "h.json"
    wrong_sku.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="is for 'A100-SXM-80GB'"):
        load_catalogue(wrong_sku, sku="H100-SXM-80GB")
    data["endpoints"]["llm-70b"]["options"][0]["clock_mhz"] = 1
    extra = tmp_path / "x.json"
    extra.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown option fields"):
        load_catalogue(extra, sku="A100-SXM-80GB")
    with pytest.raises(ValueError, match="format"):
        Catalogue.from_dict({"format": "other"})

"""The model registry: versioned forecaster artifacts on disk, promotion, and verified loading.

Layout under ``settings.registry_dir``::

    <model_name>/<version>/model.json       ForecasterParams as JSON (what predicts)
    <model_name>/<version>/metadata.json    features, training range, metrics, library versions, sha256
    <model_name>/PROMOTED.json              {"version", "sha256", "promoted_at"}

Artifacts are JSON only: nothing is unpickled, so a tampered artifact can at worst
carry wrong numbers, never run code. Every load recomputes the sha256 of
``model.json`` and refuses a mismatch with the metadata (and, for the promoted
version or an announcement, with the digest recorded there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.errors import ConfigError
from forecasting.online import OnlineForecaster
from forecasting.state import ForecasterParams

#: Name under which the forecaster is registered and announced on ``tapas.models``.
MODEL_NAME = "tapas-forecaster"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelIntegrityError(ConfigError):
    """An artifact's digest does not match its record, or its path leaves the registry."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version as listed by ``tapas models list``."""

    version: str
    path: Path
    sha256: str
    created_at: str
    promoted: bool
    metrics: dict[str, float]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise ConfigError(f"model version {version!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return version


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_version(registry_dir: Path, params: ForecasterParams, metadata: dict[str, Any],
                 *, model_name: str = MODEL_NAME) -> ModelVersion:
    """Write ``params`` as a new version (its ``params.version``); refuses to overwrite an existing one."""
    version = _check_version(params.version)
    vdir = Path(registry_dir) / model_name / version
    if vdir.exists():
        raise ConfigError(f"model version {version!r} already exists in {vdir.parent}; pick a new version")
    vdir.mkdir(parents=True)
    model_path = vdir / "model.json"
    model_path.write_text(json.dumps(params.to_json_dict(), indent=1, sort_keys=True))
    digest = sha256_file(model_path)
    created_at = datetime.now(UTC).isoformat()
    meta = {"model_name": model_name, "version": version, "sha256": digest, "created_at": created_at,
            **metadata}
    _atomic_write(vdir / "metadata.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
    return ModelVersion(version, model_path, digest, created_at, False, dict(meta.get("metrics", {})))


def read_metadata(registry_dir: Path, version: str, *, model_name: str = MODEL_NAME) -> dict[str, Any]:
    """The metadata of one version (raises ConfigError naming the version when absent)."""
    path = Path(registry_dir) / model_name / _check_version(version) / "metadata.json"
    if not path.exists():
        raise ConfigError(f"model version {version!r} not found under {path.parent.parent}")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


def promoted(registry_dir: Path, *, model_name: str = MODEL_NAME) -> dict[str, Any] | None:
    """The promotion record (version, sha256, promoted_at), or None when nothing was promoted."""
    path = Path(registry_dir) / model_name / "PROMOTED.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def list_versions(registry_dir: Path, *, model_name: str = MODEL_NAME) -> list[ModelVersion]:
    """Every registered version, oldest first."""
    root = Path(registry_dir) / model_name
    if not root.exists():
        return []
    current = (promoted(registry_dir, model_name=model_name) or {}).get("version")
    out = []
    for vdir in root.iterdir():
        meta_path = vdir / "metadata.json"
        if not vdir.is_dir() or not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        out.append(ModelVersion(meta["version"], vdir / "model.json", meta["sha256"], meta["created_at"],
                                meta["version"] == current, {k: float(v) for k, v in meta.get("metrics", {}).items()}))
    return sorted(out, key=lambda m: m.created_at)


def promote(registry_dir: Path, version: str, *, model_name: str = MODEL_NAME) -> dict[str, Any]:
    """Mark ``version`` as the one workers load; verifies its digest first. Returns the record."""
    meta = read_metadata(registry_dir, version, model_name=model_name)
    path = Path(registry_dir) / model_name / version / "model.json"
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise ModelIntegrityError(f"{path}: sha256 {digest} does not match metadata {meta['sha256']}; "
                                  "the artifact was modified after training")
    record = {"model_name": model_name, "version": version, "sha256": digest,
              "artifact_path": f"{model_name}/{version}/model.json",
              "promoted_at": datetime.now(UTC).isoformat(), "metrics": meta.get("metrics", {})}
    _atomic_write(Path(registry_dir) / model_name / "PROMOTED.json", json.dumps(record, indent=1, sort_keys=True))
    return record


def load_artifact(registry_dir: Path, artifact_path: str, sha256: str) -> OnlineForecaster:
    """Load a forecaster from a path inside the registry after checking its digest.

    This is what a worker calls for a :class:`contracts.ModelAnnouncement`: the path
    must stay inside ``registry_dir`` (an announcement cannot point anywhere else)
    and the file's sha256 must equal the announced one.
    """
    root = Path(registry_dir).resolve()
    path = (root / artifact_path).resolve()
    if root not in path.parents:
        raise ModelIntegrityError(f"artifact_path {artifact_path!r} leaves the registry {root}")
    if not path.exists():
        raise ConfigError(f"artifact {path} not found (is this worker's registry_dir the trainer's?)")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ModelIntegrityError(f"{path}: sha256 {digest} does not match the expected {sha256}; refusing to load")
    return OnlineForecaster(ForecasterParams.from_json_dict(json.loads(raw)))


def load_forecaster(registry_dir: Path, version: str | None = None, *,
                    model_name: str = MODEL_NAME) -> OnlineForecaster:
    """The forecaster of ``version``, else the promoted one, else the documented physics default."""
    if version is None:
        record = promoted(registry_dir, model_name=model_name)
        if record is None:
            return OnlineForecaster()
        return load_artifact(registry_dir, record["artifact_path"], record["sha256"])
    meta = read_metadata(registry_dir, version, model_name=model_name)
    return load_artifact(registry_dir, f"{model_name}/{version}/model.json", meta["sha256"])


def load_announced(registry_dir: Path, announcement: Any) -> OnlineForecaster:
    """Load the version a :class:`contracts.ModelAnnouncement` names, verified against its sha256."""
    forecaster = load_artifact(registry_dir, announcement.artifact_path, announcement.sha256)
    if forecaster.version != announcement.version:
        raise ModelIntegrityError(f"announced version {announcement.version!r} but the artifact holds "
                                  f"{forecaster.version!r}")
    return forecaster

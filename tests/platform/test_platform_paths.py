"""Model folders a client names (a target's ``model_path`` / ``model_uri``, a model's ``file://`` artifact)
must resolve into the data dir, an ``--allow-path`` / ``EMBEDFORGE_ALLOW_PATHS`` folder or a folder the
platform registered itself; anything else is a 400 naming the field, and nothing is stored."""

from __future__ import annotations

import os

import httpx
import pytest
from tutorial import MINILM, NS, client_for

TRAINING_OPTIONS = [{"training_type": "sft", "finetuning_type": "all_weights"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    made = {name: root / name for name in ("allowed", "from-env", "secret", "data")}
    for folder in made.values():
        folder.mkdir()
    (made["secret"] / "config.json").write_text("{}")
    (made["data"] / "escape").symlink_to(made["secret"])  # a link inside the data dir, pointing out
    return made


@pytest.fixture(scope="module")
def plat(platform_factory, folders):
    os.environ["EMBEDFORGE_ALLOW_PATHS"] = os.pathsep.join(["", str(folders["from-env"])])
    try:
        return platform_factory("sqlite", data_dir=folders["data"], allow_paths=[folders["allowed"]]).start()
    finally:
        del os.environ["EMBEDFORGE_ALLOW_PATHS"]


def _model(plat, name: str, files_url: str) -> httpx.Response:
    body = {"name": name, "namespace": NS, "artifact": {"files_url": files_url}}
    return httpx.post(f"{plat.url}/v1/models", json=body)


def _refused(response: httpx.Response, field: str) -> str:
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ")
    return detail


@pytest.mark.parametrize(
    "where",
    [
        lambda f: f"file://{f['secret']}",
        lambda f: f"file://{f['data']}/../secret",
        lambda f: f"file://{f['data']}/escape",
        lambda f: f"file://{f['allowed']}/../secret/",
        lambda f: "file://relative/folder",
    ],
    ids=["outside", "dot-dot", "symlink-out", "dot-dot-from-allowed", "relative"],
)
def test_a_model_artifact_outside_the_allowed_folders_is_refused(plat, folders, where):
    detail = _refused(_model(plat, "sneaky", where(folders)), "artifact.files_url")
    assert "outside" in detail or "absolute" in detail
    assert httpx.get(f"{plat.url}/v1/models/{NS}/sneaky").status_code == 404


def test_allowed_folders_take_models(plat, folders):
    inside = plat.data_dir / "models" / "mine"
    inside.mkdir(parents=True)
    for name, folder in (
        ("in-data", inside),
        ("by-flag", folders["allowed"]),
        ("by-env", folders["from-env"]),
    ):
        r = _model(plat, name, f"file://{folder}")
        assert r.status_code == 200, r.text
        assert r.json()["artifact"]["files_url"] == f"file://{folder}"


def test_a_target_outside_the_allowed_folders_is_refused(plat, folders):
    target = {"name": "t", "namespace": NS, "num_parameters": 1, "precision": "fp32"}
    r = httpx.post(
        f"{plat.url}/v1/customization/targets", json={**target, "model_path": str(folders["secret"])}
    )
    _refused(r, "model_path")
    r = httpx.post(
        f"{plat.url}/v1/customization/targets",
        json={**target, "model_uri": f"file://{plat.data_dir}/escape"},
    )
    _refused(r, "model_uri")
    inline = {"name": "c@v1", "namespace": NS, "training_options": TRAINING_OPTIONS}
    r = httpx.post(
        f"{plat.url}/v1/customization/configs",
        json={**inline, "target": {**target, "model_path": f"{plat.data_dir}/../secret"}},
    )
    _refused(r, "target.model_path")
    assert httpx.get(f"{plat.url}/v1/customization/targets/{NS}/t").status_code == 404
    assert httpx.get(f"{plat.url}/v1/customization/configs/{NS}/c@v1").status_code == 404
    r = httpx.post(
        f"{plat.url}/v1/customization/targets", json={**target, "model_path": str(folders["allowed"])}
    )
    assert r.status_code == 200, r.text


def test_the_registered_base_model_stays_usable(plat):
    """MiniLM's folder lives in site-packages, outside every allowed folder; the platform registered it."""
    config = client_for(plat.url).deployment.configs.create(name="minilm-deploy", namespace=NS, model=MINILM)
    assert config.model == MINILM

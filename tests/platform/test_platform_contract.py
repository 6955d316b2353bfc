"""The contract with the ``nemo-microservices`` SDK: every method of the resources the platform serves,
found by walking the client's resource classes, is called through the real SDK against the platform on
SQLite and on PostgreSQL. Each answer must validate as the SDK's own response model, warnings are errors,
and the fields must say what was asked. A method the SDK has and this file has no case for fails."""

from __future__ import annotations

import io
import itertools
import json
import socket
import time
import zipfile
from dataclasses import dataclass, field
from functools import cached_property

import pytest
from nemo_microservices import NeMoMicroservices, NotFoundError
from sdk_contract import Caller, sdk_methods
from tutorial import client_for, retriever_target, wait_evaluation, wait_job

pytestmark = pytest.mark.filterwarnings("error")

NS = "contract"
TINY = "local/tiny-bert"
ROWS = [{"query": f"question {i}", "pos_doc": f"answer {i}", "neg_doc": [f"other {i}"]} for i in range(16)]
KEY = "endpoint-key-0123456789-abcd"
EVAL_CONFIG = {
    "type": "retriever",
    "tasks": {
        "tiny": {
            "type": "beir",
            "dataset": {"files_url": "file://tiny/"},
            "metrics": {"recall_5": {"type": "recall_5"}, "ndcg_cut_5": {"type": "ndcg_cut_5"}},
        }
    },
}
_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


class World:
    """One platform and the things several calls need, made on first use (so tests run in any order)."""

    def __init__(self, plat):
        self.plat, self.url = plat, plat.url
        self.client: NeMoMicroservices = client_for(plat.url)
        self.call = Caller(self.client)
        self.client.namespaces.create(id=NS)

    @cached_property
    def dataset(self) -> str:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=f"{self.url}/v1/hf", token=None)
        api.create_repo(f"{NS}/train", repo_type="dataset")
        rows = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
        for split in ("training", "validation"):
            api.upload_file(
                path_or_fileobj=rows,
                path_in_repo=f"{split}/{split}.jsonl",
                repo_id=f"{NS}/train",
                repo_type="dataset",
            )
        self.client.datasets.create(name="train", namespace=NS, files_url=f"hf://datasets/{NS}/train")
        return "train"

    @cached_property
    def cust_config(self) -> str:
        self.client.customization.configs.create(**CUST_CONFIG, name="tiny@v1", namespace=NS)
        return f"{NS}/tiny@v1"

    def start_job(self, output: str, epochs: int = 1):
        return self.client.customization.jobs.create(
            config=self.cust_config,
            dataset={"namespace": NS, "name": self.dataset},
            hyperparameters={"finetuning_type": "all_weights", "epochs": epochs, "batch_size": 8},
            output_model=f"{NS}/{output}",
            namespace=NS,
        )

    @cached_property
    def trained(self):
        job = wait_job(self.url, self.start_job("trained").id, timeout=1800)  # slow on a shared machine
        assert job.status == "completed", job.status_details
        return job

    @cached_property
    def deployed(self) -> str:
        try:  # a first wait that timed out on a loaded machine left it deploying: wait for that one
            self.client.deployment.model_deployments.retrieve("tiny", namespace=NS)
        except NotFoundError:
            self.client.deployment.model_deployments.create(name="tiny", namespace=NS, config={"model": TINY})
        assert self.wait_deployment("tiny") == "ready"
        beir = self.plat.data_dir / "beir" / "tiny"
        (beir / "qrels").mkdir(parents=True, exist_ok=True)
        corpus = [{"_id": f"d{i}", "text": text} for i, text in enumerate(["the cat", "a dog", "the bird"])]
        (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
        (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "cat"}\n')
        (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
        return "tiny"

    def wait_deployment(self, name: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.deployment.model_deployments.retrieve(
                name, namespace=NS
            ).status_details.status
            if status not in ("created", "pending"):
                return status
            time.sleep(0.5)
        raise AssertionError(f"deployment {name} still {status} after {timeout} s")

    def evaluate(self):
        assert self.deployed == "tiny"
        job = self.client.evaluation.jobs.create(
            namespace=NS, config=EVAL_CONFIG, target=retriever_target(self.url, TINY)
        )
        return wait_evaluation(self.client, job.id)

    @cached_property
    def evaluated(self):
        job = self.evaluate()
        assert job.status == "completed", job.status_details
        return job


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, platform_factory, tiny_model) -> World:
    return World(platform_factory(request.param, base_models=[tiny_model]).start())


# ------------------------------------------------------------------- named resources: the five calls

CUST_CONFIG = {
    "target": TINY,
    "training_options": [{"training_type": "sft", "finetuning_type": "all_weights", "num_gpus": 1}],
    "training_precision": "fp32",
    "max_seq_length": 32,
}


@dataclass
class Named:
    """A resource addressed by namespace and name: how to create one and a change to apply."""

    family: str
    body: dict
    change: dict
    namespace_arg: str = "namespace"  # evaluation configs' update calls it path_namespace
    checks: dict = field(default_factory=dict)  # fields the update's answer must carry besides ``change``


NAMED = [
    Named("projects", {"description": "a project"}, {"description": "renamed project"}),
    Named(
        "datasets",
        {"files_url": f"hf://datasets/{NS}/any", "description": "rows"},
        {"description": "more rows", "format": "jsonl", "files_url": f"hf://datasets/{NS}/other"},
    ),
    Named("models", {"base_model": TINY, "description": "a model"}, {"description": "a better model"}),
    Named(
        "customization.targets",
        {"model_uri": "ngc://nvidia/any", "num_parameters": 1000, "precision": "fp32"},
        {"description": "off", "enabled": False, "num_parameters": 2000},
    ),
    Named(
        "customization.configs",
        CUST_CONFIG,
        {
            "max_seq_length": 64,
            "add_training_options": [
                {"training_type": "sft", "finetuning_type": "lora_merged", "num_gpus": 1}
            ],
        },
        checks={"training_options": ["all_weights", "lora_merged"]},
    ),
    Named("evaluation.configs", EVAL_CONFIG, {"description": "tiny task"}, namespace_arg="path_namespace"),
    Named(
        "evaluation.targets",
        retriever_target("http://127.0.0.1:9", TINY),
        {"retriever": retriever_target("http://127.0.0.1:9", TINY, api_key=KEY)["retriever"]},
        checks={"api_key": "****" + KEY[-4:]},
    ),
    Named(
        "deployment.configs",
        {"model": TINY, "nim_deployment": {"image_name": "embedforge", "image_tag": "1"}},
        {"description": "int8 later"},
    ),
]


def _create(world: World, spec: Named, name: str, via_call: bool = False):
    create = world.call if via_call else (lambda m, **kw: _plain(world, m)(**kw))
    return create(f"{spec.family}.create", name=name, namespace=NS, **spec.body)


def _plain(world: World, method: str):
    from sdk_contract import resource_of

    resource, name = resource_of(world.client, method)
    return getattr(resource, name)


def shown(answer) -> dict:
    """An answer as JSON data: the SDK types some answers only as ``object`` (a dict)."""
    return answer if isinstance(answer, dict) else answer.model_dump(mode="json")


def _has_fields(answer, expected: dict) -> None:
    shown_ = shown(answer)
    for key, value in expected.items():
        if key.endswith("_training_options") or key == "retriever":
            continue
        assert shown_[key] == value, key


def _named_checks(answer, spec: Named, name: str) -> None:
    assert (shown(answer)["name"], shown(answer)["namespace"]) == (name, NS)
    _has_fields(answer, {k: v for k, v in spec.body.items() if not isinstance(v, dict | list)})


def _named_case(spec: Named, verb: str):
    def case(world: World) -> None:
        name = fresh(spec.family.split(".")[-1])
        if verb == "create":
            _named_checks(_create(world, spec, name, via_call=True), spec, name)
            return
        _create(world, spec, name)
        ns = {spec.namespace_arg if verb == "update" else "namespace": NS}
        if verb == "retrieve":
            _named_checks(world.call(f"{spec.family}.retrieve", name, **ns), spec, name)
        elif verb == "list":
            page = world.call(f"{spec.family}.list", page_size=1, sort="-created_at")
            assert [(x.name, x.namespace) for x in page.data] == [(name, NS)]
            assert page.pagination.page_size == 1 and page.pagination.total_results >= 1
        elif verb == "update":
            _updated(world, spec, world.call(f"{spec.family}.update", name, **ns, **spec.change), name)
        else:
            world.call(f"{spec.family}.delete", name, namespace=NS)
            with pytest.raises(NotFoundError):
                _plain(world, f"{spec.family}.retrieve")(name, namespace=NS)

    return case


def _updated(world: World, spec: Named, answer, name: str) -> None:
    _has_fields(answer, spec.change)
    again = _plain(world, f"{spec.family}.retrieve")(name, namespace=NS).model_dump(mode="json")
    _has_fields(answer, {k: again[k] for k in spec.change if k in again})
    if "training_options" in spec.checks:
        assert [o["finetuning_type"] for o in again["training_options"]] == spec.checks["training_options"]
    if "api_key" in spec.checks:
        endpoint = again["retriever"]["pipeline"]["query_embedding_model"]["api_endpoint"]
        assert endpoint["api_key"] == spec.checks["api_key"]


CASES = {
    f"{s.family}.{verb}": _named_case(s, verb)
    for s in NAMED
    for verb in ("create", "retrieve", "list", "update", "delete")
}


def case(method: str):
    def register(fn):
        CASES[method] = fn
        return fn

    return register


# --------------------------------------------------------------------------------------- namespaces


@case("namespaces.create")
def _(world):
    ns = fresh("ns")
    made = world.call("namespaces.create", id=ns, description="made")
    assert (made.id, made.description) == (ns, "made")


@case("namespaces.retrieve")
def _(world):
    assert world.call("namespaces.retrieve", NS).id == NS


@case("namespaces.list")
def _(world):
    page = world.call("namespaces.list", filter={"id": NS})
    assert [n.id for n in page.data] == [NS] and page.pagination.total_results == 1


@case("namespaces.update")
def _(world):
    ns = fresh("ns")
    world.client.namespaces.create(id=ns)
    assert world.call("namespaces.update", ns, description="changed").description == "changed"
    assert world.client.namespaces.retrieve(ns).description == "changed"


@case("namespaces.delete")
def _(world):
    ns = fresh("ns")
    world.client.namespaces.create(id=ns)
    world.call("namespaces.delete", ns)
    with pytest.raises(NotFoundError):
        world.client.namespaces.retrieve(ns)


# ------------------------------------------------------------------------------ customization jobs


@case("customization.jobs.create")
def _(world):
    job = world.call(
        "customization.jobs.create",
        config=world.cust_config,
        dataset={"namespace": NS, "name": world.dataset},
        hyperparameters={
            "finetuning_type": "all_weights",
            "epochs": 1,
            "batch_size": 8,
            "learning_rate": 1e-4,
        },
        output_model=f"{NS}/{fresh('out')}",
        namespace=NS,
    )
    assert job.status in ("created", "pending") and job.hyperparameters.learning_rate == 1e-4
    world.client.customization.jobs.cancel(job.id)


@case("customization.jobs.retrieve")
def _(world):
    job = world.call("customization.jobs.retrieve", world.trained.id)
    assert (job.id, job.status) == (world.trained.id, "completed")
    assert job.output_model == f"{NS}/trained@{job.id}"  # NeMo's name of a job's output


@case("customization.jobs.list")
def _(world):
    page = world.call("customization.jobs.list", filter={"status": "completed"}, sort="-created_at")
    assert world.trained.id in [j.id for j in page.data]
    assert {j.status for j in page.data} == {"completed"}


@case("customization.jobs.status")
def _(world):
    status = world.call("customization.jobs.status", world.trained.id)
    assert status.status == "completed"


@case("customization.jobs.container_logs")
def _(world):
    logs = world.call("customization.jobs.container_logs", world.trained.id)
    assert logs.entries["worker"].logs["worker.log"].strip()


@case("customization.jobs.cancel")
def _(world):
    job = world.start_job(fresh("cancelled"), epochs=50)
    cancelled = world.call("customization.jobs.cancel", job.id)
    assert cancelled.id == job.id and cancelled.status in ("cancelling", "cancelled")
    assert wait_job(world.url, job.id).status == "cancelled"


# ------------------------------------------------------------------------------- evaluation jobs


@case("evaluation.jobs.create")
def _(world):
    assert world.deployed == "tiny"
    job = world.call(
        "evaluation.jobs.create", namespace=NS, config=EVAL_CONFIG, target=retriever_target(world.url, TINY)
    )
    assert job.status in ("created", "pending") and job.result is None
    assert wait_evaluation(world.client, job.id).status == "completed"


@case("evaluation.jobs.retrieve")
def _(world):
    job = world.call("evaluation.jobs.retrieve", world.evaluated.id)
    assert job.status == "completed" and job.result == world.evaluated.result


@case("evaluation.jobs.list")
def _(world):
    """NeMo's filter, search (substring, any of a list), created_at range and sort, in SQL."""
    done = world.evaluated
    at = done.created_at.isoformat()
    page = world.call(
        "evaluation.jobs.list",
        filter={"status": "completed", "created_at": {"gte": at, "lte": at}},
        search={"status": ["COMPLETE", "fail"], "namespace": NS[1:5]},
        sort="-created_at",
        page_size=100,
    )
    assert [j.id for j in page.data] == [done.id]
    assert page.filter == {"status": "completed", "created_at": {"gte": at, "lte": at}}
    since = world.call("evaluation.jobs.list", search={"created_at": {"start": at}}, sort="created_at")
    assert since.data[0].id == done.id and all(j.created_at >= done.created_at for j in since.data)
    before = world.call("evaluation.jobs.list", filter={"created_at": {"lt": at}})
    assert done.id not in [j.id for j in before.data]


@case("evaluation.jobs.status")
def _(world):
    status = world.call("evaluation.jobs.status", world.evaluated.id)
    assert status.status == "completed" and status.progress == 100.0


@case("evaluation.jobs.results")
def _(world):
    result = world.call("evaluation.jobs.results", world.evaluated.id)
    assert result.id == world.evaluated.result and result.job == world.evaluated.id
    assert result.tasks["tiny"].metrics["retriever.recall_5"].scores["recall_5"].value == 1.0


def _zip_names(response) -> list[str]:
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.read())) as zf:
        return sorted(zf.namelist())


@case("evaluation.jobs.download_results")
def _(world):
    assert _zip_names(world.call("evaluation.jobs.download_results", world.evaluated.id)) == [
        "results.json",
        "spec.json",
        "worker.log",
    ]


@case("evaluation.jobs.download_logs")
def _(world):
    assert _zip_names(world.call("evaluation.jobs.download_logs", world.evaluated.id)) == ["worker.log"]


@case("evaluation.jobs.delete")
def _(world):
    job = world.evaluate()
    world.call("evaluation.jobs.delete", job.id)
    with pytest.raises(NotFoundError):
        world.client.evaluation.jobs.retrieve(job.id)


@case("evaluation.jobs.cancel")
def _(world):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts and never answers: the job waits
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        job = world.client.evaluation.jobs.create(
            namespace=NS, config=EVAL_CONFIG, target=retriever_target(endpoint, TINY)
        )
        cancelled = shown(world.call("evaluation.jobs.cancel", job.id))  # the SDK types it as object
        assert cancelled["id"] == job.id and cancelled["status"] in ("cancelling", "cancelled")
        assert wait_evaluation(world.client, job.id).status == "cancelled"


@case("evaluation.live")
def _(world):
    assert world.deployed == "tiny"
    live = world.call(
        "evaluation.live", namespace=NS, config=EVAL_CONFIG, target=retriever_target(world.url, TINY)
    )
    assert live.status == "completed"
    assert live.result.tasks["tiny"].metrics["retriever.recall_5"].scores["recall_5"].value == 1.0


# ---------------------------------------------------------------------------- evaluation results

TASKS = {"t": {"metrics": {"retriever.recall_5": {"scores": {"recall_5": {"value": 0.5, "stats": {}}}}}}}


def _new_result(world: World):
    return world.client.evaluation.results.create(job=world.evaluated.id, namespace=NS, tasks=TASKS)


@case("evaluation.results.create")
def _(world):
    made = world.call("evaluation.results.create", job=world.evaluated.id, namespace=NS, tasks=TASKS)
    assert (
        made.job == world.evaluated.id
        and made.tasks["t"].metrics["retriever.recall_5"].scores["recall_5"].value == 0.5
    )


@case("evaluation.results.retrieve")
def _(world):
    made = _new_result(world)
    assert world.call("evaluation.results.retrieve", made.id).tasks == made.tasks


@case("evaluation.results.list")
def _(world):
    page = world.call("evaluation.results.list", filter={"job_id": world.evaluated.id})
    assert world.evaluated.result in [r.id for r in page.data]
    assert {r.job for r in page.data} == {world.evaluated.id}


@case("evaluation.results.update")
def _(world):
    made = _new_result(world)
    assert world.call("evaluation.results.update", made.id, description="checked").description == "checked"
    assert world.client.evaluation.results.retrieve(made.id).description == "checked"


@case("evaluation.results.delete")
def _(world):
    made = _new_result(world)
    world.call("evaluation.results.delete", made.id)
    with pytest.raises(NotFoundError):
        world.client.evaluation.results.retrieve(made.id)


# ----------------------------------------------------------------------------- model deployments


@case("deployment.model_deployments.create")
def _(world):
    name = fresh("deploy")
    made = world.call("deployment.model_deployments.create", name=name, namespace=NS, config={"model": TINY})
    assert (made.name, made.status_details.status) == (name, "created")
    world.client.deployment.model_deployments.delete(name, namespace=NS)


@case("deployment.model_deployments.retrieve")
def _(world):
    got = world.call("deployment.model_deployments.retrieve", world.deployed, namespace=NS)
    assert got.status_details.status == "ready" and got.deployed is True


@case("deployment.model_deployments.list")
def _(world):
    page = world.call(
        "deployment.model_deployments.list", filter={"name": world.deployed}, sort="-created_at"
    )
    assert [(d.name, d.status_details.status) for d in page.data] == [(world.deployed, "ready")]


@case("deployment.model_deployments.update")
def _(world):
    got = world.call(
        "deployment.model_deployments.update", world.deployed, namespace=NS, description="serving"
    )
    assert got.description == "serving" and got.status_details.status == "ready"


@case("deployment.model_deployments.delete")
def _(world):
    name = fresh("deploy")
    world.client.deployment.model_deployments.create(name=name, namespace=NS, config={"model": TINY})
    world.call("deployment.model_deployments.delete", name, namespace=NS)
    gone = world.client.deployment.model_deployments.retrieve(name, namespace=NS)
    assert gone.status_details.status in ("deleting", "deleted")


# ---------------------------------------------------------------------------------------- the tests

METHODS = sdk_methods(NeMoMicroservices(base_url="http://127.0.0.1:9"))


def test_the_walk_finds_the_sdks_resources():
    """The walk is not empty or shallow: it reaches nested resources and the evaluator's own ``live``."""
    assert {"namespaces.create", "customization.jobs.container_logs", "evaluation.live"} <= set(METHODS)
    assert len(METHODS) >= 70


@pytest.mark.parametrize("method", METHODS)
def test_every_sdk_method_is_served(world, method):
    assert method in CASES, f"the SDK's {method} has no contract case: serve it and add one"
    world.call.called.discard(method)
    CASES[method](world)
    assert method in world.call.called, f"the case for {method} did not call it"

"""The studio in a real browser against a real platform: log in, upload datasets (one refused with its
bad row named), start a job on a tiny model and watch its loss curve until it completes, deploy the
model, search a dataset's passages with it, evaluate it from its job's page and the base model from the
evaluations page, compare them, then delete each thing through its confirmed button; the whole flow on
SQLite and on PostgreSQL. And every page shut without the cookie.

The job trains a tiny random BERT offered as an operator's ``--base-model`` folder: seconds, not minutes.
"""

from __future__ import annotations

import json
import re
import shutil

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright
from studio_browser import CHROMIUM, PageChecks, log_in

from domain_fixture import make_domain_fixture

pytestmark = pytest.mark.slow
KEY = "studio-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = "local/tiny-bert"
NS = "studio"
METRICS = ["ndcg_cut_10", "ndcg_cut_5", "recall_10", "recall_5"]  # as the pages sort them
LONG = 900_000  # ms: a job or a deployment on a 2-core machine shared with other work
PAGES = [
    "/studio",
    "/studio/jobs",
    "/studio/jobs/new",
    "/studio/jobs/table?status=running",
    "/studio/jobs/cust-x",
    "/studio/jobs/cust-x/live",
    "/studio/datasets",
    "/studio/datasets/ns/name",
    "/studio/models",
    "/studio/deployments",
    "/studio/deployments/ns/name",
    "/studio/deployments/ns/name/live",
    "/studio/evaluations",
    "/studio/evaluations/compare?ids=x",
    "/studio/evaluations/eval-x",
    "/studio/evaluations/eval-x/live",
]


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    data = make_domain_fixture(tmp_path_factory.mktemp("domain"), train_pairs=48, val_pairs=8, test_queries=8)
    rows = data["train"].read_text().splitlines()[:4]
    broken = json.loads(rows[2])
    broken["pos_doc"] = 7
    bad = data["root"] / "broken.jsonl"
    bad.write_text("\n".join([*rows[:2], json.dumps(broken), rows[3]]) + "\n")
    return {**data, "bad": bad}


def studio_platform(platform_factory, tiny_model, domain, database: str):
    proc = platform_factory(database, api_key=KEY, base_models=[tiny_model]).start()
    shutil.copytree(domain["test_beir"], proc.data_dir / "beir" / "machines")
    return proc


@pytest.fixture(scope="module")
def plat(platform_factory, tiny_model, domain):
    return studio_platform(platform_factory, tiny_model, domain, "sqlite")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.mark.parametrize("path", PAGES)
def test_without_the_cookie_every_studio_page_redirects_to_login(plat, path):
    bearer = {"Authorization": f"Bearer {KEY}"}  # the API's key opens the API, not the studio
    for headers in ({}, bearer):
        r = httpx.get(plat.url + path, headers=headers)
        assert r.status_code == 303, r.text
        assert r.headers["location"].startswith("/studio/login?next=%2Fstudio")
    assert "Log in" in httpx.get(plat.url + "/studio/login").text


def test_a_wrong_key_is_refused_the_right_one_returns_to_the_page_asked_for_and_log_out_ends_it(plat, page):
    page.goto(plat.url + "/studio/datasets")
    expect(page).to_have_url(plat.url + "/studio/login?next=%2Fstudio%2Fdatasets")
    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the platform's API key.")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(plat.url + "/studio/datasets")
    expect(page.get_by_role("heading", level=1)).to_have_text("Datasets")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.goto(plat.url + "/studio/models")  # the cookie is gone
    expect(page).to_have_url(plat.url + "/studio/login?next=%2Fstudio%2Fmodels")


def test_without_a_key_the_studio_opens_without_a_login(platform_factory, page):
    open_platform = platform_factory("sqlite").start()
    page.goto(open_platform.url + "/studio")
    expect(page.get_by_role("heading", level=1)).to_have_text("Customization jobs")
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)
    page.get_by_role("link", name="Models").click()
    expect(page.locator("#models tbody")).to_contain_text("sentence-transformers/all-MiniLM-L6-v2")


def upload(page, name: str, split: str, *files) -> None:
    page.goto(page.url.split("/studio")[0] + "/studio/datasets")
    form = page.locator("#upload")
    form.get_by_label("Namespace").fill(NS)
    form.get_by_label("Dataset name").fill(name)
    form.get_by_label("Split").select_option(split)
    form.get_by_label("JSONL files").set_input_files([str(f) for f in files])
    form.get_by_role("button", name="Upload").click()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_studio_from_upload_to_evaluation_and_deletes(
    database, platform_factory, tiny_model, page, domain
):
    """The whole flow on each store; the pictures in docs/studio come from the SQLite run."""
    plat = studio_platform(platform_factory, tiny_model, domain, database)
    shots = PageChecks(save=database == "sqlite")
    page.goto(plat.url + "/studio/jobs")
    shots.take(page, "login")
    log_in(page, plat.url, KEY)
    expect(page.get_by_role("heading", level=1)).to_have_text("Customization jobs")
    upload_datasets(page, plat.url, domain, shots)
    job_url = train(page, shots)
    deploy_and_try(page, plat.url, domain, shots)
    tuned, base = evaluate_from_the_job_and_the_evaluations_pages(page, plat.url, job_url, shots)
    compare(page, base, tuned, shots)
    delete_everything(page, plat.url, job_url, base, tuned)
    assert shots.violations == {}


def upload_datasets(page, url: str, domain, shots: PageChecks) -> None:
    upload(page, "broken", "training", domain["train"], domain["bad"])
    errors = page.locator("#upload-errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.locator("td")).to_have_text(
        ["broken.jsonl", "3", "pos_doc", "must be a string, got number"]
    )
    shots.take(page, "dataset-upload-error")
    assert httpx.get(url + f"/v1/datasets/{NS}/broken", headers=AUTH).status_code == 404

    upload(page, "machines", "training", domain["train"])
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Dataset {NS}/machines")
    upload(page, "machines", "validation", domain["val"])
    expect(page.locator("#files tbody td:first-child")).to_have_text(
        ["training/train.jsonl", "validation/val.jsonl"]
    )
    shots.take(page, "dataset")
    page.get_by_role("link", name="Datasets").click()
    expect(page.get_by_role("link", name=f"{NS}/machines")).to_be_visible()
    shots.take(page, "datasets")


def train(page, shots: PageChecks) -> str:
    """Start a 2-epoch job from the form, watch it complete, then find it in the list; its page's URL."""
    page.get_by_role("link", name="Customization jobs").click()
    page.get_by_role("link", name="Start a job").click()
    expect(page.get_by_label("Epochs")).to_have_value("1")  # the API's defaults
    fill_job_form(page, "tiny-machines", f"{NS}/machines", "2")
    shots.take(page, "job-new")
    page.get_by_role("button", name="Start job").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Job tiny-machines")
    job_url = page.url
    expect(page.locator("#job-status")).to_have_text("completed", timeout=LONG)  # swapped in by the poll
    expect(page.locator("#loss-chart svg polyline[data-series='train_loss']")).to_have_count(1)
    expect(page.locator("#loss-chart svg polyline[data-series='val_loss']")).to_have_count(1)
    expect(page.locator("#log")).to_contain_text("INFO")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    page.reload()  # the completed page offers to deploy the model before it can be evaluated
    expect(
        page.get_by_role("button", name=re.compile(r"^Deploy studio\/tiny-machines@cust-"))
    ).to_be_visible()
    shots.take(page, "job")

    page.get_by_role("link", name="Customization jobs").click()
    row = page.locator("table.jobs tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td")).to_contain_text(["tiny-machines", "completed", TINY, f"{NS}/machines"])
    expect(row.locator("td").nth(6)).to_have_text("2 / 2")
    shots.take(page, "jobs")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(row).to_have_text("No jobs match.")
    page.get_by_label("Status").select_option("")
    page.get_by_label("Search").fill("MACHINES")
    page.get_by_role("button", name="Filter").click()
    expect(row.locator("a")).to_have_text("tiny-machines")
    page.get_by_label("in", exact=True).select_option(label="base model")
    page.get_by_label("Search").fill("tiny")
    page.get_by_role("button", name="Filter").click()
    expect(row.locator("a")).to_have_text("tiny-machines")
    page.get_by_label("Search").fill("machines")  # not in the base model's name
    page.get_by_role("button", name="Filter").click()
    expect(row).to_have_text("No jobs match.")
    return job_url


def deploy_and_try(page, url: str, domain, shots: PageChecks) -> None:
    page.get_by_role("link", name="Models").click()
    model = page.locator("#models tbody tr", has_text="tiny-machines@cust-")
    expect(model.locator("td").nth(2)).to_have_text("tiny-machines")
    expect(model.locator("td").nth(3)).to_have_text(f"{NS}/machines")
    shots.take(page, "models")
    model.get_by_role("button", name=re.compile("^Deploy")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Deployment {NS}/tiny-machines")
    expect(page.locator("#deployment-status")).to_have_text("ready", timeout=LONG)

    page.get_by_label("Query").fill(domain_query(domain))
    page.get_by_label("Passages of").select_option(f"{NS}/machines")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(5)
    scores = [float(s) for s in results.locator("td:nth-child(2)").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    passages = results.locator("td:nth-child(3)").all_inner_texts()
    for passage, score in zip(passages, scores, strict=True):  # each the cosine the gateway's vectors give
        assert cosine(url, f"{NS}/tiny-machines", domain_query(domain), passage) == pytest.approx(
            score, abs=1e-4
        )
    shots.take(page, "deployment")


def evaluate_from_the_job_and_the_evaluations_pages(page, url: str, job_url: str, shots) -> tuple[str, str]:
    """The tuned model evaluated from its job's page, the base model from the evaluations page."""
    page.goto(job_url)
    tuned = start_evaluation(page)
    assert_per_query_scores_average_to_the_results(url, tuned)
    expect(page.locator("#metrics tbody td:nth-child(2)")).to_have_text(METRICS)
    expect(page.locator("figure svg rect.bar")).to_have_count(4)
    shots.take(page, "evaluation")

    page.get_by_role("link", name="Models").click()
    page.locator("#models tbody tr", has_text=TINY).get_by_role("button", name=re.compile("^Deploy")).click()
    expect(page.locator("#deployment-status")).to_have_text("ready", timeout=LONG)
    page.get_by_role("link", name="Evaluations").click()
    expect(page.get_by_label("Deployed model").locator("option")).to_have_text([TINY, f"{NS}/tiny-machines"])
    page.get_by_label("Deployed model").select_option(TINY)
    base = start_evaluation(page)
    expect(page.locator("main p").first).to_contain_text(TINY)
    return tuned, base


def compare(page, base: str, tuned: str, shots: PageChecks) -> None:
    page.get_by_role("link", name="Evaluations").click()
    shots.take(page, "evaluations")
    for job_id in (base, tuned):
        page.get_by_label(f"compare {job_id}").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.locator("table.compare thead th")).to_contain_text(["Metric", TINY, f"{NS}/tiny-machines"])
    compared = page.locator("table.compare tbody tr")
    expect(compared.locator("th")).to_have_text(METRICS)
    paired = re.compile(
        r"\([+-]\d\.\d{4}\)\s+95% CI \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\], p = [\d.e-]+, 8 queries"
    )
    expect(compared.locator("td:nth-child(3)")).to_have_text([paired] * len(METRICS))
    shots.take(page, "compare")


def click_delete(page, name: str, accept: bool = True) -> list[str]:
    """Press a delete button and answer its confirmation; the questions asked."""
    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", answer)
    page.get_by_role("button", name=name).click()
    return asked


def delete_everything(page, url: str, job_url: str, base: str, tuned: str) -> None:
    """Each delete button asks first and goes through the API: evaluation (and its result), deployment,
    model, job (refused while its model is registered) and dataset (its files too)."""
    page.goto(f"{url}/studio/evaluations/{base}")
    result = httpx.get(f"{url}/v1/evaluation/jobs/{base}", headers=AUTH).json()["result"]
    asked = click_delete(page, re.compile("^Delete evaluation"), accept=False)
    assert asked == [f"Delete {page_name(page)}? This cannot be undone."]
    expect(page.get_by_role("heading", level=1)).to_contain_text("Evaluation")  # nothing sent
    click_delete(page, re.compile("^Delete evaluation"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Evaluations")
    expect(page.locator("#evaluations tbody tr")).to_have_count(1)
    assert httpx.get(f"{url}/v1/evaluation/jobs/{base}", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/v1/evaluation/results/{result}", headers=AUTH).status_code == 404

    page.goto(job_url)
    click_delete(page, re.compile("^Delete job"))
    expect(page.locator("ul.error")).to_contain_text("delete it first")  # its model is registered
    page.goto(f"{url}/studio/deployments/{NS}/tiny-machines")
    click_delete(page, f"Delete deployment {NS}/tiny-machines")
    expect(page.get_by_role("heading", level=1)).to_have_text("Deployments")
    page.get_by_role("link", name="Models").click()
    click_delete(page, re.compile(rf"^Delete {NS}\/tiny-machines@cust-"))  # "/" escaped for Playwright
    expect(page.locator("#models tbody tr", has_text="tiny-machines")).to_have_count(0)
    page.goto(job_url)
    click_delete(page, re.compile("^Delete job"))
    expect(page.locator("table.jobs tbody tr")).to_have_text("No jobs.")
    assert (
        httpx.get(job_url.replace("/studio/jobs", "/v1/customization/jobs"), headers=AUTH).status_code == 404
    )

    page.goto(f"{url}/studio/datasets/{NS}/machines")
    click_delete(page, f"Delete dataset {NS}/machines")
    expect(page.get_by_role("link", name=f"{NS}/machines")).to_have_count(0)
    assert httpx.get(f"{url}/v1/datasets/{NS}/machines", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/v1/hf/api/datasets/{NS}/machines", headers=AUTH).status_code == 404


def page_name(page) -> str:
    return page.get_by_role("heading", level=1).inner_text().removeprefix("Evaluation ")


def assert_per_query_scores_average_to_the_results(url: str, job_id: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    results = httpx.get(f"{url}/v1/evaluation/jobs/{job_id}/results", headers=auth).json()
    per_query = httpx.get(f"{url}/v1/evaluation/jobs/{job_id}/per-query-scores", headers=auth).json()
    for metric, scores in per_query["tasks"]["machines"].items():
        assert len(scores) == 8  # the held-out queries
        mean = results["tasks"]["machines"]["metrics"][f"retriever.{metric}"]["scores"][metric]["value"]
        assert sum(scores.values()) / len(scores) == pytest.approx(mean)
    assert "per_query" not in results["tasks"]["machines"]  # NeMo's results keep their shape


def start_evaluation(page) -> str:
    """Start an evaluation with the page's form (the held-out BEIR folder); wait for its metrics."""
    page.get_by_label("BEIR task data").fill("file://machines/")
    page.get_by_role("button", name="Start evaluation").click()
    expect(page.locator("#evaluation-status")).to_have_text("completed", timeout=LONG)
    return page.url.rsplit("/", 1)[-1]


def cosine(url: str, model: str, query: str, passage: str) -> float:
    def vector(text: str, input_type: str) -> np.ndarray:
        body = {"model": model, "input": [text], "input_type": input_type, "truncate": "END"}
        r = httpx.post(url + "/nim/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text
        v = np.array(r.json()["data"][0]["embedding"])
        return v / np.linalg.norm(v)

    return float(vector(query, "query") @ vector(passage, "passage"))


def domain_query(domain) -> str:
    return json.loads(domain["train"].read_text().splitlines()[0])["query"]


def fill_job_form(page, name: str, dataset: str, epochs: str, learning_rate: str = "0.0001") -> None:
    """Fill the start-a-job form on the page for the tiny model; the caller submits it."""
    page.get_by_label("Output model name").fill(name)
    page.get_by_label("Namespace").fill(NS)
    page.get_by_label("Target (base model)").select_option(TINY)
    page.get_by_label("Dataset").select_option(dataset)
    page.get_by_label("Epochs").fill(epochs)
    page.get_by_label("Batch size").fill("8")
    page.get_by_label("Learning rate").fill(learning_rate)
    page.get_by_label("Max sequence length").fill("32")


def start_job(page, name: str, dataset: str, epochs: str, learning_rate: str = "0.0001") -> None:
    page.goto(page.url.split("/studio")[0] + "/studio/jobs/new")
    fill_job_form(page, name, dataset, epochs, learning_rate)
    page.get_by_role("button", name="Start job").click()


def test_a_refused_job_request_is_shown_on_the_form_with_its_field(plat, page, domain):
    log_in(page, plat.url, KEY)
    upload(page, "refusals", "training", domain["train"])
    start_job(page, "never", f"{NS}/refusals", "1", learning_rate="-1")
    expect(page.get_by_role("alert")).to_contain_text(
        "hyperparameters.learning_rate: Input should be greater than 0"
    )
    expect(page.get_by_label("Output model name")).to_have_value("never")  # the form keeps what was typed
    page.get_by_label("Learning rate").fill("fast")
    page.get_by_role("button", name="Start job").click()
    expect(page.get_by_role("alert")).to_contain_text("not a number")


def test_the_list_follows_a_job_to_running_it_is_cancelled_and_the_list_sorts_by_name(plat, page, domain):
    log_in(page, plat.url, KEY)
    upload(page, "cancels", "training", domain["train"])
    for name in ("b-cancel", "a-cancel"):
        start_job(page, name, f"{NS}/cancels", "500")
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {name}")
        page.goto(plat.url + f"/studio/jobs?q={name}")
        row = page.locator("table.jobs tbody tr")
        expect(row.locator(".status")).to_have_text("running", timeout=LONG)  # the list refreshes itself
        row.get_by_role("link", name=name).click()
        page.get_by_role("button", name="Cancel job").click()
        expect(page.locator("#job-status")).to_have_text("cancelled", timeout=LONG)
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)

    page.goto(plat.url + "/studio/jobs?status=cancelled")
    names = page.locator("table.jobs tbody tr td:first-child a")
    page.get_by_role("link", name="Name / ID").click()
    expect(names).to_have_text(["a-cancel", "b-cancel"])
    page.get_by_role("link", name="Name / ID").click()
    expect(names).to_have_text(["b-cancel", "a-cancel"])

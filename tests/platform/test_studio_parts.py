"""The studio's pure parts, without a server: where a login may send the browser, the SVG charts, the
form-to-request mapping, the compare table, the try-it corpus and the log tail's cleaning."""

from __future__ import annotations

import re

import pytest

from embedforge.platform.studio.charts import bar_chart, line_chart
from embedforge.platform.studio.datasets import field_problems
from embedforge.platform.studio.deployments import row_passages
from embedforge.platform.studio.evaluations import comparison
from embedforge.platform.studio.jobs import ListQuery, job_request, readable
from embedforge.platform.studio.login import safe_next


@pytest.mark.parametrize(
    ("asked", "sent_to"),
    [
        ("/studio/jobs/cust-1?x=1", "/studio/jobs/cust-1?x=1"),
        ("https://elsewhere.example/studio/", "/studio/jobs"),
        ("//elsewhere.example/studio/", "/studio/jobs"),
        ("/v1/models", "/studio/jobs"),
        (None, "/studio/jobs"),
    ],
)
def test_a_login_only_ever_returns_to_a_studio_page(asked, sent_to):
    assert safe_next(asked) == sent_to


def test_the_line_chart_draws_each_series_and_escapes_every_text():
    svg = str(line_chart({"train<b>": [(1, 3.0), (2, 2.0), (3, 1.0)], "val": [(3, 2.5)]}, "loss & <more>"))
    assert svg.count("<polyline") == 2
    assert 'data-series="train&lt;b&gt;" data-points="3"' in svg
    assert "<title>loss &amp; &lt;more&gt;</title>" in svg and "<b>" not in svg
    first = re.search(r'\spoints="([^"]+)"', svg).group(1).split()
    ys = [float(p.split(",")[1]) for p in first]
    assert ys == sorted(ys)  # falling loss: each point lower on the chart, i.e. a larger y in SVG


def test_a_chart_without_points_says_so():
    assert "no points yet" in line_chart({}, "loss")
    assert "nothing to show" in bar_chart([], "metrics")


def test_bars_are_as_long_as_their_values():
    svg = str(bar_chart([("ndcg", 0.5), ("recall", 1.0)], "metrics"))
    widths = [float(w) for w in re.findall(r'class="bar"[^>]* width="([0-9.]+)"', svg)]
    assert widths[1] == pytest.approx(2 * widths[0])


def test_the_job_form_becomes_nemos_job_request():
    form = {
        "name": "m",
        "namespace": "ns",
        "target": "local/tiny-bert",
        "dataset": "ns/data",
        "finetuning_type": "lora_merged",
        "epochs": "3",
        "batch_size": "16",
        "learning_rate": "0.0002",
        "max_seq_length": "64",
    }
    body = job_request(form)
    assert body["config"]["target"] == "local/tiny-bert"
    assert body["config"]["training_options"] == [{"finetuning_type": "lora_merged", "micro_batch_size": 16}]
    assert body["hyperparameters"] == {
        "finetuning_type": "lora_merged",
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 0.0002,
    }
    assert (body["dataset"], body["output_model"]) == ("ns/data", "ns/m")
    with pytest.raises(ValueError):
        job_request({**form, "epochs": "many"})


def test_the_list_asks_the_api_for_one_page_searched_in_a_known_field_without_loss_curves():
    params = ListQuery(status="failed", q="pumps", field="dataset", sort="-name", page=3).api_params()
    assert params == {
        "sort": "-name",
        "metrics": "false",
        "filter[status]": "failed",
        "search[dataset]": "pumps",
        "page": 3,
        "page_size": 50,
    }
    unknown = ListQuery(q="x", field="status_details.metrics", sort="bogus", page=0).api_params()
    assert unknown["search[name]"] == "x" and unknown["sort"] == "created_at" and unknown["page"] == 1


def _eval(job_id: str, url: str) -> dict:
    return {"id": job_id, "config": {"tasks": {"t": {"dataset": {"files_url": url}}}}}


def test_compare_lines_up_jobs_on_the_same_dataset_with_differences_to_the_first():
    jobs = [_eval("a", "file://x/"), _eval("b", "file://x/"), _eval("c", "file://y/")]
    scores = {
        "a": [{"task": "t", "metric": "ndcg_cut_10", "value": 0.5}],
        "b": [{"task": "t", "metric": "ndcg_cut_10", "value": 0.625}],
        "c": [{"task": "t", "metric": "ndcg_cut_10", "value": 0.9}],
    }
    x, y = comparison(jobs, scores, {})
    assert [j["id"] for j in x["jobs"]] == ["a", "b"] and [j["id"] for j in y["jobs"]] == ["c"]
    assert x["diffs"]["ndcg_cut_10"] == {"b": {"diff": 0.125}}  # no per-query scores: no test
    assert y["diffs"]["ndcg_cut_10"] == {}


def test_compare_tests_a_difference_on_the_queries_both_jobs_scored():
    jobs = [_eval("a", "file://x/"), _eval("b", "file://x/")]
    scores = {
        "a": [{"task": "t", "metric": "ndcg_cut_10", "value": 0.25}],
        "b": [{"task": "t", "metric": "ndcg_cut_10", "value": 0.75}],
    }
    base = {f"q{i}": 0.0 if i % 2 else 0.5 for i in range(20)}
    better = {q: v + 0.5 for q, v in base.items()}  # every query gains 0.5
    per_query = {"a": {"t": {"ndcg_cut_10": base}}, "b": {"t": {"ndcg_cut_10": better}}}
    (group,) = comparison(jobs, scores, per_query)
    test = group["diffs"]["ndcg_cut_10"]["b"]
    assert test["diff"] == 0.5 and test["n"] == 20 and test["significant"]
    assert test["ci95"] == pytest.approx([0.5, 0.5]) and test["p"] < 0.001


def test_try_it_reads_every_passage_form_of_a_training_row():
    row = {"query": "q", "pos_doc": "one", "neg_doc": [{"text": "two"}, "three", " "]}
    assert row_passages(row) == ["one", "two", "three"]
    assert row_passages({"query": "q", "pos_doc": ["a", "b"]}) == ["a", "b"]


def test_the_log_tail_keeps_what_a_terminal_would_show():
    assert readable("\x1b[A 10%|#  | 1/10\r100%|###| 10/10\r") == "100%|###| 10/10"
    assert readable("2026 INFO saved") == "2026 INFO saved"


@pytest.mark.parametrize(
    ("namespace", "name", "split", "fields"),
    [
        ("ns", "pumps.v2", "training", []),
        ("..", "pumps", "validation", ["namespace"]),
        ("ns", "a/b", "training", ["name"]),
        ("ns", "", "test", ["name", "split"]),
    ],
)
def test_an_upload_form_names_its_bad_fields_before_any_call(namespace, name, split, fields):
    assert [p["field"] for p in field_problems(namespace, name, split)] == fields

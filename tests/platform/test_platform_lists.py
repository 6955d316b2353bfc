"""List endpoints page, filter and sort in the database, on SQLite and PostgreSQL: pages partition the
list, ``created_at`` sorts as a time and a numeric field as a number, missing values last."""

from __future__ import annotations

import httpx
import pytest
from tutorial import client_for

NS = "lists-ns"
LIMITS = [7, 1200, 35, None, 300, 5, 90, 41, 2, 1000, 64, 8]  # "1000" < "2" < "300" as strings
NAMES = [f"set-{i:02d}" for i in range(len(LIMITS))]


@pytest.fixture(scope="module")
def listed(platform):
    client = client_for(platform.url)
    for name, limit in zip(NAMES, LIMITS, strict=True):
        extra = {} if limit is None else {"limit": limit}
        client.datasets.create(name=name, namespace=NS, files_url=f"hf://datasets/{NS}/{name}", **extra)
    client.datasets.create(name="elsewhere", namespace="other-ns", files_url="hf://datasets/o/e", limit=3)
    return platform


def _all_pages(url: str, sort: str, page_size: int = 5) -> list[dict]:
    seen, page = [], 1
    while True:
        params = {"filter[namespace]": NS, "sort": sort, "page": page, "page_size": page_size}
        body = httpx.get(f"{url}/v1/datasets", params=params).json()
        seen += body["data"]
        assert body["pagination"]["total_results"] == len(NAMES)
        if page >= body["pagination"]["total_pages"]:
            return seen
        page += 1


def test_pages_partition_the_list(listed):
    body = httpx.get(
        f"{listed.url}/v1/datasets",
        params={"filter[namespace]": NS, "sort": "name", "page": 3, "page_size": 5},
    ).json()
    assert [d["name"] for d in body["data"]] == NAMES[10:]
    assert body["pagination"] == {
        "page": 3,
        "page_size": 5,
        "current_page_size": 2,
        "total_pages": 3,
        "total_results": 12,
    }
    assert [d["name"] for d in _all_pages(listed.url, "name")] == NAMES


def test_created_at_sorts_as_a_time(listed):
    assert [d["name"] for d in _all_pages(listed.url, "-created_at")] == NAMES[::-1]
    assert [d["name"] for d in _all_pages(listed.url, "created_at", page_size=4)] == NAMES


def test_a_numeric_field_sorts_as_a_number_missing_last(listed):
    numbers = sorted(v for v in LIMITS if v is not None)
    assert [d["limit"] for d in _all_pages(listed.url, "limit")] == [*numbers, None]
    assert [d["limit"] for d in _all_pages(listed.url, "-limit")] == [*numbers[::-1], None]


def test_filters_select_rows_in_the_database(listed):
    client = client_for(listed.url)
    one = client.datasets.list(filter={"namespace": NS, "name": "set-03"})
    assert [d.name for d in one.data] == ["set-03"] and one.pagination.total_results == 1
    by_number = httpx.get(f"{listed.url}/v1/datasets", params={"filter[limit]": "1200"}).json()
    assert [d["name"] for d in by_number["data"]] == ["set-01"]
    page = client.datasets.list(filter={"namespace": NS}, sort="-name", page=2, page_size=5)
    assert [d.name for d in page.data] == NAMES[::-1][5:10]


def _names(url: str, params: list[tuple[str, str]]) -> list[str]:
    body = httpx.get(f"{url}/v1/datasets", params=[("filter[namespace]", NS), ("sort", "name"), *params])
    assert body.status_code == 200, body.text
    return [d["name"] for d in body.json()["data"]]


def test_search_matches_substrings_in_the_database_any_case_all_fields(listed):
    client = client_for(listed.url)
    found = client.datasets.list(filter={"namespace": NS}, search={"name": "ET-0"}, sort="name")
    assert [d.name for d in found.data] == NAMES[:10] and found.pagination.total_results == 10
    assert _names(listed.url, [("search[name]", "-1"), ("search[files_url]", "set-11")]) == ["set-11"]
    assert _names(listed.url, [("search[name]", "03"), ("search[name]", "10")]) == ["set-03", "set-10"]
    assert _names(listed.url, [("search[name]", "%")]) == []  # a wildcard is a character like any other
    assert _names(listed.url, [("search[name]", "")]) == NAMES  # an empty box searches nothing


def test_search_reaches_into_the_body_by_a_dotted_path(platform):
    client = client_for(platform.url)
    for name, team in (("tagged-a", "Search Quality"), ("tagged-b", "serving")):
        client.datasets.create(
            name=name, namespace="dotted", files_url="hf://datasets/d/x", custom_fields={"team": team}
        )
    params = {"filter[namespace]": "dotted", "search[custom_fields.team]": "quality"}
    body = httpx.get(f"{platform.url}/v1/datasets", params=params).json()
    assert [d["name"] for d in body["data"]] == ["tagged-a"]
    assert body["search"] == {"custom_fields.team": ["quality"]}


def test_a_filter_given_several_times_selects_any_of_its_values(listed):
    assert _names(listed.url, [("filter[name]", "set-07"), ("filter[name]", "set-02")]) == [
        "set-02",
        "set-07",
    ]
    assert _names(listed.url, [("filter[name]", "set-07"), ("filter[name]", "set-7")]) == ["set-07"]


def test_a_true_or_false_body_field_filters_and_searches_as_the_words_on_both_engines(platform):
    client = client_for(platform.url)
    for name, flag in (("flag-on", True), ("flag-off", False), ("flag-text", "true"), ("flag-one", 1)):
        client.datasets.create(
            name=name, namespace="flags", files_url="hf://datasets/f/x", custom_fields={"reviewed": flag}
        )

    def names(params: dict) -> list[str]:
        body = httpx.get(
            f"{platform.url}/v1/datasets", params={"filter[namespace]": "flags", "sort": "name", **params}
        )
        assert body.status_code == 200, body.text
        return [d["name"] for d in body.json()["data"]]

    assert names({"filter[custom_fields.reviewed]": "true"}) == ["flag-on", "flag-text"]
    assert names({"filter[custom_fields.reviewed]": "false"}) == ["flag-off"]
    assert names({"filter[custom_fields.reviewed]": "1"}) == ["flag-one"]
    assert names({"search[custom_fields.reviewed]": "fal"}) == ["flag-off"]

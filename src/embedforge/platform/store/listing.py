"""NeMo list queries as SQL: ``filter[field]=value`` (repeated: any of the values), ``search[field]=text``, ``sort=[-]field``, ``page`` /
``page_size``, answered as ``{object, data, pagination, sort, filter, search}``.

Filtering, counting, sorting and paging run in the database (the same SQLAlchemy expressions on SQLite
and PostgreSQL), so a page costs one page of rows, not the whole table. A field is a column where the
row has one (typed: ``created_at`` sorts as a time) and a top-level field of the JSON body otherwise,
compared as text and sorted by the type its values have (numbers as numbers). Missing values sort last;
ties break by id, so pages never overlap. A search is NeMo's substring match, case-insensitive; several
fields must all match, a field given several times matches any of its texts; a field may be a dotted path
into the body (``config_snapshot.base_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Select, String, cast, func, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, defer, with_expression

from embedforge.platform.errors import BadRequest


def list_query(params: dict[str, str]) -> tuple[dict[str, str], str, int, int]:
    """Split a NeMo list query string into (filters, sort, page, page_size)."""
    filters = {
        k[len("filter[") : -1]: v for k, v in params.items() if k.startswith("filter[") and k.endswith("]")
    }
    sort = params.get("sort") or "-created_at"
    try:
        page = max(1, int(params.get("page") or 1))
        page_size = min(1000, max(1, int(params.get("page_size") or 100)))
    except ValueError as err:
        raise BadRequest(f"page and page_size must be integers: {err}") from err
    return filters, sort, page, page_size


def search_terms(params: dict) -> dict[str, list[str]]:
    """``search[field]=text`` of a NeMo list query as {field: texts} (a repeated field: any may match)."""
    terms = {}
    for key, value in params.items():
        texts = [t for t in ([value] if isinstance(value, str) else value) if t.strip()]
        if key.startswith("search[") and key.endswith("]") and texts:
            terms[key[len("search[") : -1]] = texts
    return terms


def _searched(query: Select, model, columns: dict, terms: dict[str, list[str]]) -> Select:
    """Rows where every searched field contains one of its texts, case-insensitively."""
    for name, texts in terms.items():
        text_of = func.lower(cast(_field(model, name, columns), String))
        query = query.where(or_(*(text_of.contains(t.lower(), autoescape=True) for t in texts)))
    return query


def lighter(session: Session, query: Select, model, key: str) -> Select:
    """``query`` loading ``model.details`` without its top-level ``key``: the database drops it, so its
    bytes are neither decoded nor sent (a job's loss curves, in a list that shows none)."""
    if session.get_bind().dialect.name == "postgresql":
        expression = cast(model.details, JSONB).op("-")(key)
    else:
        expression = func.json_remove(model.details, f"$.{key}")
    lighter_details = with_expression(model.lighter_details, type_coerce(expression, JSON))
    return query.options(defer(model.details), lighter_details)


def _field(model, name: str, columns: dict, typed: bool = False, sample: Any = None):
    """The SQL expression for ``name``: its column, or the body field (as text, or as its type)."""
    if name in columns:
        return columns[name]
    value = model.body[tuple(name.split("."))] if "." in name else model.body[name]
    if typed and isinstance(sample, bool):
        return value.as_boolean()
    if typed and isinstance(sample, int | float):
        return value.as_float()
    return value.as_string()


def _sample(session: Session, query: Select, model, name: str) -> Any:
    """A non-null value the field has among the query's rows: it decides how the field sorts."""
    value = model.body[name].as_string()
    row = session.scalars(query.where(value.is_not(None)).limit(1)).first()
    return None if row is None else row.body.get(name)


def page(
    session: Session,
    query: Select,
    model,
    params: dict[str, str],
    public: Callable[[Any], dict],
    columns: dict | None = None,
) -> dict[str, Any]:
    """One page of ``query``'s rows (of ``model``, whose ``columns`` are addressable by name) as NeMo's list."""
    columns = {c: getattr(model, c) for c in ("id", "namespace", "name", "created_at", "updated_at")} | (
        columns or {}
    )
    filters, sort, number, size = list_query(params)
    for name, value in filters.items():  # a field given several times: any of its values
        values = [value] if isinstance(value, str) else value
        query = query.where(cast(_field(model, name, columns), String).in_(values))
    terms = search_terms(params)
    query = _searched(query, model, columns, terms)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    name = sort.lstrip("-")
    sample = None if name in columns else _sample(session, query, model, name)
    key = _field(model, name, columns, typed=True, sample=sample)
    order = key.desc() if sort.startswith("-") else key.asc()
    rows = session.scalars(
        query.order_by(order.nulls_last(), model.id).limit(size).offset((number - 1) * size)
    )
    data = [public(row) for row in rows]
    return {
        "object": "list",
        "data": data,
        "pagination": {
            "page": number,
            "page_size": size,
            "current_page_size": len(data),
            "total_pages": max(1, -(-total // size)),
            "total_results": total,
        },
        "sort": sort,
        "filter": filters,
        "search": terms,
    }

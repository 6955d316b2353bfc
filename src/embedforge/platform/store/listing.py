"""NeMo list queries as SQL: ``filter[field]=value``, ``filter[field][gte]=...`` (eq, gt, gte, lt, lte),
``search[field]=a,b`` (case-insensitive substring, any of the values), ``search[field][start|end]=...``
(a range), ``sort=[-]field``, ``page`` / ``page_size``, answered as ``{object, data, pagination, sort,
filter}``. Conditions on different fields must all hold.

Filtering, counting, sorting and paging run in the database (the same SQLAlchemy expressions on SQLite
and PostgreSQL), so a page costs one page of rows, not the whole table; the page and the total come from
one statement (a window count), so they agree even while other clients write. A field is a column where the
row has one (typed: ``created_at`` sorts as a time) and a top-level field of the JSON body otherwise,
compared as text and sorted by the type its values have (numbers as numbers). Missing values sort last;
ties break by id, so pages never overlap.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, String, cast, func, or_, select
from sqlalchemy.orm import Session

from embedforge.platform.errors import BadRequest

_CONDITION = re.compile(r"^(filter|search)\[([^\[\]]+)\](?:\[([a-z]+)\])?$")
_OPERATORS = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_RANGE = {"start": "gte", "end": "lte"}  # search[field][start|end]
TIMES = ("created_at", "updated_at")


def conditions(params: dict[str, str]) -> list[tuple[str, str, str | None, str]]:
    """The query's (filter|search, field, operator or None, value), in NeMo's bracket syntax."""
    found = []
    for key, value in params.items():
        match = _CONDITION.match(key)
        if match:
            kind, name, op = match.groups()
            op = _RANGE.get(op, op) if kind == "search" and op else op
            if op is not None and op not in _OPERATORS:
                raise BadRequest(f"{key}: unknown operator '{op}' (eq, gt, gte, lt, lte; start, end)")
            found.append((kind, name, op, value))
    return found


def list_query(params: dict[str, str]) -> tuple[dict[str, Any], str, int, int]:
    """Split a NeMo list query string into (filters as given, sort, page, page_size)."""
    filters: dict[str, Any] = {}
    for kind, name, op, value in conditions(params):
        if kind == "filter":
            filters[name] = value if op is None else {**filters.get(name, {}), op: value}
    sort = params.get("sort") or "-created_at"
    try:
        page = max(1, int(params.get("page") or 1))
        page_size = min(1000, max(1, int(params.get("page_size") or 100)))
    except ValueError as err:
        raise BadRequest(f"page and page_size must be integers: {err}") from err
    return filters, sort, page, page_size


def _field(model, name: str, columns: dict, typed: bool = False, sample: Any = None):
    """The SQL expression for ``name``: its column, or the body field (as text, or as its type)."""
    if name in columns:
        return columns[name]
    value = model.body[name]
    if typed and isinstance(sample, bool):
        return value.as_boolean()
    if typed and isinstance(sample, int | float):
        return value.as_float()
    return value.as_string()


def _bound(name: str, value: str, columns: dict):
    """A comparison's bound: a time for a time column (named in the 400 if it is not one), else text."""
    if name not in TIMES or name not in columns:
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise BadRequest(f"{name}: '{value}' is not an ISO 8601 time") from err
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _condition(model, columns: dict, kind: str, name: str, op: str | None, value: str):
    """One filter or search condition as SQL."""
    text = cast(_field(model, name, columns), String)
    if op is not None:
        field = columns[name] if name in columns else text
        return _OPERATORS[op](field, _bound(name, value, columns))
    if kind == "filter":
        return text == value
    words = [w for w in value.split(",") if w] or [""]
    return or_(*(text.ilike("%" + _escaped(w) + "%", escape="\\") for w in words))


def _escaped(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
    for kind, name, op, value in conditions(params):
        query = query.where(_condition(model, columns, kind, name, op, value))
    name = sort.lstrip("-")
    sample = None if name in columns else _sample(session, query, model, name)
    key = _field(model, name, columns, typed=True, sample=sample)
    order = key.desc() if sort.startswith("-") else key.asc()
    page_ids = query.with_only_columns(model.id, func.count().over().label("total"))
    page_ids = page_ids.order_by(order.nulls_last(), model.id).limit(size).offset((number - 1) * size)
    for _ in range(3):  # a row deleted between the two statements: read the page again
        ids = session.execute(page_ids).all()
        rows = {
            row.id: row for row in session.scalars(select(model).where(model.id.in_([i.id for i in ids])))
        }
        if len(rows) == len(ids):
            break
    data = [public(rows[i.id]) for i in ids if i.id in rows]
    total = ids[0].total if ids else session.scalar(select(func.count()).select_from(query.subquery())) or 0
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
    }

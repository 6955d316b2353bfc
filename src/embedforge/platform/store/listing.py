"""NeMo list queries as SQL: ``filter[field]=value``, ``filter[field][gte]=...`` (eq, gt, gte, lt, lte),
``search[field]=a,b`` (case-insensitive substring, any of the values), ``search[field][start|end]=...``
(a range), ``sort=[-]field``, ``page`` / ``page_size``, answered as ``{object, data, pagination, sort,
filter, search}``. Conditions on different fields must all hold; a field given several times
(``filter[name]=a&filter[name]=b``) matches any of its values; a field may be a dotted path into the body
(``config_snapshot.base_model``). An empty search text searches nothing.

Filtering, counting, sorting and paging run in the database (the same SQLAlchemy expressions on SQLite
and PostgreSQL), so a page costs one page of rows, not the whole table. The page and the total come from
one statement, so they agree even while other clients write (``_total``: a count subquery, which lets the
page walk an index, or for a substring search, which reads every row anyway, a count in the same pass). A
field is a column where the row has one (typed: ``created_at`` sorts as a time) and a field of the JSON body
otherwise, compared as text and sorted by the type its values have (numbers as numbers). Missing values
sort last; ties break by id, so pages never overlap.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Select, String, case, cast, func, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, defer, with_expression

from embedforge.platform.errors import BadRequest

_CONDITION = re.compile(r"^(filter|search)\[([^\[\]]+)\](?:\[([a-z]+)\])?$")
_OPERATORS = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_RANGE = {"start": "gte", "end": "lte"}  # search[field][start|end]
TIMES = ("created_at", "updated_at")


class Condition:
    """One ``filter[...]`` or ``search[...]`` key of a list query: its field, operator and values."""

    def __init__(self, kind: str, name: str, given_op: str | None, values: list[str]):
        self.kind, self.name, self.given_op, self.values = kind, name, given_op, values
        self.op = _RANGE.get(given_op, given_op) if kind == "search" and given_op else given_op
        if self.op is not None and self.op not in _OPERATORS:
            raise BadRequest(
                f"{kind}[{name}][{given_op}]: unknown operator '{given_op}' (eq, gt, gte, lt, lte; start, end)"
            )

    def words(self) -> list[str]:
        """A search's texts: every value split at commas, empty texts dropped."""
        return [w for v in self.values for w in v.split(",") if w.strip()]


def conditions(params: dict) -> list[Condition]:
    """The query's conditions, in NeMo's bracket syntax (a repeated key's values arrive as a list)."""
    found = []
    for key, value in params.items():
        match = _CONDITION.match(key)
        if match:
            values = [value] if isinstance(value, str) else list(value)
            found.append(Condition(*match.groups(), values))
    return found


def _answered(found: list[Condition], kind: str) -> dict[str, Any]:
    """The conditions of one kind as the list answer echoes them (``{field: value}``, ranges as dicts)."""
    shown: dict[str, Any] = {}
    for c in (c for c in found if c.kind == kind):
        if c.given_op is not None:
            shown[c.name] = {**(shown.get(c.name) or {}), c.given_op: c.values[-1]}
        elif kind == "search" and c.words():
            shown[c.name] = c.words()
        elif kind == "filter":
            shown[c.name] = c.values[0] if len(c.values) == 1 else c.values
    return shown


def list_query(params: dict) -> tuple[dict[str, Any], str, int, int]:
    """Split a NeMo list query string into (filters as given, sort, page, page_size)."""
    sort = params.get("sort") or "-created_at"
    try:
        page = max(1, int(params.get("page") or 1))
        page_size = min(1000, max(1, int(params.get("page_size") or 100)))
    except ValueError as err:
        raise BadRequest(f"page and page_size must be integers: {err}") from err
    return _answered(conditions(params), "filter"), sort, page, page_size


def lighter(session: Session, model, key: str) -> list:
    """Loader options reading ``model.details`` without its top-level ``key`` into ``lighter_details``:
    the database drops it, so its bytes are neither decoded nor sent (a job's loss curves, in a list that
    shows none)."""
    if session.get_bind().dialect.name == "postgresql":
        expression = cast(model.details, JSONB).op("-")(key)
    else:
        expression = func.json_remove(model.details, f"$.{key}")
    return [defer(model.details), with_expression(model.lighter_details, type_coerce(expression, JSON))]


def _body_value(model, name: str):
    return model.body[tuple(name.split("."))] if "." in name else model.body[name]


def _sort_key(model, name: str, columns: dict, sample: Any):
    """What ``name`` sorts by: its column, or the body field as the type of a value it has (``sample``)."""
    if name in columns:
        return columns[name]
    value = _body_value(model, name)
    if isinstance(sample, bool):
        return value.as_boolean()
    if isinstance(sample, int | float):
        return value.as_float()
    return value.as_string()


def _nullable(key) -> bool:
    """Whether a sort key can be NULL: a body field can; a column only if declared so."""
    column = getattr(key, "expression", None)
    return getattr(column, "nullable", True)


def _bound(name: str, value: str, columns: dict):
    """A comparison's bound: a time for a time column (named in the 400 if it is not one), else text."""
    if name not in TIMES or name not in columns:
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise BadRequest(f"{name}: '{value}' is not an ISO 8601 time") from err
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _text(model, name: str, columns: dict, dialect: str):
    """The field as text, alike on both engines: a String column as it is (its index stays usable), a body
    field's JSON ``true``/``false`` as those words (SQLite's JSON_EXTRACT alone gives 1/0)."""
    if name in columns:
        column = columns[name]
        return column if isinstance(column.type, String) else cast(column, String)
    text = _body_value(model, name).as_string()
    if dialect != "sqlite":
        return text
    kind = func.json_type(model.body, "$" + "".join(f'."{part}"' for part in name.split(".")))
    return case((kind == "true", "true"), (kind == "false", "false"), else_=text)


def _condition(model, columns: dict, c: Condition, dialect: str):
    """One filter or search condition as SQL (None: a search with no text, which selects everything)."""
    text = _text(model, c.name, columns, dialect)
    if c.op is not None:
        field = columns[c.name] if c.name in columns else text
        return or_(*(_OPERATORS[c.op](field, _bound(c.name, v, columns)) for v in c.values))
    if c.kind == "filter":
        return text.in_(c.values)
    words = c.words()
    # SQLite's LIKE already ignores ASCII case, the only case its lower() knows: ilike's two lower() calls a
    # row add work, not matches
    match = text.like if dialect == "sqlite" else text.ilike
    return or_(*(match("%" + _escaped(w) + "%", escape="\\") for w in words)) if words else None


def _escaped(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _sample(session: Session, query: Select, model, name: str) -> Any:
    """A non-null value the field has among the query's rows: it decides how the field sorts."""
    row = session.scalars(query.where(_body_value(model, name).as_string().is_not(None)).limit(1)).first()
    value = None if row is None else row.body
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _total(query: Select, model, found: list[Condition]):
    """The count of the query's rows, as a column of the page's statement (one snapshot for both). A
    substring search reads every row anyway, so one pass counts as it scans (a window count); otherwise a
    count subquery, which leaves the page free to walk an index instead of sorting every matching row."""
    if any(c.kind == "search" and c.op is None and c.words() for c in found):
        return func.count().over()
    return select(func.count()).select_from(query.with_only_columns(model.id).subquery()).scalar_subquery()


def _page_rows(session: Session, page_ids: Select, model, options: Sequence) -> tuple[list, dict]:
    """The page's (id, total) rows and its rows by id, read again if a row vanished in between (another
    client deleted it); after three tries, the caller leaves the vanished rows out of the page and its count."""
    for _ in range(3):
        ids = session.execute(page_ids).all()
        wanted = select(model).options(*options).where(model.id.in_([i.id for i in ids]))
        rows = {row.id: row for row in session.scalars(wanted)}
        if len(rows) == len(ids):
            break
    return ids, rows


def page(
    session: Session,
    query: Select,
    model,
    params: dict,
    public: Callable[[Any], dict],
    columns: dict | None = None,
    options: Sequence = (),
) -> dict[str, Any]:
    """One page of ``query``'s rows (of ``model``, whose ``columns`` are addressable by name) as NeMo's
    list; the rows are loaded with ``options`` (e.g. ``lighter``)."""
    columns = {c: getattr(model, c) for c in ("id", "namespace", "name", "created_at", "updated_at")} | (
        columns or {}
    )
    found = conditions(params)
    filters, sort, number, size = list_query(params)
    for condition in found:
        clause = _condition(model, columns, condition, session.get_bind().dialect.name)
        query = query if clause is None else query.where(clause)
    name = sort.lstrip("-")
    sample = None if name in columns else _sample(session, query, model, name)
    key = _sort_key(model, name, columns, sample)
    order = key.desc() if sort.startswith("-") else key.asc()
    page_ids = query.with_only_columns(model.id, _total(query, model, found).label("total"))
    order = order.nulls_last() if _nullable(key) else order  # a NOT NULL column keeps its index order
    page_ids = page_ids.order_by(order, model.id).limit(size).offset((number - 1) * size)
    ids, rows = _page_rows(session, page_ids, model, options)
    data = [public(rows[i.id]) for i in ids if i.id in rows]
    if ids:  # a row deleted between the count and the read of the bodies leaves the count too
        total = ids[0].total - (len(ids) - len(data))
    else:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
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
        "search": _answered(found, "search"),
    }

"""Reading JSON and JSONL records with errors that name the file, the line or record, and the field.

Every embedforge reader of user data (``formats``, ``prep``) checks fields through these helpers, so a bad
value ends in one ``DataFormatError`` a user can act on, never a ``KeyError`` or ``TypeError`` deep inside.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from embedforge.errors import EmbedforgeError


class DataFormatError(EmbedforgeError, ValueError):
    """Bad input data, located precisely enough to fix it: file, 1-based line/record and field.

    ``unit`` says what ``line`` counts: "line" renders as ``train.jsonl:3:``, anything else (record,
    row, example) as ``train.json: record 3:``, since a JSON record has no useful line number.
    """

    def __init__(self, path, message, line=None, field=None, *, unit="line"):
        self.path, self.message, self.line, self.field, self.unit = str(path), message, line, field, unit
        where = self.path
        if line is not None:
            where += f":{line}" if unit == "line" else f": {unit} {line}"
        super().__init__(f'{where}: field "{field}": {message}' if field else f"{where}: {message}")


def json_kind(value) -> str:
    """JSON name of a value's type, so messages match what the user sees in the file."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def text_field(path, line, value, field, unit="line") -> str:
    """A non-blank string, or a DataFormatError naming where."""
    if not isinstance(value, str):
        raise DataFormatError(path, f"must be a string, got {json_kind(value)}", line, field, unit=unit)
    if not value.strip():
        raise DataFormatError(path, "must not be empty", line, field, unit=unit)
    return value


def ident_field(path, line, value, field, unit="line") -> str:
    """Ids may be strings or integers in the wild; embedforge keeps them as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_field(path, line, value, field, unit)


def required_field(path, line, obj, field, unit="line"):
    """``obj[field]``, or a DataFormatError saying the field is required."""
    if field not in obj:
        raise DataFormatError(path, "is required", line, field, unit=unit)
    return obj[field]


def nonblank_lines(path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for non-blank lines; an empty file is an error."""
    seen = False
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                seen = True
                yield n, line
    if not seen:
        raise DataFormatError(path, "file is empty")


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line; each line must be a JSON object."""
    for n, line in nonblank_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", n) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {json_kind(obj)}", n)
        yield n, obj


def load_json(path):
    """One JSON document; an empty file or invalid JSON is a DataFormatError with its line."""
    with open(path, encoding="utf-8-sig") as f:
        raw = f.read()
    if not raw.strip():
        raise DataFormatError(path, "file is empty")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from None

"""tools/check_function_length.py: long functions are found by qualified name, and the allowlist only shrinks."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "check_function_length", ROOT / "tools" / "check_function_length.py"
)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    text = _function("short", 5) + _function("long", 61)  # 62 lines with its def
    text += "class Box:\n" + _function("method", 70, indent="    ")
    text += "def outer():\n" + _function("inner", 64, indent="    ") + "    return inner\n"
    (src / "mod.py").write_text(text)
    return src


def test_lengths_count_from_def_to_last_line_by_qualified_name(tmp_path):
    lengths = check.function_lengths(_source(tmp_path) / "mod.py", root=tmp_path)
    assert lengths["src/mod.py::short"] == 6
    assert lengths["src/mod.py::long"] == 62
    assert lengths["src/mod.py::Box.method"] == 71
    assert lengths["src/mod.py::outer.inner"] == 65
    assert lengths["src/mod.py::outer"] == 67


def test_only_functions_over_the_limit_are_reported(tmp_path):
    found = check.long_functions(_source(tmp_path), root=tmp_path, limit=60)
    assert set(found) == {
        "src/mod.py::long",
        "src/mod.py::Box.method",
        "src/mod.py::outer.inner",
        "src/mod.py::outer",
    }


def test_new_and_grown_functions_fail_and_an_unchanged_allowlist_passes():
    found = {"a.py::f": 70, "a.py::g": 90}
    assert check.problems(found, {"a.py::f": 70, "a.py::g": 90}) == []
    new = check.problems(found, {"a.py::f": 70})
    assert len(new) == 1 and new[0].startswith("a.py::g is 90 lines")
    grown = check.problems(found, {"a.py::f": 65, "a.py::g": 90})
    assert len(grown) == 1 and "grew to 70" in grown[0]


def test_a_shrunk_or_fixed_function_makes_the_allowlist_out_of_date():
    shrunk = check.problems({"a.py::f": 66}, {"a.py::f": 70})
    fixed = check.problems({}, {"a.py::f": 70})
    assert "is now 66 lines" in shrunk[0] and "--update" in shrunk[0]
    assert "is gone or within 60 lines" in fixed[0]


def test_update_shrinks_entries_and_never_adds_or_grows_one(tmp_path):
    allowlist = tmp_path / "allow.txt"
    check.write_allowlist(
        allowlist, {"a.py::f": 66, "a.py::g": 95, "a.py::new": 80}, {"a.py::f": 70, "a.py::g": 90}
    )
    assert check.read_allowlist(allowlist) == {"a.py::f": 66, "a.py::g": 90}

"""The import-linter layers in pyproject.toml cover every module, so a new module must be placed in one."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "embedforge"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _top_level_modules() -> set[str]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return modules | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def test_every_module_is_in_exactly_one_layer():
    (layers,) = [c for c in _contracts() if c["type"] == "layers" and c["containers"] == ["embedforge"]]
    placed = [name for layer in layers["layers"] for name in re.split(r"[|:]", layer) if name.strip()]
    placed = [name.strip() for name in placed]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == _top_level_modules()


def test_no_cycles_is_checked_for_the_whole_package():
    assert any(c["type"] == "acyclic_siblings" and c["ancestors"] == ["embedforge"] for c in _contracts())

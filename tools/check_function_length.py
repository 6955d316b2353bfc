"""Fail on any function in src/ longer than 60 lines, except those in a shrinking allowlist.

A function's length is its lines from ``def`` to its last line, docstring included. The allowlist
(``tools/function_length_allowlist.txt``, one ``path::qualified.name length`` a line) records the long
functions that existed when the check came in, at their length then. The check fails when a function not on
it passes the limit, or one on it grows; and when one on it shrank or went away, so that the list only
shrinks: ``--update`` rewrites it with today's lengths, refusing to add or grow an entry.

    python tools/check_function_length.py            # make lint runs this
    python tools/check_function_length.py --update   # after shortening an allowlisted function
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60
ALLOWLIST = ROOT / "tools" / "function_length_allowlist.txt"


def function_lengths(path: Path, root: Path = ROOT) -> dict[str, int]:
    """``relative/path.py::Qualified.name`` -> lines, for every function and method in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).as_posix()
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    key = f"{rel}::{name}"
                    lengths[key] = max(lengths.get(key, 0), child.end_lineno - child.lineno + 1)
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return lengths


def long_functions(src: Path, root: Path = ROOT, limit: int = LIMIT) -> dict[str, int]:
    """Every function under ``src`` longer than ``limit`` lines."""
    found: dict[str, int] = {}
    for path in sorted(src.rglob("*.py")):
        found.update({k: n for k, n in function_lengths(path, root).items() if n > limit})
    return found


def read_allowlist(path: Path) -> dict[str, int]:
    entries = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.startswith("#"):
            name, length = line.rsplit(maxsplit=1)
            entries[name] = int(length)
    return entries


def problems(found: dict[str, int], allowed: dict[str, int], limit: int = LIMIT) -> list[str]:
    """What breaks the rule: new or grown long functions, and allowlist entries that are out of date."""
    out = []
    for name, length in sorted(found.items()):
        if name not in allowed:
            out.append(f"{name} is {length} lines (limit {limit}): split it")
        elif length > allowed[name]:
            out.append(f"{name} grew to {length} lines (allowlisted at {allowed[name]}): shorten it")
    for name, length in sorted(allowed.items()):
        if found.get(name, 0) < length:
            now = f"is now {found[name]} lines" if name in found else f"is gone or within {limit} lines"
            out.append(f"{name} {now} (allowlisted at {length}): run with --update to shrink the allowlist")
    return out


def write_allowlist(path: Path, found: dict[str, int], allowed: dict[str, int]) -> None:
    """Today's lengths of the allowlisted functions that are still long; never adds or grows an entry."""
    kept = {name: min(length, allowed[name]) for name, length in found.items() if name in allowed}
    header = f"# Functions over {LIMIT} lines, at their length when allowlisted. Only ever shrinks.\n"
    path.write_text(header + "".join(f"{name} {length}\n" for name, length in sorted(kept.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="shrink the allowlist to today's lengths")
    args = parser.parse_args(argv)
    found, allowed = long_functions(ROOT / "src"), read_allowlist(ALLOWLIST)
    if args.update:
        write_allowlist(ALLOWLIST, found, allowed)
        allowed = read_allowlist(ALLOWLIST)
    issues = problems(found, allowed)
    for issue in issues:
        print(issue, file=sys.stderr)
    print(f"{len(found)} functions over {LIMIT} lines, {len(allowed)} allowlisted, {len(issues)} problems")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())

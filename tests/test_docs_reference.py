"""The docs site's generated reference: every sub-command, flag and recipe key is on its page."""

import argparse
import importlib.util
from pathlib import Path

import yaml

from embedforge.cli import build_parser
from embedforge.config import STAGE_CONFIGS, describe

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "tools" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(parser, path=("embedforge",)):
    """(command path, parser) for every command and nested sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_cli_page_names_every_subcommand_and_flag():
    page = _load_generator().cli_markdown()
    commands = list(_commands(build_parser()))
    assert len(commands) > len(STAGE_CONFIGS)  # the walk reached nested commands (data, platform)
    headings = {line.split("`")[1] for line in page.splitlines() if line.startswith("#") and "`" in line}
    for path, parser in commands:
        assert " ".join(path) in headings
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in page, (path, flag)


def _section(page: str, stage: str) -> str:
    """The text of one stage's section of the recipe-key page."""
    return page.split(f"\n## {stage}\n", 1)[1].split("\n## ", 1)[0]


def test_recipe_page_lists_every_key_of_every_stage_with_default_and_help():
    page = _load_generator().recipe_markdown()
    for stage, cls in STAGE_CONFIGS.items():
        section = _section(page, stage)
        for key, default, help_ in describe(cls):
            row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
            assert row is not None, (stage, key)
            assert f"`{default}`" in row and help_.split()[0] in row, (stage, key)


def test_the_site_builds_the_generated_pages_and_links_them():
    generator = _load_generator()
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert "tools/docs_reference.py" in site["hooks"]
    nav_pages = str(site["nav"])
    for page in generator.pages():
        assert page in nav_pages
        assert not (ROOT / "docs" / page).exists()  # generated at build time, never a stale copy

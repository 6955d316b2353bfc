"""The docs site's generated reference pages: the CLI (from cli.py's argparse parser) and the recipe keys
(from config.py's stage dataclasses).

Generated at build time so the reference cannot drift from the code. ``mkdocs.yml`` loads this file as a
hook: ``on_files`` adds the pages to the build without writing them into ``docs/``.
"""

from __future__ import annotations

import argparse
import typing

CLI_PAGE = "reference/cli.md"
RECIPE_PAGE = "reference/recipe-keys.md"


def _cell(text: object) -> str:
    """Text that is safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code_cell(text: object) -> str:
    """Inline code in a table cell: the table extension does not split cells at a pipe inside backticks."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(action.choices) if action else {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    """The one-line help a sub-command was registered with."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next((c.help for c in action._choices_actions if c.dest == name), "") or ""


def _argument_row(action: argparse.Action) -> str:
    name = ", ".join(action.option_strings) or (action.metavar or action.dest)
    if action.nargs in ("*", "+"):
        name += " ..."
    details = []
    if action.choices:
        details.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        details.append("required")
    if action.default not in (None, argparse.SUPPRESS, False):
        details.append(f"default `{action.default}`")
    help_ = action.help or ""
    if details:
        help_ = f"{help_} ({'; '.join(details)})" if help_ else "; ".join(details)
    return f"| {_code_cell(name)} | {_cell(help_)} |"


def _command_section(path: list[str], parser: argparse.ArgumentParser, summary: str) -> list[str]:
    """One command's heading, usage line and argument table; then its own sub-commands."""
    from embedforge.config import STAGE_CONFIGS

    lines = [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", summary or parser.description or "", ""]
    lines += ["```text", " ".join(parser.format_usage().split()[1:]), "```", ""]
    arguments = [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]
    arguments = [a for a in arguments if not isinstance(a, argparse._HelpAction)]
    if arguments:
        lines += ["| argument | meaning |", "| --- | --- |", *map(_argument_row, arguments), ""]
    if len(path) == 2 and path[1] in STAGE_CONFIGS:
        lines += [
            f"Every key of the [`{path[1]}` recipe section](recipe-keys.md#{path[1]}) is also a `key=value`.",
            "",
        ]
    for name, child in _subparsers(parser).items():
        lines += _command_section([*path, name], child, _help_of(parser, name))
    return lines


def cli_markdown() -> str:
    """The CLI reference page: every sub-command of ``embedforge`` with every argument."""
    from embedforge.cli import build_parser

    parser = build_parser()
    lines = [
        "# CLI reference",
        "",
        "Generated from the argparse parser in `embedforge/cli.py` at every docs build.",
        "`embedforge COMMAND --help` prints the same, with the recipe keys of a stage command.",
        "",
    ]
    return "\n".join(lines + _command_section(["embedforge"], parser, parser.description or ""))


def _type_name(hint: object) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _stage_section(stage: str, cls: type) -> list[str]:
    from embedforge.config import describe

    hints = typing.get_type_hints(cls)
    doc = (cls.__doc__ or "").strip()
    lines = [f"## {stage}", "", f"`{stage}:` section, `{cls.__name__}`. {doc}", ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, default, help_ in describe(cls):
        row = [_code_cell(key), _code_cell(_type_name(hints[key])), _code_cell(default), _cell(help_)]
        lines.append(f"| {' | '.join(row)} |")
    return [*lines, ""]


def recipe_markdown() -> str:
    """The recipe-key reference page: every key of every stage config with its type, default and help."""
    from embedforge.config import STAGE_CONFIGS

    lines = [
        "# Recipe keys",
        "",
        "Generated from the stage config dataclasses in `embedforge/config.py` at every docs build.",
        "A recipe is a YAML file with one section per stage; any key can be overridden on the command line",
        "as `key=value` (a stage command) or `stage.key=value` (`embedforge run`). Unknown keys are an error.",
        "Defaults are shown as JSON (`null` = unset).",
        "",
    ]
    for stage, cls in STAGE_CONFIGS.items():
        lines += _stage_section(stage, cls)
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """Generated page path (relative to docs/) -> Markdown."""
    return {CLI_PAGE: cli_markdown(), RECIPE_PAGE: recipe_markdown()}


def on_files(files, config):
    """mkdocs hook: add the generated pages to the build."""
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files

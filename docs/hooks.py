"""MkDocs hook: the command-line reference is generated from ``rld``'s argument parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- rld-cli-reference -->``; it is replaced by the help of
``rld`` and of every subcommand (nested ones included), exactly as ``rld … --help`` prints it.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- rld-cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public accessor for the subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sections(parser: argparse.ArgumentParser, level: int = 2) -> list[str]:
    out = []
    for sub in _subcommands(parser).values():
        out += [f"{'#' * level} `{sub.prog}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        out += _sections(sub, level + 1)
    return out


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: make the page reproducible
    from rld.cli import build_parser

    parser = build_parser()
    return "\n".join(["```text", parser.format_help().rstrip(), "```", "", *_sections(parser)])


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown

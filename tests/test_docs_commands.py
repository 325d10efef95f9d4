"""Every `facewatch ...` command that README.md and docs/*.md show is one the CLI accepts.

The command lines in the docs' code blocks, synopses included (``list | show ID``, ``[--json]``,
``IMAGE|DIR...``), are expanded into concrete argument lists and parsed by the real argument
parser: a renamed command or flag, or one that no longer exists, fails here with the doc's line.
Commands that run offline are run by the tests of their modules; this keeps the rest honest.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from worker.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "helm" / "facewatch" / "README.md"]
NUMERIC = {"N", "PX", "S", "D", "SECONDS"}  # placeholders of numeric options


def _command_lines(path: Path) -> list[tuple[str, str]]:
    """(where, command) for each `facewatch ` line of a fenced code block, continuation lines joined."""
    found, in_block, pending, where = [], False, "", ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        text = re.sub(r"^\s*\$\s*", "", line).strip()
        if pending:
            pending += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                found.append((where, pending))
                pending = ""
            continue
        if re.match(r"facewatch\s", text):
            where = f"{path.relative_to(ROOT)}:{number}"
            if text.endswith("\\"):
                pending = text.rstrip("\\").strip()
            else:
                found.append((where, text))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _expand(command: str) -> list[list[str]]:
    """A synopsis line -> the concrete argument lists it stands for (after `facewatch`)."""
    command = re.sub(r"\s+#.*$", "", command)  # a trailing comment
    parts = [shlex.split(part) for part in re.split(r"\s+\|\s+", command)]
    first = parts[0][1:]  # without "facewatch"
    variants = [first]
    if len(parts) > 1:
        # `prefix alt1 | alt2 | ...`: the prefix is everything before the last sub-command of the first part.
        parser, last_command = build_parser(), None
        for index, token in enumerate(first):
            choices = _subparsers(parser)
            if token in choices:
                parser, last_command = choices[token], index
        assert last_command is not None, f"no sub-command before the alternatives: {command}"
        prefix = first[:last_command]
        variants += [prefix + part for part in parts[1:]]
    return [_concrete(tokens) for tokens in variants]


def _concrete(tokens: list[str]) -> list[str]:
    argv = []
    for token in tokens:
        optional = token.startswith("[") or token.endswith("]")
        token = token.strip("[]").removesuffix("...")
        if token in ("GATES", ""):
            continue
        if "|" in token and not token.startswith(("rtsp", "http")):
            token = token.split("|")[0]  # `hog|mmod|...`, `IMAGE|DIR`: the first choice
        if token == "NAME" and argv[-1:] == ["--detector"]:
            token = "hog"
        elif token in NUMERIC:
            token = "1"
        elif token == "JSON":
            token = "{}"
        elif re.fullmatch(r"[A-Z][A-Z_.0-9]*", token) and not optional:
            token = "x.png" if token in ("PHOTO", "IMAGE", "IMAGE_A", "IMAGE_B") else "x"
        elif re.fullmatch(r"[A-Z][A-Z_.0-9]*", token):
            token = "x"
        argv.append(token)
    return argv


def _is_command(command: str) -> bool:
    # Benchmark tables in code blocks have rows that start with "facewatch" too: a command names a sub-command.
    words = command.split()
    return len(words) > 1 and (words[1] in _subparsers(build_parser()) or words[1].startswith("-"))


COMMANDS = [
    (where, command)
    for path in DOCS
    if path.exists()
    for where, command in _command_lines(path)
    if _is_command(command)
]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 40, COMMANDS  # the extraction itself works


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_is_accepted(where, command):
    for argv in _expand(command):
        parser = build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `facewatch {' '.join(argv)}` is refused (exit {exc.code}); the doc shows: {command}")


def test_a_wrong_flag_in_a_doc_would_be_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(_expand("facewatch watchlist list --no-such-flag")[0])
    expanded = _expand("facewatch config show | check FILE | docs")
    assert expanded == [["config", "show"], ["config", "check", "x"], ["config", "docs"]]

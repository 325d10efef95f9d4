"""Every `facewatch ...` command that README.md and docs/*.md show is one the CLI accepts.

The command lines in the docs' code blocks, synopses included (``list | show ID``, ``[--json]``,
``IMAGE|DIR...``), are expanded into concrete argument lists and parsed by the real argument
parser: a renamed command or flag, or one that no longer exists, fails here with the doc's line.
Commands that run offline are run by the tests of their modules; this keeps the rest honest.
"""

from __future__ import annotations

import re

import pytest

from tests.doclines import all_commands, alternatives
from worker.cli.main import build_parser

NUMERIC = {"N", "PX", "S", "D", "SECONDS"}  # placeholders of numeric options


def _expand(command: str) -> list[list[str]]:
    """A synopsis line -> the concrete argument lists it stands for (after `facewatch`)."""
    return [_concrete(tokens) for tokens in alternatives(command)]


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


# The commands of the `facewatch` program (face_recognition's two programs have their own arguments;
# tests/test_docs_run.py runs them).
COMMANDS = [(command.where, command.text) for command in all_commands() if command.program == "facewatch"]


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

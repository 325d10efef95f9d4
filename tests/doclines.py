"""The command lines that README.md and docs/*.md show, for the tests that parse and run them.

A command is a line of a fenced code block that starts with one of the installed programs
(``facewatch``, ``facewatch-face-recognition``, ``facewatch-face-detection``), perhaps after
environment assignments (``FACEWATCH_DETECTOR__NAME=hog facewatch ...``) and a ``$ `` prompt;
continuation lines (``\\``) are joined, and shell variables set in the same block
(``S=../shared/data/stills``) are substituted. In a block with ``$ `` prompts only the prompted
lines are commands (the others are their output). Benchmark tables have rows that start with
``facewatch  `` (two spaces, a column): those are not commands.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from worker.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "helm" / "facewatch" / "README.md"]
PROGRAMS = ("facewatch", "facewatch-face-recognition", "facewatch-face-detection")

_ASSIGNMENT = r"[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|\"[^\"]*\"|[^\s'\"]*)"
_COMMAND = re.compile(rf"^((?:{_ASSIGNMENT}\s+)*)({'|'.join(sorted(PROGRAMS, key=len, reverse=True))}) (\S.*)$")
_VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S*)$")


@dataclass(frozen=True)
class DocCommand:
    """One command line of a doc: where it starts, the command (from the program on), its environment."""

    doc: str  # the doc's path relative to the repository, e.g. "README.md"
    line: int  # the line the command starts on
    text: str  # the program and its arguments, continuations joined, variables substituted, comment removed
    env: tuple[tuple[str, str], ...]  # VAR=value assignments before the program
    comment: str  # the trailing comment, without "#"
    output: tuple[str, ...] = ()  # what the doc shows it printing (after a ``$`` prompt)

    @property
    def where(self) -> str:
        """``README.md:64``: the test id and what failure messages name."""
        return f"{self.doc}:{self.line}"

    @property
    def program(self) -> str:
        return self.text.split()[0]


def _blocks(path: Path) -> list[list[tuple[int, str]]]:
    """The lines of each fenced code block, numbered."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append((number, line))
    return blocks


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str, list[str]]]:
    """(first line number, text, output shown after it) with continuation lines joined; with prompts, only the
    prompted lines, each with the lines up to the next prompt as its output."""
    prompted = any(re.match(r"\s*\$ ", line) for _, line in block)
    found: list[tuple[int, str, list[str]]] = []
    pending, start = "", 0
    for number, line in block:
        if pending:
            text = line.strip()
        elif prompted:
            match = re.match(r"\s*\$ (.*)$", line)
            if not match:
                if found:
                    found[-1][2].append(line)  # output shown after a prompted command
                continue
            text, start = match.group(1).strip(), number
        else:
            text, start = line.strip(), number
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        found.append((start, pending + text, []))
        pending = ""
    return found


def _split_comment(text: str) -> tuple[str, str]:
    """(command, comment): a `` #`` outside quotes starts the comment."""
    quote = None
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and index > 0 and text[index - 1].isspace():
            return text[:index].rstrip(), text[index + 1 :].strip()
    return text, ""


@cache
def subcommands() -> frozenset[str]:
    """The top-level sub-commands of `facewatch`."""
    return frozenset(_subparsers(build_parser()))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def doc_commands(path: Path) -> list[DocCommand]:
    """Every command line of the doc's code blocks, in order."""
    found = []
    variables: dict[str, str] = {}  # a shell variable set in one block holds in the doc's later blocks
    for block in _blocks(path):
        for number, logical, output in _logical_lines(block):
            text, comment = _split_comment(logical)
            assignment = _VARIABLE.match(text)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2).strip("'\"")
                continue
            match = _COMMAND.match(text)
            if not match:
                continue
            prefix, program, rest = match.groups()
            if program == "facewatch" and not (rest.split()[0] in subcommands() or rest.startswith("-")):
                continue  # e.g. "facewatch: error: ..." shown as output
            for name, value in variables.items():
                rest = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", value, rest)
            env = tuple((k, v.strip("'\"")) for k, _, v in (a.partition("=") for a in shlex.split(prefix)))
            found.append(
                DocCommand(str(path.relative_to(ROOT)), number, f"{program} {rest}", env, comment, tuple(output))
            )
    return found


def all_commands() -> list[DocCommand]:
    """The commands of README.md, docs/*.md and the chart's README, in that order."""
    return [command for path in DOCS if path.exists() for command in doc_commands(path)]


def alternatives(text: str) -> list[list[str]]:
    """A synopsis line -> the token lists it stands for (after the program), one per ``a | b`` alternative.

    ``facewatch watchlist list | show ID|NAME`` stands for ``watchlist list`` and ``watchlist show ID|NAME``:
    an alternative after `` | `` replaces everything after the last sub-command before it.
    """
    parts = [shlex.split(part) for part in re.split(r"\s+\|\s+", text)]
    first = parts[0][1:]  # without the program
    variants = [first]
    if len(parts) > 1:
        parser, last_command = build_parser(), None
        for index, token in enumerate(first):
            choices = _subparsers(parser)
            if token in choices:
                parser, last_command = choices[token], index
        assert last_command is not None, f"no sub-command before the alternatives: {text}"
        prefix = first[:last_command]
        variants += [prefix + part for part in parts[1:]]
    return variants

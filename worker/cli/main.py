"""Entry point of the `facewatch` command."""

from __future__ import annotations

import argparse
import logging
import sys

from worker import __version__
from worker.cli import (
    admin_cmd,
    annotate_cmd,
    bench,
    config_cmd,
    evaluate,
    faces,
    model_cmd,
    stream_cmd,
    train_cmd,
    visitors_cmd,
    watchlist_cmd,
)
from worker.cli.common import PROG, report_error
from worker.errors import ConfigError, FacewatchError
from worker.secrets import install_log_filter


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Streaming face recognition: cameras and Kafka in, watchlist match events out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    faces.register(commands)
    watchlist_cmd.register(commands)
    admin_cmd.register(commands)
    stream_cmd.register(commands)
    annotate_cmd.register(commands)
    visitors_cmd.register(commands)
    evaluate.register(commands)
    bench.register(commands)
    model_cmd.register(commands)
    train_cmd.register(commands)
    config_cmd.register(commands)
    for command in _leaf_parsers(parser):
        _add_global_flags(command, top=False)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """--config and --log-level, before the command or after it (``facewatch run --config FILE``)."""
    # Below the top, SUPPRESS keeps an absent flag from overwriting one given before the command.
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help="YAML config file (also $FACEWATCH_CONFIG)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING" if top else argparse.SUPPRESS,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity",
    )


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` that runs a command (those without sub-commands of their own)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                below = _leaf_parsers(child)
                found += below or [child]
    return found


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 bad input, 2 bad usage or config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filter()  # secrets never reach the logs, whoever logs them (kafka-python's DEBUG dumps too)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        report_error(str(exc))
        return 2
    except FacewatchError as exc:
        report_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

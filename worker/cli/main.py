"""Entry point of the `facewatch` command."""

from __future__ import annotations

import argparse
import logging
import sys

from worker import __version__
from worker.cli import bench, config_cmd, evaluate, faces, stream_cmd, watchlist_cmd
from worker.cli.common import PROG, report_error
from worker.errors import ConfigError, FacewatchError


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Streaming face recognition: cameras and Kafka in, watchlist match events out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (also $FACEWATCH_CONFIG)")
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log verbosity"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    faces.register(commands)
    watchlist_cmd.register(commands)
    stream_cmd.register(commands)
    evaluate.register(commands)
    bench.register(commands)
    config_cmd.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 bad input, 2 bad usage or config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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

"""`facewatch run`, `facewatch publish` and `facewatch events schema`."""

from __future__ import annotations

import argparse
import sys

from worker.cli.common import settings_from_args


def register(commands: argparse._SubParsersAction) -> None:
    """Add the streaming commands."""
    run = commands.add_parser(
        "run",
        help="run the streaming worker (cameras and/or the Kafka frames topic -> events)",
        description="Runs until SIGTERM/SIGINT (or until every video file has ended). See docs/streaming.md.",
    )
    run.set_defaults(handler=run_worker)

    publish = commands.add_parser(
        "publish",
        help="put one camera (RTSP URL or video file) onto the Kafka frames topic",
        description="The ingest role: produces JPEG frames keyed by camera id, at the source's rate. While the "
        "broker is away it retries, keeps at most publish.max_pending_frames frames waiting and drops (counts) the "
        "rest; exit status 0: every frame delivered, 1: some lost, 2: none delivered for publish.give_up_after_s. "
        "Serves /metrics, /healthz and /readyz on http.port (ready: camera connected, broker acknowledging).",
    )
    publish.add_argument("source", metavar="SOURCE", help="rtsp://... URL or video file")
    publish.add_argument("--camera", required=True, help="camera id (the message key)")
    publish.add_argument("--topic", help="frames topic (default: frames.topic)")
    publish.add_argument("--bootstrap", help="Kafka bootstrap servers (default: kafka.bootstrap_servers)")
    publish.add_argument("--loop", action="store_true", help="files: start again at the end")
    publish.add_argument("--fast", action="store_true", help="files: do not pace at the frame rate")
    publish.add_argument("--max-fps", type=float, help="skip frames to stay under this rate")
    publish.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    publish.add_argument(
        "--http-port",
        type=int,
        help="port of /metrics, /healthz, /readyz (http.port; 0: off); next to a worker on one host, another port",
    )
    publish.set_defaults(handler=run_publish)

    demo = commands.add_parser(
        "demo",
        help="run the worker on embedded defaults: no Kafka, camera or download needed",
        description="Enrolls a public-domain portrait that ships in a PyPI wheel, makes a demo video in which "
        "she and an unenrolled person appear, and runs the streaming worker on it; events print as they happen.",
    )
    demo.add_argument("--fast", action="store_true", help="do not pace the video at its frame rate")
    demo.add_argument("--keep", metavar="DIR", help="keep the video and the watchlist in DIR")
    demo.add_argument(
        "--visitors",
        action="store_true",
        help="count anonymous visitors too: the unenrolled person comes back, and visit events print",
    )
    demo.set_defaults(handler=run_demo)

    events = commands.add_parser("events", help="the event format")
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    schema = actions.add_parser("schema", help="print the JSON schema of the events")
    schema.set_defaults(handler=run_schema)


def run_worker(args: argparse.Namespace) -> int:
    from worker.stream.runner import Worker

    worker = Worker(settings_from_args(args))
    worker.install_signal_handlers()
    return worker.run()


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worker.demo import run_demo as demo

    return demo(
        realtime=not args.fast,
        keep=Path(args.keep) if args.keep else None,
        config_file=args.config,
        visitors=args.visitors,
    )


def run_publish(args: argparse.Namespace) -> int:
    import signal

    from worker.stream.publish import Publisher

    settings = settings_from_args(args)
    if args.bootstrap:
        settings.kafka.bootstrap_servers = args.bootstrap
    publisher = Publisher(
        args.source,
        args.camera,
        args.topic or settings.frames.topic,
        settings.kafka,
        rtsp=settings.rtsp,
        loop=args.loop,
        max_fps=args.max_fps,
        quality=args.quality,
        realtime=not args.fast,
        publish=settings.publish,
        http=settings.http,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: publisher.stop_requested.set())
    return publisher.run()


def run_schema(args: argparse.Namespace) -> int:
    from worker.stream.events import schema_text

    sys.stdout.write(schema_text())
    return 0

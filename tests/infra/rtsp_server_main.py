#!/usr/bin/python3
"""Standalone RTSP server for tests: serves an H.264 MP4 file on rtsp://HOST:PORT/MOUNT, looping forever.

Run with Debian's /usr/bin/python3 (python3-gi and gir1.2-gst-rtsp-server-1.0 are built for it,
not for the project's venv). Prints one line ``READY rtsp://...`` to stdout once it listens.
Exits cleanly on SIGTERM/SIGINT. Uses only the standard library and gi, so it has no venv deps.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# Before the RTSPMedia subclass below is registered: its handle-message vfunc takes a Gst.Message,
# a type that exists only after Gst.init (else GObject warns and the server never answers).
Gst.init(None)


def _segment_seek(element: Gst.Element, flush: bool) -> bool:
    """Seek to 0 with the SEGMENT flag: at the file's end the pipeline posts SEGMENT_DONE instead of EOS."""
    flags = Gst.SeekFlags.SEGMENT
    if flush:
        flags |= Gst.SeekFlags.FLUSH
    ok = element.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1)
    if not ok:
        # Goes to the log the test harness shows on failure: a stream that stops looping is explained.
        print(f"WARNING: segment seek (flush={flush}) was refused; the stream will end", file=sys.stderr, flush=True)
    return ok


def _payloader(media: GstRtspServer.RTSPMedia) -> Gst.Element:
    """The media's pay0 element: a seek sent into it travels upstream to qtdemux.

    Seeking the whole pipeline instead returns True but never reaches qtdemux (the seek goes to
    the server's RTP/RTCP sinks), so the file ends with EOS and the client sees RTCP BYE.
    """
    return media.get_element().get_by_name("pay0")


class LoopingMedia(GstRtspServer.RTSPMedia):
    """An RTSPMedia that restarts the file at each SEGMENT_DONE, so the stream never ends.

    A non-flushing segment seek starts the next loop's running time at the *last frame's*
    timestamp, not at the file's end, so the first frame of each loop would repeat the previous
    frame's RTP timestamp. Shifting pay0's input by one frame duration per loop keeps timestamps
    strictly increasing, like a real camera's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_duration = 0
        self._offset = 0
        self._probed = False

    def _watch_buffers(self) -> Gst.Pad:
        pad = _payloader(self).get_static_pad("sink")
        if not self._probed:
            pad.add_probe(Gst.PadProbeType.BUFFER, self._on_buffer)
            self._probed = True
        return pad

    def _on_buffer(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer is not None and buffer.duration != Gst.CLOCK_TIME_NONE:
            self._last_duration = buffer.duration
        return Gst.PadProbeReturn.OK

    def do_handle_message(self, message: Gst.Message) -> bool:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            pad = self._watch_buffers()
            self._offset += self._last_duration
            pad.set_offset(self._offset)
            # Non-flushing: running time keeps growing, so RTP timestamps stay monotonic across loops.
            _segment_seek(_payloader(self), flush=False)
            return True
        return GstRtspServer.RTSPMedia.do_handle_message(self, message)


def _on_prepared(media: GstRtspServer.RTSPMedia) -> None:
    if isinstance(media, LoopingMedia):
        media._watch_buffers()
    _segment_seek(_payloader(media), flush=True)


def _on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
    # The first SEGMENT seek, once the pipeline is prerolled; later loops are handled in LoopingMedia.
    media.connect("prepared", _on_prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", required=True, help="H.264 MP4 file to serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--no-loop", action="store_true", help="play the file once, then end the stream")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.video):
        print(f"ERROR: video file not found: {args.video}", file=sys.stderr, flush=True)
        return 2
    if not args.mount.startswith("/"):
        args.mount = "/" + args.mount

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    location = args.video.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )
    # Non-shared: each client gets its own pipeline (shared + looping crashed on a second client).
    factory.set_shared(False)
    if not args.no_loop:
        factory.set_media_gtype(LoopingMedia)
        factory.connect("media-configure", _on_media_configure)
    server.get_mount_points().add_factory(args.mount, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"ERROR: could not listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 3
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    print(f"READY rtsp://{args.host}:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

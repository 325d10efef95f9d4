"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving an H.264 MP4, looping forever.

The server runs as a separate process under Debian's /usr/bin/python3 (``rtsp_server_main.py``),
because the GStreamer Python bindings (python3-gi) are built for the system Python, not the venv.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ._process import ComponentError, ManagedProcess, ensure_port_free, free_port, wait_until

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server_main.py")
# Overridable so a machine with the bindings elsewhere can still run the tests.
GST_PYTHON = os.environ.get("GST_PYTHON", "/usr/bin/python3")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
INSTALL_HINT = (
    "run scripts/install-system-deps.sh (apt: gir1.2-gst-rtsp-server-1.0 python3-gi "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)"
)

# Runs under GST_PYTHON: imports the bindings and looks up every element the launch line uses.
_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("filesrc", "qtdemux", "h264parse", "rtph264pay") if Gst.ElementFactory.find(e) is None]
print("MISSING " + " ".join(missing) if missing else "OK")
"""


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when the RTSP server can run here, else why not (for ``pytest.skip``)."""
    if not os.path.exists(GST_PYTHON):
        return f"{GST_PYTHON} not found (the GStreamer RTSP server runs under the system Python); {INSTALL_HINT}"
    try:
        out = subprocess.run([GST_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run {GST_PYTHON}: {exc}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server bindings not importable by {GST_PYTHON} ({last}); {INSTALL_HINT}"
    if out.stdout.strip() != "OK":
        return f"GStreamer elements missing: {out.stdout.strip().removeprefix('MISSING ')}; {INSTALL_HINT}"
    return None


def rtsp_describe(url: str, timeout: float = 3.0) -> str:
    """Send a real RTSP DESCRIBE for ``url`` and return the SDP body; raise on any non-200 answer."""
    match = re.match(r"rtsp://([^:/]+):(\d+)(/.*)?$", url)
    if not match:
        raise ValueError(f"not an rtsp://host:port/path URL: {url}")
    host, port = match.group(1), int(match.group(2))
    request = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: facewatch-tests\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if not status.startswith("RTSP/1.0 200"):
            raise ComponentError(f"DESCRIBE {url}: {status or 'no answer'}")
        length_match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(length_match.group(1)) if length_match else 0
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    return body.decode(errors="replace")


class RtspServer:
    """Serves ``video_path`` (H.264 MP4) at ``rtsp://127.0.0.1:PORT{mount}``, looping forever.

    Each client gets its own pipeline (non-shared factory), so every client starts at frame 0.
    The port stays fixed for the object's life: ``kill()`` then ``start()`` brings the stream back
    at the same URL, which is what a reconnect test needs.
    """

    def __init__(
        self,
        video_path: str | Path,
        mount: str = "/cam",
        port: int | None = None,
        loop: bool = True,
        start_timeout: float = START_TIMEOUT_S,
    ):
        reason = unavailable_reason()
        if reason is not None:
            raise ComponentError(reason)
        self.video_path = Path(video_path).resolve()
        if not self.video_path.is_file():
            raise ComponentError(f"video file not found: {self.video_path}")
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.port = port or free_port()
        self.start_timeout = start_timeout
        argv = [GST_PYTHON, str(SERVER_SCRIPT), "--video", str(self.video_path), "--port", str(self.port)]
        argv += ["--mount", self.mount]
        if not loop:
            argv.append("--no-loop")
        # The system Python must not pick up the venv's packages or settings.
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        self._process = ManagedProcess("rtsp-server", argv, env=env)
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        """``rtsp://127.0.0.1:PORT/mount``."""
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process.running

    @property
    def log_path(self) -> str:
        """Path of the server's combined stdout/stderr log."""
        return str(self._process.log_path)

    def start(self) -> RtspServer:
        """Start the server and wait until a real DESCRIBE of the mount answers with an H.264 SDP."""
        t0 = time.monotonic()
        ensure_port_free(self.port, "rtsp-server")
        self._process.start()

        def answers() -> bool:
            return "H264" in rtsp_describe(self.url, timeout=2.0)

        try:
            wait_until(answers, self.start_timeout, f"answer DESCRIBE {self.url}", alive=self._process.check_alive)
        except TimeoutError as exc:
            raise self._process.fail(str(exc)) from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def describe(self) -> str:
        """The SDP the server gives for the mount (a real RTSP DESCRIBE)."""
        return rtsp_describe(self.url)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s); connected clients lose the stream."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the server at once (a camera that vanishes)."""
        self._process.kill()

    def restart(self, hard: bool = False) -> RtspServer:
        """Stop (``hard``: SIGKILL) and start again on the same port and mount."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its log."""
        self._process.cleanup()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

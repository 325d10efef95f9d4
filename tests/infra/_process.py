"""Shared plumbing for the real test components: free ports, a managed child process, polling."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Components stop within these bounds, or are killed: a hung test fixture must not hang CI.
DEFAULT_STOP_TIMEOUT_S = 10.0


class ComponentError(RuntimeError):
    """A real component failed to start or to answer in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_port_free(port: int, name: str) -> None:
    """Raise when something already listens on 127.0.0.1:port.

    Checked before each start because a server that cannot bind does not always exit (Tansu panics
    in a worker thread and keeps running), and a readiness poll would then talk to the other process.
    SO_REUSEADDR, as servers set it, so a port left in TIME_WAIT by a killed server counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ComponentError(f"{name}: port 127.0.0.1:{port} is already in use ({exc})") from None


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``check`` until it returns True; raise ``TimeoutError`` naming ``what`` and the last error.

    ``alive`` is called on each round and may raise to end the wait early (e.g. the process died).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            if check():
                return
            last_error = None
        except Exception as exc:
            # Not ready yet: a refused connection or a half-started server is expected here.
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:.1f} s{detail}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the test process dies.

    Fixture teardown stops components normally; this covers a pytest that is SIGKILLed (a CI
    timeout), which would otherwise leave brokers and servers running on a shared machine.
    Linux ties this to the thread that started the child: start components from the main thread.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # Not Linux: teardown still stops the process.


_PR_SET_PDEATHSIG = 1


class ManagedProcess:
    """One child process whose stdout+stderr go to a log file (a pipe nobody reads could block it)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix=f"facewatch-{name}-log-")
        self.log_path = Path(self._log_dir.name) / f"{name}.log"

    @property
    def running(self) -> bool:
        """True while the child process exists and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's pid, or None before start."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the process (appending to the same log, so restarts keep the earlier output)."""
        if self.running:
            raise ComponentError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            # New session: a stop signal reaches only this child, never the pytest process group.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def log_tail(self, max_chars: int = 3000) -> str:
        """The last part of the process's combined stdout/stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-max_chars:]

    def check_alive(self) -> None:
        """Raise with the log tail when the process has exited (used while waiting for readiness)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ComponentError(
                f"{self.name} exited with code {self.proc.returncode} before it was ready.\n"
                f"argv: {' '.join(self.argv)}\n--- log tail ---\n{self.log_tail()}"
            )

    def fail(self, what: str) -> ComponentError:
        """Stop the process and build an error that carries its log tail."""
        self.stop()
        return ComponentError(f"{self.name}: {what}\nargv: {' '.join(self.argv)}\n--- log tail ---\n{self.log_tail()}")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            # The child may exit between poll() and the signal.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the process (and its session) at once: simulates a crash."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            # The child may exit between poll() and the signal.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEFAULT_STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        """Stop the process and delete the log directory."""
        self.stop()
        self._log_dir.cleanup()

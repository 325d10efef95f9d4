"""`facewatch run` as a real child process: its events (stdout), its log (stderr), its HTTP endpoints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.infra._process import free_port, wait_until


class WorkerProcess:
    """One worker started from a config dict; stdout is kept as the event log, stderr as the log."""

    def __init__(self, folder: Path, config: dict[str, Any], name: str = "worker") -> None:
        self.folder = folder
        self.name = name
        self.port = free_port()
        config = {**config, "http": {"host": "127.0.0.1", "port": self.port, **config.get("http", {})}}
        self.config_path = folder / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.events_path = folder / f"{name}.events.jsonl"
        self.log_path = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        """Start (or restart) the worker; events and log are appended across restarts."""
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("FACEWATCH_")}
        argv = [sys.executable, "-m", "worker", "--log-level", "INFO", "--config", str(self.config_path), "run"]
        with open(self.events_path, "ab") as out, open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
            )
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the worker's log, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "<no log>"

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def http(self, path: str) -> tuple[int, str]:
        """GET an endpoint: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until /readyz says 200."""
        wait_until(lambda: self.http("/readyz")[0] == 200, timeout, f"{self.name} ready", 0.2, alive=self._alive)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of a metric's samples (matching ``labels``) from /metrics; 0 when absent."""
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            series, value = line.rsplit(" ", 1)
            if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def events(self) -> list[dict[str, Any]]:
        """Every event printed so far (a line cut short by a SIGKILL is skipped)."""
        found = []
        if self.events_path.exists():
            for line in self.events_path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def wait_exit(self, timeout: float) -> int:
        """Wait for the worker to exit by itself; its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.log_tail()}") from None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit status of a graceful stop."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or committed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        """Make sure nothing is left running."""
        if self.running:
            with contextlib.suppress(Exception):
                self.terminate(20)
        self.kill()

"""A real Prometheus server for tests (Debian's ``prometheus`` package), scraping loopback targets.

Prometheus applies new scrape targets only after its discovery manager's ~5 s throttle, so the
first sample lands about 6 s after start even with a 1 s scrape interval; ``wait_for`` covers that.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._process import ComponentError, ManagedProcess, ensure_port_free, free_port, wait_until

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
INSTALL_HINT = "run scripts/install-system-deps.sh (apt: prometheus)"


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` server binary, or None."""
    return shutil.which("prometheus")


def find_promtool() -> str | None:
    """Path of ``promtool`` (rule checks and rule unit tests), or None."""
    return shutil.which("promtool")


def unavailable_reason() -> str | None:
    """None when a Prometheus server can run here, else why not (for ``pytest.skip``)."""
    if find_prometheus() is None:
        return f"prometheus binary not on PATH; {INSTALL_HINT}"
    return None


def promtool_unavailable_reason() -> str | None:
    """None when promtool is installed, else why not (for ``pytest.skip``)."""
    if find_promtool() is None:
        return f"promtool not on PATH; {INSTALL_HINT}"
    return None


def _yaml_list(items: Sequence[str]) -> str:
    # JSON strings are valid YAML scalars, so the config needs no YAML library.
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


class PrometheusServer:
    """Prometheus on a free loopback port with a throw-away TSDB; scrapes ``scrape_targets`` every second.

    ``scrape_targets`` are ``"host:port"`` strings (metrics at ``/metrics``), scraped as job ``"test"``;
    ``rule_files`` are recording/alerting rule files, evaluated every second.
    """

    def __init__(
        self,
        scrape_targets: Sequence[str] = (),
        rule_files: Sequence[str | Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        job_name: str = "test",
        port: int | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ):
        reason = unavailable_reason()
        if reason is not None:
            raise ComponentError(reason)
        self.binary = find_prometheus()
        assert self.binary is not None
        self.scrape_targets = list(scrape_targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        for rule_file in self.rule_files:
            if not rule_file.is_file():
                raise ComponentError(f"rule file not found: {rule_file}")
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.job_name = job_name
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="facewatch-prometheus-")
        self.config_path = Path(self._dir.name) / "prometheus.yml"
        self.storage_path = Path(self._dir.name) / "data"
        self._write_config()
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Lets reload() apply new targets without a restart.
            "--web.enable-lifecycle",
        ]
        self._process = ManagedProcess("prometheus", argv, cwd=self._dir.name)
        self.startup_seconds: float | None = None

    def _write_config(self) -> None:
        self.config_path.write_text(
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  scrape_timeout: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.evaluation_interval}\n"
            f"rule_files: {_yaml_list([str(p) for p in self.rule_files])}\n"
            "scrape_configs:\n"
            f"  - job_name: {json.dumps(self.job_name)}\n"
            "    static_configs:\n"
            f"      - targets: {_yaml_list(self.scrape_targets)}\n"
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process.running

    def start(self) -> PrometheusServer:
        """Start Prometheus and wait until ``/-/ready`` answers 200."""
        t0 = time.monotonic()
        ensure_port_free(self.port, "prometheus")
        self._process.start()
        try:
            wait_until(
                self._ready, self.start_timeout, f"{self.url}/-/ready", interval=0.1, alive=self._process.check_alive
            )
        except TimeoutError as exc:
            raise self._process.fail(str(exc)) from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 5.0) -> Any:
        """GET ``/api/v1/{path}`` and return its ``data``; raise with Prometheus's error text on failure."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            # Bad PromQL comes back as 400 with a JSON error body: surface that text.
            detail = exc.read().decode(errors="replace")
            raise ComponentError(f"Prometheus API {path} {params}: HTTP {exc.code}: {detail}") from None
        if body.get("status") != "success":
            raise ComponentError(f"Prometheus API {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result list (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        data = self.api("query", {"query": expr})
        result = data["result"]
        # Scalars and strings come back as one [ts, value] pair: wrap them like a one-sample vector.
        if data.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_value(self, expr: str) -> float | None:
        """The value of a query that yields one sample, or None when it yields nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise ComponentError(f"{expr!r} returned {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def wait_for(
        self,
        expr: str,
        timeout: float = 30.0,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        interval: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Poll ``query(expr)`` until ``predicate(result)`` (default: non-empty) and return the result."""
        holder: dict[str, list[dict[str, Any]]] = {}

        def check() -> bool:
            holder["result"] = self.query(expr)
            return predicate(holder["result"])

        try:
            wait_until(check, timeout, f"Prometheus query {expr!r}", interval=interval, alive=self._process.check_alive)
        except TimeoutError as exc:
            raise ComponentError(f"{exc}; last result: {holder.get('result')}; targets: {self.targets()}") from None
        return holder["result"]

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error (for diagnosing a missing metric)."""
        try:
            data = self.api("targets")
        except (ComponentError, OSError) as exc:
            return [{"error": str(exc)}]
        return [
            {"scrapeUrl": t.get("scrapeUrl"), "health": t.get("health"), "lastError": t.get("lastError")}
            for t in data.get("activeTargets", [])
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Currently pending or firing alerts."""
        return list(self.api("alerts")["alerts"])

    def reload(self, scrape_targets: Sequence[str] | None = None) -> None:
        """Rewrite the config (optionally with new targets) and make the running server load it."""
        if scrape_targets is not None:
            self.scrape_targets = list(scrape_targets)
        self._write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            if resp.status != 200:
                raise ComponentError(f"reload failed: HTTP {resp.status}")

    def log_tail(self, max_chars: int = 3000) -> str:
        """The end of the server's log."""
        return self._process.log_tail(max_chars)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s); the TSDB directory is kept until close()."""
        self._process.stop(timeout)

    def restart(self) -> PrometheusServer:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its config, data and log."""
        self._process.cleanup()
        self._dir.cleanup()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

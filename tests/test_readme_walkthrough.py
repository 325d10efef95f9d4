"""README's "Running against Kafka and RTSP", followed as a new user would, against real components.

The worker.yaml shown in README.md is read from README itself and run with the command README
gives (`DOOR_PASSWORD=... facewatch run --config worker.yaml`), with only what cannot be the same
here replaced: the camera's host and port (a real GStreamer RTSP server playing ../shared's
Hamilton clip; the `viewer:${DOOR_PASSWORD}` credentials and the path shape stay), the brokers (a
private Tansu broker, so README's topic names are used as they are), the store's path and the
HTTP port. The watchlist is enrolled with README's own `watchlist add` line of that section (through the
replication topic, as README says), with Lin-Manuel Miranda's still for Ada Lovelace's photo.
README's ingest line (`facewatch publish rtsp://cam-2/stream --camera lobby ...`) runs beside it
against a second RTSP server. Both cameras' FaceMatch events must reach `facewatch.events` as
CloudEvents in binary mode.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.infra._process import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MIRANDA = "Lin-Manuel Miranda"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _blocks(section: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def _command(block: str, starts: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv after `facewatch`) of the block's line running ``starts``."""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        words = shlex.split(line)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words[:2] == ["facewatch", starts]:
            return env, words[1:]
    raise AssertionError(f"README shows no `facewatch {starts}` line in:\n{block}")


def _moved(url: str, host_port: str, path: str) -> str:
    """``url`` with its host and port (and path) changed, the user info kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, userinfo + host_port, path, parts.query, parts.fragment))


@pytest.mark.timeout(900)
def test_readme_worker_reads_a_camera_and_an_ingest_and_publishes_cloudevents(
    shared_dir, kafka_broker_factory, rtsp_server_factory, tmp_path
):
    from kafka import KafkaConsumer

    clip = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    section = _section("Running against Kafka and RTSP")
    config_block, commands = _blocks(section)[:2]
    config = yaml.safe_load(config_block)
    run_env, run_argv = _command(commands, "run")
    publish_env, publish_argv = _command(commands, "publish")
    assert run_env.keys() == {"DOOR_PASSWORD"} and run_argv == ["run", "--config", "worker.yaml"]

    broker = kafka_broker_factory()
    door = rtsp_server_factory(clip, mount="/stream1")
    lobby = rtsp_server_factory(clip, mount="/stream")
    work = tmp_path / "user"
    work.mkdir()
    checkout = work / "checkout"
    checkout.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWATCH_")}
    env |= {"HOME": str(tmp_path), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}

    def facewatch(argv: list[str], extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", *argv], cwd=checkout, env={**env, **(extra or {})}, **kwargs
        )

    camera = config["cameras"][0]
    camera["url"] = _moved(camera["url"], urlsplit(door.url).netloc, urlsplit(camera["url"]).path)
    config["kafka"]["bootstrap_servers"] = broker.bootstrap
    config["watchlist"]["store"] = str(checkout / "watchlist.db")
    port = free_port()
    config["http"] = {"host": "127.0.0.1", "port": port}
    (checkout / "worker.yaml").write_text(yaml.safe_dump(config))

    # Enroll with README's own line: the same config, so the enrollment goes through the topic.
    enroll_env, add_argv = _command(commands, "--config")
    assert add_argv[:4] == ["--config", "worker.yaml", "watchlist", "add"], add_argv
    add_argv[4:6] = [MIRANDA, str(shared_dir / "data" / "stills" / "lin-manuel-miranda.png")]
    enroll = facewatch(add_argv, enroll_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = enroll.communicate(timeout=300)
    assert enroll.returncode == 0, err.decode()
    log = (tmp_path / "worker.log").open("wb")
    worker = facewatch(run_argv, {"DOOR_PASSWORD": "not-needed-by-the-test-server"}, stdout=log, stderr=log)
    ingest = None
    try:
        publish_argv[1] = _moved(publish_argv[1], urlsplit(lobby.url).netloc, urlsplit(lobby.url).path)
        publish_argv[publish_argv.index("--http-port") + 1] = str(free_port())
        ingest = facewatch(
            publish_argv,
            {**publish_env, "FACEWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "ingest.log").open("wb"),
        )
        consumer = KafkaConsumer(
            config["events"]["kafka_topic"], bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000,
        )  # fmt: skip
        matches: dict[str, dict] = {}

        def both_cameras_matched() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            for record in consumer:
                headers = {key: value.decode() for key, value in record.headers}
                event = json.loads(record.value)
                if event["type"] == "face_match" and event["identity_name"] == MIRANDA:
                    matches.setdefault(event["camera_id"], {"headers": headers, "key": record.key.decode()})
            return {"door-1", "lobby"} <= matches.keys()

        wait_until(both_cameras_matched, 600, "README's camera and ingest both announcing Miranda", 0.5)
        consumer.close()
    finally:
        for process in (ingest, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(60)
        log.close()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]  # SIGTERM drains, exits 0
    for camera_id, match in matches.items():
        headers = match["headers"]
        assert match["key"] == camera_id
        assert headers["ce_specversion"] == "1.0" and headers["ce_type"] == "dev.facewatch.face_match.v2"
        assert headers["content-type"] == "application/json" and headers["ce_id"] and headers["ce_time"]
        assert headers["ce_source"]
    assert "not-needed-by-the-test-server" not in (tmp_path / "worker.log").read_text()  # secrets never logged

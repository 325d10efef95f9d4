"""The audit log: appended, rotated at its size, expired after its retention, queried; safe beside other writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

from worker.admin.audit import Actor, AuditLog
from worker.admin.ratelimit import RateLimiter

ALICE = Actor("alice", "10.0.0.1")


def test_entries_are_appended_and_queried(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(ALICE, "enroll", "ok", "id-1", accepted=2)
    log.record(Actor("bob", "cli"), "remove", "ok", "id-1", templates=2)
    log.record(ALICE, "identify", "ok", faces=1)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0]) == {
        "time": json.loads(lines[0])["time"], "who": "alice", "from": "10.0.0.1", "action": "enroll",
        "identity": "id-1", "outcome": "ok", "accepted": 2,
    }  # fmt: skip
    assert json.loads(lines[0])["time"].endswith("Z")
    assert [e["action"] for e in log.query(who="alice")] == ["enroll", "identify"]
    assert [e["who"] for e in log.query(identity="id-1")] == ["alice", "bob"]
    assert [e["action"] for e in log.query(limit=1)] == ["identify"]
    assert log.query(since="2999") == [] and len(log.query(since="2000", until="2999")) == 3
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_every_entry_and_retention_deletes_old_files(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, retention_days=30)
    for number in range(40):
        log.record(ALICE, "identify", "ok", number=number)
    rotated = log.rotated()
    assert rotated and all(p.stat().st_size <= 1024 for p in [*rotated, log.path])
    assert [e["number"] for e in log.entries()] == list(range(40))  # nothing lost, in order
    old = time.time() - 31 * 86_400
    os.utime(rotated[0], (old, old))
    assert log.expire() == [rotated[0]] and not rotated[0].exists()
    assert [e["number"] for e in log.entries()][-1] == 39 and log.path.exists()


def _append(path: str, who: str) -> None:
    log = AuditLog(path, max_bytes=4096)
    for number in range(200):
        log.record(Actor(who, "cli"), "identify", "ok", number=number)


def test_several_processes_append_whole_lines(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    workers = [multiprocessing.get_context("fork").Process(target=_append, args=(path, w)) for w in ("p1", "p2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    entries = list(AuditLog(path).entries())  # every line parses
    for who in ("p1", "p2"):
        assert [e["number"] for e in entries if e["who"] == who] == list(range(200))


def test_rate_limiter_buckets():
    limiter = RateLimiter(per_minute=2)
    assert limiter.take("a", now=0) == 0 and limiter.take("a", now=0) == 0
    assert limiter.take("a", now=0) == 30.0  # one request comes back every 30 s
    assert limiter.take("b", now=0) == 0  # buckets are per key
    assert limiter.blocked("a", now=15) == 15.0 and limiter.take("a", now=30) == 0

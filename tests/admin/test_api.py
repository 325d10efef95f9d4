"""The admin API end to end: real models, real photos, a real store, replication to the real broker."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
from kafka import KafkaConsumer

from tests.admin.conftest import Client, Reply, multipart
from tests.infra.sqlite_reader import ReaderMidRead
from worker.cli.main import main
from worker.samples import sample_paths
from worker.watchlist.store import WatchlistStore


def _photo(name: str) -> tuple[str, str, bytes]:
    path = sample_paths()[name]
    return ("photo", path.name, path.read_bytes())


def _on_disk(store: Path) -> bytes:
    return b"".join(p.read_bytes() for p in store.parent.iterdir() if p.name.startswith(store.name) and p.is_file()
                    and not p.name.endswith(".jsonl"))  # fmt: skip


def test_enroll_rename_identify_export_remove_over_http(make_admin):
    admin = make_admin()
    write, read, root = admin.tokens["write"], admin.tokens["read"], admin.tokens["admin"]
    content_type, body = multipart({"name": "Grace Hopper", "metadata": '{"team": "navy"}'}, [_photo("Grace Hopper")])
    reply = admin.client.request("POST", "/v1/identities", write, body, content_type)
    assert reply.status == 201, reply.body
    report = reply.json()
    hopper = report["identity"]
    assert report["name"] == "Grace Hopper" and len(report["accepted"]) == 1 and report["rejected"] == []
    assert report["accepted"][0]["image"] == sample_paths()["Grace Hopper"].name  # the upload's name, not a temp path

    # The same gates and report as the CLI: a blurred photo is refused with the flag that would admit it.
    content_type, body = multipart({"name": "Blurred"}, [("photo", "blurred.jpg", _blurred("Eileen Collins"))])
    reply = admin.client.request("POST", "/v1/identities", write, body, content_type)
    assert reply.status == 422, reply.body
    (rejected,) = reply.json()["report"]["rejected"]
    assert rejected["image"] == "blurred.jpg" and "sharpness" in rejected["reason"] and rejected["admit"]
    assert reply.json()["error"].startswith("nothing enrolled for Blurred: ")
    assert "facewatch-admin-" not in reply.body.decode()  # no temporary path leaks
    content_type, body = multipart({"name": "x"}, [("photo", "junk.jpg", b"not an image")])
    reply = admin.client.request("POST", "/v1/identities", write, body, content_type)
    assert reply.status == 422 and "unreadable" in reply.json()["report"]["rejected"][0]["reason"]

    listed = admin.client.request("GET", "/v1/identities", read).json()["identities"]
    assert [(i["name"], i["templates"], i["metadata"]) for i in listed] == [("Grace Hopper", 1, {"team": "navy"})]
    shown = admin.client.request("GET", f"/v1/identities/{hopper}", read).json()
    assert len(shown["templates"]) == 1 and '"embedding"' not in json.dumps(shown)
    assert admin.client.request("GET", "/v1/identities/nobody", read).status == 404

    reply = admin.client.request("PATCH", f"/v1/identities/{hopper}", write, b'{"name": "Rear Admiral Hopper"}',
                                 "application/json")  # fmt: skip
    assert reply.status == 200 and reply.json()["name"] == "Rear Admiral Hopper"
    assert reply.json()["metadata"] == {"team": "navy"}
    bad = admin.client.request("PATCH", f"/v1/identities/{hopper}", write, b'{"name": 3}', "application/json")
    assert bad.status == 400 and "name" in bad.json()["error"]

    content_type, body = multipart(files=[("image", "hopper.jpg", sample_paths()["Grace Hopper"].read_bytes())])
    faces = admin.client.request("POST", "/v1/identify", read, body, content_type).json()
    assert faces["images"] == 1
    assert [(f["status"], f["identity"], f["name"]) for f in faces["faces"]] == [
        ("match", hopper, "Rear Admiral Hopper")
    ]
    assert faces["faces"][0]["threshold"] == 0.5 and 0.99 < faces["faces"][0]["confidence"] <= 1.0
    content_type, body = multipart(files=[("image", "junk.png", b"\x89PNG junk")])
    reply = admin.client.request("POST", "/v1/identify", read, body, content_type)
    assert reply.status == 400 and "junk.png" in reply.json()["error"]

    export = admin.client.request("GET", "/v1/export", root)
    assert export.status == 200 and export.headers["Content-Type"] == "application/x-ndjson"
    lines = export.body.decode().splitlines()
    assert json.loads(lines[0])["identities"] == 1 and json.loads(lines[1])["id"] == hopper

    with WatchlistStore(admin.store) as opened:
        vectors = [t.embedding.astype("<f4").tobytes() for t in opened.templates(hopper)]
    reply = admin.client.request("DELETE", f"/v1/identities/{hopper}", root)
    assert reply.status == 200 and reply.json() == {"removed": hopper, "templates": 1, "erasure": "complete"}
    assert not any(v in _on_disk(admin.store) for v in vectors) and b"Rear Admiral Hopper" not in _on_disk(admin.store)
    assert admin.client.request("DELETE", f"/v1/identities/{hopper}", root).status == 404

    entries = admin.client.request("GET", "/v1/audit", root).json()["entries"]
    actions = [(e["who"], e["action"], e.get("identity"), e["outcome"]) for e in entries]
    assert actions[0] == ("t-write", "enroll", hopper, "ok")
    assert ("t-write", "update", hopper, "ok") in actions and ("t-read", "identify", None, "ok") in actions
    assert ("t-admin", "export", None, "ok") in actions and ("t-admin", "remove", hopper, "ok") in actions
    assert all(e["from"] == "127.0.0.1" for e in entries)
    raw = admin.audit.path.read_bytes()
    assert b"Hopper" not in raw and not any(v in raw for v in vectors)  # no name, no embedding in the audit log
    assert admin.audit.path.stat().st_mode & 0o777 == 0o600
    only = admin.client.request("GET", f"/v1/audit?action=remove&identity={hopper}", root).json()["entries"]
    assert [e["outcome"] for e in only] == ["ok", f"error: no identity with id or name {hopper!r} in the watchlist"]
    assert admin.client.request("GET", "/v1/audit?limit=-1", root).status == 400


def test_add_photos_to_an_identity(make_admin):
    admin = make_admin()
    write = admin.tokens["write"]
    content_type, body = multipart({"name": "Grace Hopper", "id": "gh-1"}, [_photo("Grace Hopper")])
    assert admin.client.request("POST", "/v1/identities", write, body, content_type).status == 201
    assert admin.client.request("POST", "/v1/identities", write, body, content_type).status == 400  # id taken
    photo = _flipped(sample_paths()["Grace Hopper"])
    content_type, body = multipart(files=[("photo", "flipped.jpg", photo)])
    reply = admin.client.request("POST", "/v1/identities/gh-1/photos", write, body, content_type)
    assert reply.status in (201, 422), reply.body
    report = reply.json() if reply.status == 201 else reply.json()["report"]
    assert report["identity"] == "gh-1" and report["name"] == "Grace Hopper"
    assert admin.client.request("POST", "/v1/identities/nobody/photos", write, body, content_type).status == 404


def _flipped(path: Path) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.flip(cv2.imread(str(path)), 1))
    assert ok
    return data.tobytes()


def _blurred(name: str) -> bytes:
    image = cv2.imread(str(sample_paths()[name]))
    ok, data = cv2.imencode(".jpg", cv2.GaussianBlur(image, (0, 0), 6))
    assert ok
    return data.tobytes()


def test_removal_during_a_read_is_202_erasure_pending_then_purge(make_admin):
    admin = make_admin(watchlist={"erasure_wait_s": 0.3})
    vectors = np.random.default_rng(5).normal(size=(2, 128)).astype(np.float32)
    with WatchlistStore(admin.store) as opened:
        gone, _ = opened.add_identity_with_templates("Zelda Quartermaine", vectors)
        opened.checkpoint()
    root = admin.tokens["admin"]
    with ReaderMidRead(admin.store):
        reply = admin.client.request("DELETE", f"/v1/identities/{gone.id}", root)
        assert (
            reply.status == 202 and reply.json()["erasure"] == "pending" and "erasure pending" in reply.json()["detail"]
        )
        assert b"Zelda Quartermaine" in _on_disk(admin.store)
        assert admin.client.request("POST", "/v1/purge", root).status == 202
    reply = admin.client.request("POST", "/v1/purge", root)
    assert reply.status == 200 and reply.json() == {"pending": True, "erasure": "complete"}
    assert b"Zelda Quartermaine" not in _on_disk(admin.store)
    assert admin.audit.query(action="remove")[0]["outcome"] == "ok, erasure pending"


def test_every_change_is_replicated_as_the_clis_are(make_admin, kafka_broker):
    topic = f"watchlist-admin-{uuid.uuid4().hex[:8]}"
    admin = make_admin(watchlist={"replication_topic": topic}, kafka={"bootstrap_servers": kafka_broker.bootstrap})
    write, root = admin.tokens["write"], admin.tokens["admin"]
    content_type, body = multipart({"name": "Grace Hopper", "id": "gh"}, [_photo("Grace Hopper")])
    assert admin.client.request("POST", "/v1/identities", write, body, content_type).status == 201
    patch = b'{"metadata": {"rank": "admiral"}}'
    assert admin.client.request("PATCH", "/v1/identities/gh", write, patch, "application/json").status == 200
    assert admin.client.request("DELETE", "/v1/identities/gh", root).status == 200
    with WatchlistStore(admin.store) as opened:
        assert opened.published_version(topic) == opened.version == 3  # the outbox is empty
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)  # fmt: skip
    records = [(r.key, r.value) for r in consumer]
    consumer.close()
    assert [key for key, _ in records] == [b"gh", b"gh", b"gh"]
    assert json.loads(records[0][1])["name"] == "Grace Hopper" and len(json.loads(records[0][1])["templates"]) == 1
    assert json.loads(records[1][1])["metadata"] == {"rank": "admiral"}
    assert records[2][1] is None  # the tombstone


def test_body_size_limit_and_content_length(make_admin):
    admin = make_admin(admin={"max_request_bytes": 4096})
    content_type, body = multipart({"name": "Big"}, [("photo", "big.jpg", b"x" * 5000)])
    reply = admin.client.request("POST", "/v1/identities", admin.tokens["write"], body, content_type)
    assert reply.status == 413 and "admin.max_request_bytes" in reply.json()["error"]
    # Refused before auth would let it through? No: auth first, so an anonymous big body is 401.
    assert admin.client.request("POST", "/v1/identities", None, body, content_type).status == 401
    with socket.create_connection(("127.0.0.1", admin.server.port), timeout=30) as raw:
        raw.sendall(f"POST /v1/identify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin.tokens['read']}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode())  # fmt: skip
        assert raw.recv(100).startswith(b"HTTP/1.1 411")


def test_rate_limit_per_token_and_for_failed_logins(make_admin):
    admin = make_admin(admin={"rate_per_minute": 3})
    read = admin.tokens["read"]
    statuses = [admin.client.request("GET", "/v1/stats", read).status for _ in range(4)]
    assert statuses[:3] != [429] * 3 and statuses[3] == 429
    limited = admin.client.request("GET", "/v1/stats", read)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert admin.client.request("GET", "/v1/stats", admin.tokens["write"]).status != 429  # another token's bucket
    guesses = [admin.client.request("GET", "/v1/stats", "fw_guess").status for _ in range(4)]
    assert guesses == [401, 401, 401, 429]
    assert admin.client.request("GET", "/v1/stats", admin.tokens["admin"]).status == 429  # that address is paused
    metrics = admin.client.request("GET", "/metrics").body.decode()
    assert 'facewatch_admin_rejected_total{reason="rate_limited"}' in metrics


def test_an_idle_connection_is_closed(make_admin):
    admin = make_admin(admin={"idle_timeout_s": 0.5})
    with socket.create_connection(("127.0.0.1", admin.server.port), timeout=60) as raw:
        raw.sendall(b"GET /v1/stats HTTP/1.1\r\n")  # never finished
        assert raw.recv(100) == b""  # the server hung up (the socket's own timeout would raise instead)


def test_tls_with_certificate_files(make_admin, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    admin = make_admin(admin={"tls_cert": str(cert), "tls_key": str(key)})
    context = ssl.create_default_context(cafile=str(cert))
    secure = Client(admin.server, context)
    assert secure.request("GET", "/v1/stats", admin.tokens["read"]).status in (200, 400)
    assert admin.server.url.startswith("https://")
    try:  # plain HTTP gets no HTTP answer at all
        plain: object = Client(admin.server).request("GET", "/v1/stats", admin.tokens["read"])
    except (OSError, http.client.HTTPException) as exc:
        plain = exc
    assert not hasattr(plain, "status"), plain


def test_cli_rename_and_audit(capsys, tmp_path):
    store = str(tmp_path / "w.db")
    with WatchlistStore(store) as opened:
        person = opened.add_identity("Ada")
    assert main(["watchlist", "--store", store, "--json", "rename", person.id, "Ada Lovelace"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "Ada Lovelace"
    assert main(["watchlist", "--store", store, "rename", person.id]) == 1
    assert "nothing to change" in capsys.readouterr().err
    assert main(["watchlist", "--store", store, "rename", "nobody", "X"]) == 1
    capsys.readouterr()
    assert main(["audit", "--store", store, "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e.get("identity"), e["outcome"], e["from"]) for e in entries] == [
        ("update", person.id, "ok", "cli"),
        ("update", "nobody", "error: no identity with id or name 'nobody' in the watchlist", "cli"),
    ]
    assert entries[0]["who"].startswith("user:") and "Ada" not in json.dumps(entries)
    assert main(["audit", "--store", store, "--action", "update", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "update" in out and "error" in out


def test_a_refused_body_is_never_read_as_the_next_request(make_admin):
    admin = make_admin()
    smuggled = f"DELETE /v1/identities/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin.tokens['admin']}\r\n\r\n"
    head = f"POST /v1/purge HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", admin.server.port), timeout=60) as raw:
        raw.sendall((head + smuggled).encode())
        received = b""
        while chunk := raw.recv(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 401") and received.count(b"HTTP/1.1 ") == 1
    assert admin.audit.query(action="remove") == []


def test_visitors_over_http(make_admin, tmp_path):
    from worker.config import VisitorsConfig
    from worker.obs.metrics import Metrics
    from worker.stream.visitors import VisitorStage, VisitorTrack
    from worker.visitors.store import VisitorStore

    path = tmp_path / "visitors.db"
    t0 = time.time() - 3 * 3600
    people = np.random.default_rng(7).normal(size=(2, 128)).astype(np.float32)
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    stage = VisitorStage(VisitorsConfig(threshold=0.48, visit_gap_s=600), VisitorStore(path), Metrics(),
                         clock=lambda: t0 + 3 * 3600, idle=lambda: 0.0)  # fmt: skip
    for n, vector in enumerate(people):
        for k in range(2):
            start = t0 + k * 3600 + n * 60
            stage.track_ended(VisitorTrack("door", f"{n}-{k}", start, start + 20, vector, 5))
    stage.close()
    stage.store.close()

    admin = make_admin(visitors={"store": str(path)})
    read, write, root = admin.tokens["read"], admin.tokens["write"], admin.tokens["admin"]
    listed = admin.client.request("GET", "/v1/visitors", read).json()["visitors"]
    assert len(listed) == 2 and all(v["tracks"] == 2 for v in listed)
    first = listed[0]["visitor_id"]
    shown = admin.client.request("GET", f"/v1/visitors/{first}", read).json()
    assert shown["embeddings_held"] is True and len(shown["tracks"]) == 2 and '"embedding"' not in json.dumps(shown)
    report = admin.client.request("GET", "/v1/visitors/report?since=7d", read)
    assert report.status == 200
    from worker.admin.visitors import VisitorService

    expected = json.loads(json.dumps(VisitorService(admin.service.settings).report("7d")))
    got = report.json()
    assert {k: v for k, v in got.items() if k != "since"} == {k: v for k, v in expected.items() if k != "since"}
    assert got["visits"] == 4  # the same report as `facewatch visitors report --json`
    assert admin.client.request("GET", "/v1/visitors/report?since=yesterday", read).status == 400

    assert admin.client.request("DELETE", f"/v1/visitors/{first}", write).status == 403
    assert len(admin.client.request("GET", "/v1/visitors", read).json()["visitors"]) == 2
    reply = admin.client.request("DELETE", f"/v1/visitors/{first}", root)
    assert reply.status == 200 and reply.json() == {"forgotten": first}
    assert [v["visitor_id"] for v in admin.client.request("GET", "/v1/visitors", read).json()["visitors"]] == [
        listed[1]["visitor_id"]
    ]
    assert admin.client.request("GET", f"/v1/visitors/{first}", read).status == 404
    assert admin.client.request("DELETE", f"/v1/visitors/{first}", root).status == 404
    forgets = admin.audit.query(action="visitor_forget")
    assert [(e["who"], e["visitor"], e["outcome"]) for e in forgets] == [
        ("t-admin", first, "ok"),
        ("t-admin", first, f"error: no visitor {first!r}"),
    ]


def test_names_over_http_refused_merged_new_and_resolved(make_admin):
    admin = make_admin()
    write, read, root = admin.tokens["write"], admin.tokens["read"], admin.tokens["admin"]

    def enroll(existing: str | None, photo: str = "Grace Hopper") -> Reply:
        fields = {"name": "Grace Hopper", **({"existing": existing} if existing else {})}
        content_type, body = multipart(fields, [_photo(photo)])
        return admin.client.request("POST", "/v1/identities", write, body, content_type)

    first = enroll(None)
    assert first.status == 201 and first.json()["similar"] == []
    hopper = first.json()["identity"]
    refused = enroll(None)
    assert refused.status == 409 and refused.json() == {
        "error": f"'Grace Hopper' is already enrolled ({hopper}): --merge adds these photos to it, "
        "--new makes a second identity with the same name"
    }
    assert enroll("sometimes").status == 400
    merged = enroll("merge", "Eileen Collins")  # a wrong photo, deliberately: merged, no other identity to warn of
    assert merged.status == 201 and merged.json()["identity"] == hopper and merged.json()["similar"] == []
    second = enroll("new")  # the same photo as a second identity: within the threshold of the first
    assert second.status == 201 and second.json()["identity"] != hopper
    assert second.json()["similar"] == [{"identity": hopper, "name": "Grace Hopper", "distance": 0.0}]

    for method in ("GET", "DELETE"):
        reply = admin.client.request(method, "/v1/identities/Grace%20Hopper", root)
        assert reply.status == 409 and "2 identities are named 'Grace Hopper'" in reply.json()["error"]
        assert hopper in reply.json()["error"] and second.json()["identity"] in reply.json()["error"]
    reply = admin.client.request("DELETE", f"/v1/identities/{second.json()['identity']}", root)
    assert reply.status == 200
    shown = admin.client.request("GET", "/v1/identities/Grace%20Hopper", read)
    assert shown.status == 200 and shown.json()["identity"] == hopper and len(shown.json()["templates"]) == 2
    removed = admin.client.request("DELETE", "/v1/identities/Grace%20Hopper", root)
    assert removed.status == 200 and removed.json()["removed"] == hopper

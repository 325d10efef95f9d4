"""The watchlist store: atomic changes, change log, erasure on disk, export/restore, kill safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.infra.sqlite_reader import ReaderMidRead
from worker.errors import UnknownIdentityError, WatchlistError
from worker.watchlist.store import WatchlistStore

ROOT = Path(__file__).resolve().parents[2]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    with WatchlistStore(tmp_path / "watchlist.db") as s:
        yield s


def test_identities_templates_version_and_change_log(store):
    assert store.stats() == {"identities": 0, "templates": 0, "version": 0}
    ada = store.add_identity("Ada Lovelace", {"team": "engines"})
    ids = store.add_templates(ada.id, unit_vectors(3, 1), ["a.jpg", "b.jpg", "c.jpg"], [0.9, 0.8, 0.7])
    bob = store.add_identity("Bob", identity_id="bob-1")
    store.add_templates("bob-1", unit_vectors(2, 2))
    assert store.stats() == {"identities": 2, "templates": 5, "version": 4}
    assert store.get_identity(ada.id).metadata == {"team": "engines"}
    assert store.get_identity(ada.id).templates == 3
    assert [i.name for i in store.list_identities()] == ["Ada Lovelace", "Bob"]
    templates = store.templates(ada.id)
    assert [t.id for t in templates] == ids and templates[0].source == "a.jpg"
    np.testing.assert_array_equal(templates[1].embedding, unit_vectors(3, 1)[1])
    tids, iids, matrix = store.all_templates()
    assert list(tids) == [*ids, *[t.id for t in store.templates("bob-1")]] and iids.count(bob.id) == 2
    assert matrix.shape == (5, 128) and matrix.dtype == np.float32

    assert store.remove_templates([ids[0], 999_999]) == [ids[0]]
    store.remove_identity(ada.id)
    changes = store.changes_since(2)
    assert [(c.version, c.op) for c in changes] == [
        (3, "add_identity"),
        (4, "add_templates"),
        (5, "remove_templates"),
        (6, "remove_identity"),
    ]
    assert changes[-1].identity_id == ada.id and set(changes[-1].template_ids) == set(ids[1:])
    assert store.version == 6 and store.stats()["identities"] == 1
    # The change log holds ids only: no name or metadata of the removed person.
    log_rows = store._read("SELECT * FROM changes")
    assert "Ada" not in json.dumps(log_rows) and "engines" not in json.dumps(log_rows)


def test_replace_identity_is_one_change(store):
    old_vectors = unit_vectors(2, 11)
    person, old_ids = store.add_identity_with_templates("Old name", old_vectors, {"v": 1})
    store.checkpoint()
    assert old_vectors[0].astype("<f4").tobytes() in store.path.read_bytes()
    version = store.version
    replaced, new_ids = store.replace_identity(person.id, "New name", unit_vectors(3, 12), {"v": 2})
    assert store.version == version + 1 and replaced.id == person.id and len(new_ids) == 3
    assert [(c.op, c.template_ids) for c in store.changes_since(version)] == [
        ("remove_identity", tuple(old_ids)),
        ("add_identity", ()),
        ("add_templates", tuple(new_ids)),
    ]
    current = store.get_identity(person.id)
    assert (current.name, current.metadata, current.templates) == ("New name", {"v": 2}, 3)
    assert old_vectors[0].astype("<f4").tobytes() not in store.path.read_bytes()
    fresh, _ = store.replace_identity("brand-new", "Fresh", None)  # creates when missing
    assert store.get_identity(fresh.id).templates == 0


def test_bad_input_raises_clear_errors(store):
    with pytest.raises(UnknownIdentityError, match="no identity with id 'nobody'"):
        store.remove_identity("nobody")
    with pytest.raises(UnknownIdentityError):
        store.get_identity("nobody")
    with pytest.raises(UnknownIdentityError):
        store.add_templates("nobody", unit_vectors(1, 0))
    with pytest.raises(WatchlistError, match="non-empty name"):
        store.add_identity("  ")
    person = store.add_identity("P")
    with pytest.raises(WatchlistError, match="shape"):
        store.add_templates(person.id, np.zeros((2, 64), np.float32))
    with pytest.raises(WatchlistError, match="already exists"):
        store.add_identity("Q", identity_id=person.id)
    store.add_templates(person.id, unit_vectors(1, 0))
    with pytest.raises(WatchlistError, match="model"):
        store.add_templates(person.id, unit_vectors(1, 1), model_version="another_model")
    assert store.stats()["templates"] == 1  # failed calls changed nothing
    assert store.version == 2


def test_version_seen_by_another_connection(tmp_path):
    with WatchlistStore(tmp_path / "w.db") as writer, WatchlistStore(tmp_path / "w.db") as reader:
        before = reader.version
        writer.add_identity("X")
        assert reader.version == before + 1
        assert [c.op for c in reader.changes_since(before)] == ["add_identity"]


def test_store_export_and_index_files_are_owner_only(tmp_path):
    from worker.watchlist.index import WatchlistIndex

    with WatchlistStore(tmp_path / "w.db") as store:
        store.add_identity_with_templates("P", unit_vectors(1, 0))
        store.export(tmp_path / "export.jsonl")
        WatchlistIndex.build(store).save(tmp_path / "w.index")
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"w.db": 0o600, "w.db-wal": 0o600, "w.db-shm": 0o600, "export.jsonl": 0o600, "w.index": 0o600}


def test_not_a_database_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WatchlistError, match="cannot be opened"):
        WatchlistStore(bogus)


def test_removed_person_is_gone_from_the_file_and_wal(tmp_path):
    path = tmp_path / "w.db"
    with WatchlistStore(path) as store:
        keep = store.add_identity("Keeper")
        store.add_templates(keep.id, unit_vectors(2, 5))
        gone = store.add_identity("Zelda Quartermaine", {"note": "secret-note-7781"})
        vectors = unit_vectors(2, 6)
        store.add_templates(gone.id, vectors, ["/photos/zelda_0001.jpg", "/photos/zelda_0002.jpg"])
        store.checkpoint()
        blob = vectors[1].astype("<f4").tobytes()
        assert blob in path.read_bytes()  # the check below can fail: the bytes were on disk
        store.remove_identity(gone.id)
        assert store.checkpoint()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("w.db")]
    data = b"".join(p.read_bytes() for p in files)
    for needle in (blob, vectors[0].astype("<f4").tobytes(), b"Zelda", b"secret-note-7781", b"zelda_0001"):
        assert needle not in data
    with WatchlistStore(path) as store:
        assert [i.name for i in store.list_identities()] == ["Keeper"]
        assert store.verify() == []


def test_the_same_photo_kept_by_another_identity_is_no_erasure_residue(tmp_path):
    # One photo enrolled as two identities (watchlist add --new) gives byte-identical embeddings.
    path = tmp_path / "w.db"
    shared, own = unit_vectors(2, 9)
    with WatchlistStore(path) as store:
        first = store.add_identity("Grace Hopper")
        store.add_templates(first.id, shared[None])
        second = store.add_identity("Grace Hopper")
        store.add_templates(second.id, np.stack([shared, own]))
        store.remove_identity(second.id)
        erasure = store.finish_erasure()
        assert erasure.complete, erasure.detail
        assert store.erasure_pending is None
        (kept,) = store.templates(first.id)
        assert kept.embedding.astype("<f4").tobytes() == shared.astype("<f4").tobytes()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("w.db"))
    assert own.astype("<f4").tobytes() not in data and (second.id + "Grace Hopper").encode() not in data


def test_export_restore_round_trip(tmp_path, store):
    a = store.add_identity("Ann", {"k": 1})
    store.add_templates(a.id, unit_vectors(2, 7), ["x.jpg", None], [0.5, None])
    b = store.add_identity("Ben")
    store.add_templates(b.id, unit_vectors(1, 8))
    export = tmp_path / "backup.jsonl"
    assert store.export(export) == {"identities": 2, "templates": 3}
    header = json.loads(export.read_text().splitlines()[0])
    assert header["format"] == "facewatch-watchlist" and header["model_version"].startswith("dlib")

    with WatchlistStore(tmp_path / "other.db") as other:
        other.add_identity("Someone else")
        before = other.version
        assert other.restore(export) == {"identities": 2, "templates": 3}
        assert [(i.id, i.name, i.metadata, i.templates) for i in other.list_identities()] == [
            (a.id, "Ann", {"k": 1}, 2),
            (b.id, "Ben", {}, 1),
        ]
        for person in (a, b):  # bit-exact embeddings, in the same order
            np.testing.assert_array_equal(
                np.stack([t.embedding for t in other.templates(person.id)]),
                np.stack([t.embedding for t in store.templates(person.id)]),
            )
        assert [t.source for t in other.templates(a.id)] == ["x.jpg", None]
        ops = [c.op for c in other.changes_since(before)]
        assert ops.count("remove_identity") == 1 and ops.count("add_templates") == 2
        assert other.version == before + 1


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda lines: ["garbage", *lines[1:]], "not a facewatch export header"),
        (lambda lines: [lines[0].replace("dlib_face", "other_face"), *lines[1:]], "model"),
        (lambda lines: lines[:-1], "truncated"),
        (lambda lines: [*lines[:-1], lines[-1][:40]], "line 3 is malformed"),
        (lambda lines: [lines[0], lines[1].replace('"embedding": "', '"embedding": "AAAA')], "malformed"),
        (lambda lines: [], "empty"),
    ],
)
def test_restore_refuses_bad_files_and_changes_nothing(tmp_path, store, mangle, message):
    for n in range(2):
        person = store.add_identity(f"P{n}")
        store.add_templates(person.id, unit_vectors(1, n))
    good = tmp_path / "good.jsonl"
    store.export(good)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(mangle(good.read_text().splitlines())))
    with WatchlistStore(tmp_path / "target.db") as target:
        target.add_identity("Existing")
        version = target.version
        with pytest.raises(WatchlistError, match=message):
            target.restore(bad)
        assert [i.name for i in target.list_identities()] == ["Existing"] and target.version == version


WRITER = """
import os, sys, numpy as np
from worker.watchlist.store import WatchlistStore
def say(*words):  # one write(2) of under PIPE_BUF bytes: a SIGKILL cannot cut the line in two
    os.write(1, (" ".join(words) + "\\n").encode())
path, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
with WatchlistStore(path) as store:
    n = 0
    while True:
        if n % 2:
            person, _ = store.add_identity_with_templates(f"p{seed}-{n}", rng.normal(size=(40, 128)).astype(np.float32))
        else:  # two transactions: killed in between, the identity has no templates (but is not torn)
            person = store.add_identity(f"p{seed}-{n}", {"seed": seed})
            store.add_templates(person.id, rng.normal(size=(40, 128)).astype(np.float32))
        say("committed", person.id)
        if n % 7 == 3:
            victim = store.list_identities()[0]
            if victim.templates == 40:
                store.remove_identity(victim.id)
                say("removed", victim.id)
        n += 1
"""


def test_store_survives_sigkill_during_writes(tmp_path):
    path = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    committed: set[str] = set()
    removed: set[str] = set()
    for round_ in range(6):
        with WatchlistStore(path) as reader:  # another process reads while the writer works
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path), str(round_)], stdout=subprocess.PIPE, text=True, env=env
            )
            assert writer.stdout is not None
            lines = []
            for _ in range(5 + 4 * round_):  # let some commits happen, then kill at a varying point
                line = writer.stdout.readline()
                assert line, "the writer died on its own"
                lines.append(line)
            time.sleep(0.013 * round_)
            version_during = reader.version
            writer.send_signal(signal.SIGKILL)
            rest, _ = writer.communicate()
            assert writer.returncode == -signal.SIGKILL
        for line in [*lines, *rest.splitlines()]:
            what, identity_id = line.split()
            (committed if what == "committed" else removed).add(identity_id)
        with WatchlistStore(path) as store:
            assert store.verify() == []
            assert store.version >= version_during
            counts = {i.id: i.templates for i in store.list_identities()}
            # All or none: an identity killed between its two transactions may have no templates.
            assert all(c in (0, 40) for c in counts.values()), counts
            assert all(c == 40 for i, c in counts.items() if int(store.get_identity(i).name.split("-")[1]) % 2)
            assert not removed & counts.keys()
            missing = committed - removed - counts.keys()
            assert len(missing) <= round_ + 1  # at most one removal per round was cut off before it printed
            assert all(counts[i] == 40 for i in committed - removed - missing)
    assert len(committed) >= 50


CONCURRENT_WRITER = """
import sys, numpy as np
from worker.watchlist.store import WatchlistStore
with WatchlistStore(sys.argv[1]) as store:
    for n in range(40):
        person = store.add_identity(f"{sys.argv[2]}-{n}")
        store.add_templates(person.id, np.full((2, 128), n, np.float32))
"""


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(path), tag], env=env, stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
    with WatchlistStore(path) as store:
        assert store.stats() == {"identities": 80, "templates": 160, "version": 160}
        versions = [c.version for c in store.changes_since(0)]
        assert versions == sorted(versions) and len(set(versions)) == 160  # one version per change, no gaps
        assert store.verify() == []


def test_private_files_never_write_through_a_leftover_file_or_a_planted_link(tmp_path):
    from worker.watchlist.store import private_file

    leftover = tmp_path / "export.tmp"
    leftover.write_text("old")
    leftover.chmod(0o644)
    with private_file(leftover) as out:
        out.write("templates")
    assert leftover.read_text() == "templates" and leftover.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    link = tmp_path / "index.tmp"
    link.symlink_to(target)
    with private_file(link, "wb") as out:
        out.write(b"templates")
    assert target.read_text() == "precious"  # the link was replaced, its target untouched
    assert not link.is_symlink() and link.read_bytes() == b"templates" and link.stat().st_mode & 0o777 == 0o600


def test_a_store_others_can_read_is_reported(tmp_path, caplog):
    path = tmp_path / "shared.db"
    with WatchlistStore(path) as store:
        store.add_identity("someone")
        assert store.verify() == []
    path.chmod(0o644)  # as an operator's umask or a copy may leave it
    with caplog.at_level("WARNING", logger="worker.watchlist.store"), WatchlistStore(path) as store:
        problems = store.verify()
    assert any("mode 0644" in p and str(path) in p for p in problems), problems
    assert any("mode 0644" in r.getMessage() for r in caplog.records)
    path.chmod(0o600)
    with WatchlistStore(path) as store:
        assert store.verify() == []


def _files(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_removal_while_another_process_reads_stays_pending_until_the_reader_ends(tmp_path):
    path = tmp_path / "w.db"
    with WatchlistStore(path, erasure_wait_s=0.5) as store:
        store.add_identity_with_templates("Keeper", unit_vectors(1, 5))
        vectors = unit_vectors(2, 6)
        gone, _ = store.add_identity_with_templates("Zelda Quartermaine", vectors, {"note": "secret-note-7781"})
        assert store.checkpoint() and store.erasure_pending is None
        needles = [b"Zelda Quartermaine", *(v.astype("<f4").tobytes() for v in vectors)]
        with ReaderMidRead(path):
            store.remove_identity(gone.id)
            # Truthful: the reader's snapshot keeps the old pages, so the bytes are still on disk, and the
            # store says so instead of reporting the erasure done.
            assert store.erasure_pending == store.version
            assert all(needle in _files(path) for needle in needles)
            erasure = store.finish_erasure()
            assert not erasure.complete and "erasure pending" in erasure.detail
        erasure = store.finish_erasure()
        assert erasure.complete, erasure.detail
        assert store.erasure_pending is None
    data = _files(path)
    assert b"Keeper" in data  # the grep can find what is there
    for needle in [*needles, b"secret-note-7781"]:
        assert needle not in data


def test_a_pending_erasure_is_finished_by_another_connection_later(tmp_path):
    path = tmp_path / "w.db"
    vectors = unit_vectors(3, 8)
    with WatchlistStore(path, erasure_wait_s=0) as store:
        _, tids = store.add_identity_with_templates("Ingrid Vandersloot", vectors)
        store.checkpoint()
        with ReaderMidRead(path):
            store.remove_templates(tids[:2])  # template removals are erasures too
        assert store.erasure_pending is not None
    # The process that removed is gone; whoever opens the store next finishes the job.
    with WatchlistStore(path) as later:
        assert later.erasure_pending is not None and later.finish_erasure().complete
        assert later.erasure_pending is None
    data = _files(path)
    assert vectors[2].astype("<f4").tobytes() in data
    assert vectors[0].astype("<f4").tobytes() not in data and vectors[1].astype("<f4").tobytes() not in data


def test_a_reader_that_ends_within_the_wait_lets_the_removal_finish(tmp_path):
    path = tmp_path / "w.db"
    vectors = unit_vectors(1, 9)
    with WatchlistStore(path, erasure_wait_s=60) as store:
        gone, _ = store.add_identity_with_templates("Quentin Blakemore", vectors)
        store.checkpoint()
        reader = ReaderMidRead(path)
        threading.Timer(0.5, reader.release).start()
        store.remove_identity(gone.id)  # waits for the reader instead of giving up
        assert reader.process.wait(timeout=30) == 0
        assert store.erasure_pending is None
    data = _files(path)
    assert b"Quentin" not in data and vectors[0].astype("<f4").tobytes() not in data


def test_replacing_and_restoring_erase_only_what_is_gone(tmp_path):
    path = tmp_path / "w.db"
    kept, dropped = unit_vectors(2, 10)
    with WatchlistStore(path) as store:
        person, _ = store.add_identity_with_templates("Old Name", np.stack([kept, dropped]))
        store.checkpoint()
        store.replace_identity(person.id, "New Name", kept[None, :])
        assert store.erasure_pending is None  # verified, though the kept template is still there
        data = _files(path)
        assert b"Old Name" not in data and dropped.astype("<f4").tobytes() not in data
        assert kept.astype("<f4").tobytes() in data

        export = tmp_path / "backup.jsonl"
        store.export(export)
        store.add_identity_with_templates("Otto Other", unit_vectors(1, 11))
        store.restore(export)
        assert store.erasure_pending is None
    data = _files(path)
    assert b"Otto Other" not in data and unit_vectors(1, 11)[0].astype("<f4").tobytes() not in data
    assert b"New Name" in data and kept.astype("<f4").tobytes() in data


def test_residue_finds_needles_one_by_one_and_in_bulk(tmp_path):
    from worker.watchlist.erasure import residue

    rng = np.random.default_rng(0)
    data = bytearray(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    planted = [rng.integers(0, 256, 512, dtype=np.uint8).tobytes() for _ in range(3)]
    for offset, needle in zip((5, 100_003, 199_488), planted, strict=True):  # every alignment, and the very end
        data[offset : offset + len(needle)] = needle
    path = tmp_path / "blob"
    path.write_bytes(bytes(data))
    absent = [rng.integers(0, 256, 512, dtype=np.uint8).tobytes() for _ in range(100)]
    short = bytes(data[7:12])
    assert residue([path, tmp_path / "missing"], [*planted, *absent[:5]]) == set(planted)  # one find each
    assert residue([path], [*planted, *absent, short]) == {*planted, short}  # one pass over the file

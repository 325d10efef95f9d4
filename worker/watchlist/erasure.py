"""Checking that removed watchlist data is gone from the bytes on disk.

SQLite's ``secure_delete`` zeroes deleted content in the pages that held it, and a WAL checkpoint
copies those pages over the database file and empties the WAL. Whether that happened is a fact
about bytes, so the store checks the bytes: each removed embedding (512 bytes, unique to its
template) and each removed identity's record prefix (its id followed by its name) is searched for
in the database file and the WAL. In an encrypted store the rows hold ciphertexts, and those are
the needles (the store passes the stored values: 552 bytes per embedding, unique by their random
nonce), so the check proves the same thing of the bytes that were really on disk.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Below this many needles, one bytes.find per needle is fastest; above, one pass over the file
# (8-byte prefixes at every offset, then an exact comparison) keeps a bulk removal from costing
# needles x file size.
_FIND_LIMIT = 32
_PREFIX = 8


@dataclass(frozen=True)
class Erasure:
    """The outcome of erasing removed data from the store's files."""

    complete: bool
    detail: str


def identity_needle(identity_id: str, name: str) -> bytes:
    """The bytes an identity's row holds back to back (its id, then its name), at most 256 of them."""
    return (identity_id + name).encode("utf-8")[:256]


def residue(paths: Iterable[Path], needles: Sequence[bytes]) -> set[bytes]:
    """Those of ``needles`` that occur in any of the files at ``paths`` (missing or empty files hold none)."""
    wanted = {n for n in needles if n}
    found: set[bytes] = set()
    for path in paths:
        if not wanted - found:
            break
        try:
            with open(path, "rb") as file:
                if not path.stat().st_size:
                    continue
                with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    found |= _search(data, wanted - found)
        except FileNotFoundError:
            continue
    return found


def _search(data: mmap.mmap, needles: set[bytes]) -> set[bytes]:
    short = {n for n in needles if len(n) < _PREFIX}
    if len(needles) <= _FIND_LIMIT or len(data) < _PREFIX:
        return {n for n in needles if data.find(n) >= 0}
    found = {n for n in short if data.find(n) >= 0}
    by_prefix: dict[int, list[bytes]] = {}
    for needle in needles - short:
        by_prefix.setdefault(int.from_bytes(needle[:_PREFIX], "little"), []).append(needle)
    prefixes = np.fromiter(by_prefix, dtype=np.uint64, count=len(by_prefix))
    raw = np.frombuffer(data, dtype=np.uint8)
    for shift in range(_PREFIX):
        words = (len(raw) - shift) // _PREFIX
        if words <= 0:
            continue
        view = raw[shift : shift + words * _PREFIX].view("<u8")
        for index in np.flatnonzero(np.isin(view, prefixes)):
            offset = shift + int(index) * _PREFIX
            for needle in by_prefix[int(view[index])]:
                if data[offset : offset + len(needle)] == needle:
                    found.add(needle)
    return found  # the views of data die with this frame, so the caller can close the map

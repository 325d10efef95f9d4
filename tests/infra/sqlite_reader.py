"""Another process in the middle of a read of an SQLite file: what keeps a WAL checkpoint from finishing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

READER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN")  # a read in progress (a report, an export): its snapshot stays open until COMMIT
db.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("reading", flush=True)
sys.stdin.readline()  # until the test lets go
"""


class ReaderMidRead:
    """Starts a process that opens a read transaction on ``path`` and holds it until ``release``."""

    def __init__(self, path: str | Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "reading\n"

    def release(self) -> None:
        """End the read (and the process); idempotent."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0

    def __enter__(self) -> ReaderMidRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

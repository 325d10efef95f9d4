"""worker/runtime/progress.py: a bar only for a person at a terminal."""

from __future__ import annotations

import io

from worker.runtime.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_draw_only_on_a_terminal_and_only_when_enabled(monkeypatch):
    cases = ((io.StringIO(), True, False), (_Terminal(), True, True), (_Terminal(), False, False))
    for stream, enabled, drawn in cases:
        monkeypatch.setattr("sys.stderr", stream)
        for _ in progress_bar(range(3), desc="counting", enabled=enabled):
            pass
        assert ("counting" in stream.getvalue()) is drawn
        assert ("\r" in stream.getvalue()) is drawn

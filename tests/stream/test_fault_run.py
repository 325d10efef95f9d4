"""The fault run (scripts/fault_run.py), short: two passes of the clip with a worker SIGKILL and a camera drop in
each and a broker restart between them. Nothing the broker acknowledged may go unaccounted for."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.conftest import require_component
from tests.infra import kafka_broker, rtsp_server

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_run.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_fault_run_accounts_for_every_frame(shared_dir, tmp_path, capsys):
    require_component(kafka_broker.unavailable_reason())
    require_component(rtsp_server.unavailable_reason())
    report = _load_script().fault_run(shared_dir, tmp_path, passes=2)
    print(report.table())
    assert report.frames_in > 0 and report.poison_in > 0
    assert report.unaccounted == 0, report.table()
    assert report.dead_lettered == report.poison_in, report.table()  # and no good frame among them
    assert report.events_by_type.get("face_match", 0) >= 2, report.table()  # Miranda, once per pass at least
    assert (report.worker_kills, report.broker_restarts, report.camera_drops) == (2, 1, 2)
    assert report.not_ready_while_broker_down == 1 and report.not_ready_while_camera_down == 2, report.table()
    assert report.ready_again_after_broker == 1, report.table()

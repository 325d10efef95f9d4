"""`facewatch bench detect`'s rows and ratios, run for real on a small frame."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_component
from worker.bench.onnx_retinaface import onnxruntime_available
from worker.bench.recognition import NN4_IMPL, add_ratios, run_detect_bench, run_embed_bench
from worker.config import Settings


def test_detect_bench_measures_retinaface_against_onnxruntime():
    settings = Settings()
    settings.detector.device = "cpu"
    impls = ("dlib-mmod", "torch-mmod", "torch-retinaface", "onnxruntime-retinaface")
    rows = list(run_detect_bench(settings, sizes=((200, 150),), min_seconds=0.0, impls=impls))
    by_impl: dict[str, list[int]] = {}
    for row in rows:
        by_impl.setdefault(row["impl"], []).append(row["batch"])
        assert row["items_per_s"] > 0 and row["size"] == "200x150" and row["bench"] == "detect"
    assert by_impl["torch-retinaface"] == [1, 8]
    # onnxruntime is in the test extra: without it this fails in CI (REQUIRE_TEST_INFRA=1), never passes silently.
    require_component(None if onnxruntime_available() else "onnxruntime is not installed (pip install -e '.[test]')")
    assert by_impl["onnxruntime-retinaface"] == [1, 8]
    ratios = {(row["impl"], row["batch"]): row for row in add_ratios(rows, {"detect": "dlib-mmod"})}
    torch_row = ratios[("torch-retinaface", 8)]
    reference = ratios[("onnxruntime-retinaface", 8)]
    assert torch_row["peer"] == "onnxruntime-retinaface"
    assert torch_row["ratio"] == pytest.approx(torch_row["items_per_s"] / reference["items_per_s"])
    assert reference["ratio"] == pytest.approx(1.0)
    assert ratios[("torch-mmod", 1)]["peer"] == "dlib-mmod"


def test_unknown_impls_are_refused_before_any_measuring():
    with pytest.raises(ValueError, match="unknown detect bench impls \\['yolo'\\]"):
        run_detect_bench(Settings(), impls=("yolo", "torch-retinaface"))


def test_rounds_time_each_row_in_turn():
    settings = Settings()
    settings.detector.device = "cpu"
    rows = list(run_detect_bench(settings, sizes=((160, 120),), min_seconds=0.0, impls=("dlib-hog",), rounds=3))
    assert [(row["impl"], row["batch"]) for row in rows] == [("dlib-hog", 1)] and rows[0]["items_per_s"] > 0
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        run_detect_bench(settings, impls=("dlib-hog",), rounds=0)


def test_ratios_fall_back_to_the_bench_peer_without_the_reference():
    rows = [
        {"bench": "detect", "impl": "dlib-mmod", "batch": 1, "size": "640x480", "items_per_s": 0.5},
        {"bench": "detect", "impl": "torch-retinaface", "batch": 8, "size": "640x480", "items_per_s": 40.0},
    ]
    torch_row = add_ratios(rows, {"detect": "dlib-mmod"})[1]
    assert (torch_row["peer"], torch_row["ratio"]) == ("dlib-mmod", 80.0)


def test_embed_bench_measures_nn4_small2_against_the_torch_resnet():
    settings = Settings()
    settings.embedder.device = settings.detector.device = "cpu"
    rows = list(run_embed_bench(settings, batches=(1, 2), min_seconds=0.0, precisions=("fp32",), rounds=2))
    assert [(row["impl"], row["batch"], row["size"]) for row in rows] == [
        ("dlib", 1, "150x150"),
        ("torch", 1, "150x150"),
        (NN4_IMPL, 1, "96x96"),
        ("dlib", 2, "150x150"),
        ("torch", 2, "150x150"),
    ]
    assert all(row["items_per_s"] > 0 for row in rows)
    assert rows[2]["weights"] == "random" and "weights" not in rows[1]
    nn4 = add_ratios(rows, {"embed": "dlib"})[2]
    assert nn4["peer"] == "torch" and nn4["ratio"] == pytest.approx(rows[2]["items_per_s"] / rows[1]["items_per_s"])
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        next(run_embed_bench(settings, rounds=0))


def _cpu_precisions() -> tuple[str, ...]:
    from worker.runtime.device import cpu_has_bf16

    return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)


def test_embed_bench_rows_carry_their_precision():
    from worker.bench.recognition import add_precision_ratios, run_embed_bench

    settings = Settings()
    settings.detector.device = settings.embedder.device = "cpu"
    precisions = _cpu_precisions()
    rows = list(run_embed_bench(settings, batches=(1, 2), min_seconds=0.0, precisions=precisions, rounds=2))
    assert [(row["impl"], row["precision"], row["batch"]) for row in rows] == [
        *[("dlib", "fp32", 1)],
        *[("torch", precision, 1) for precision in precisions],
        (NN4_IMPL, "fp32", 1),
        *[("dlib", "fp32", 2)],
        *[("torch", precision, 2) for precision in precisions],
    ]
    assert all(row["items_per_s"] > 0 and row["bench"] == "embed" for row in rows)
    ratios = {(row["impl"], row["precision"], row["batch"]): row["vs_fp32"] for row in add_precision_ratios(rows)}
    assert ratios["torch", "fp32", 2] == 1.0 and ratios["dlib", "fp32", 2] == 1.0
    if "bf16" in precisions:
        fp32, bf16 = (
            next(r for r in rows if r["precision"] == p and r["impl"] == "torch" and r["batch"] == 2)
            for p in ("fp32", "bf16")
        )
        assert ratios["torch", "bf16", 2] == pytest.approx(bf16["items_per_s"] / fp32["items_per_s"])


def test_detect_bench_measures_the_torch_detectors_at_each_precision():
    settings = Settings()
    settings.detector.device = "cpu"
    precisions = _cpu_precisions()
    impls = ("opencv-haar", "torch-retinaface")
    rows = list(run_detect_bench(settings, sizes=((160, 120),), min_seconds=0.0, impls=impls, precisions=precisions))
    assert [(row["impl"], row.get("precision"), row["batch"]) for row in rows] == [
        ("opencv-haar", None, 1),
        *[("torch-retinaface", precision, batch) for precision in precisions for batch in (1, 8)],
    ]
    configured = list(run_detect_bench(settings, sizes=((160, 120),), min_seconds=0.0, impls=("torch-retinaface",)))
    assert {row["precision"] for row in configured} == {"fp32"}  # the configured detector.retinaface_precision


def test_the_cli_measures_only_the_frame_sizes_asked_for(capsys):
    # A quick run (tests/test_docs_run.py runs the documented bench commands so): real models, fewer rows.
    from worker.cli.main import main

    argv = ["bench", "detect", "--sizes", "160x120", "--only", "dlib-hog", "--seconds", "0", "--json"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["impl"], row["size"]) for row in rows] == [("dlib-hog", "160x120")]
    with pytest.raises(SystemExit):
        main(["bench", "detect", "--sizes", "640by480"])
    assert "expected sizes such as 640x480" in capsys.readouterr().err


def test_embed_bench_times_the_checked_search_beside_plain_bf16():
    """A lowered precision gets rows of the worker's checked search (RECHECK_SHARES of the batch again in
    fp32) at batches of 8 and more, compared with fp32 like any other torch row."""
    from worker.bench.recognition import RECHECK_SHARES, add_precision_ratios
    from worker.runtime.device import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): bf16 is refused on it")
    settings = Settings()
    settings.embedder.device = settings.detector.device = "cpu"
    rows = list(
        run_embed_bench(settings, batches=(1, 8), min_seconds=0.0, precisions=("fp32", "bf16"), dlib_reference=False)
    )
    checked = [row for row in rows if "rechecked" in row]
    assert [(row["batch"], row["precision"]) for row in checked] == [(8, "bf16")] * len(RECHECK_SHARES)
    assert [row["rechecked"] for row in checked] == [max(1, round(share * 8)) / 8 for share in RECHECK_SHARES]
    ratios = [row for row in add_precision_ratios(rows) if "rechecked" in row]
    fp32 = next(row for row in rows if row["batch"] == 8 and row["impl"] == "torch" and row["precision"] == "fp32")
    assert ratios[0]["vs_fp32"] == pytest.approx(checked[0]["items_per_s"] / fp32["items_per_s"])

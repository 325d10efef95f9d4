"""`facewatch model export`: TorchScript and ONNX exports of nn4.small2 give the PyTorch model's embeddings."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from worker.cli.main import main
from worker.models.nn4_small2 import Nn4Small2
from worker.models.openface_t7 import load_openface_t7


@pytest.fixture(scope="module")
def imported(openface_t7):
    return load_openface_t7(openface_t7[0])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_an_imported_t7_gives_the_same_embeddings(
    tmp_path, capsys, openface_t7, openface_faces, imported, fmt
):
    out = tmp_path / ("nn4.pt" if fmt == "torchscript" else "nn4.onnx")
    assert main(["model", "export", "--format", fmt, "--weights", str(openface_t7[0]), str(out)]) == 0
    assert f"wrote {out} ({fmt}, nn4.small2" in capsys.readouterr().out
    x = Nn4Small2.preprocess(openface_faces)
    with torch.no_grad():
        expected = imported(x).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x).detach().numpy()
    else:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"chips": x.numpy()})[0]  # another batch size than the export's example
    assert got.shape == (len(openface_faces), 128)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_from_a_state_dict(tmp_path, capsys, imported, openface_faces):
    state = tmp_path / "nn4.state.pt"
    torch.save(imported.state_dict(), state)
    out = tmp_path / "nn4.pt"
    assert main(["model", "export", "--format", "torchscript", "--weights", str(state), str(out)]) == 0
    x = Nn4Small2.preprocess(openface_faces[:2])
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(out))(x).numpy(), imported(x).numpy(), atol=1e-6)


def test_export_refuses_a_file_that_is_not_nn4_small2(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    assert main(["model", "export", "--format", "onnx", "--weights", str(other), str(tmp_path / "x.onnx")]) == 1
    assert "not an nn4.small2 state dict (no fc.weight)" in capsys.readouterr().err
    other.write_bytes(b"garbage")
    assert main(["model", "export", "--format", "onnx", "--weights", str(other), str(tmp_path / "x.onnx")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()

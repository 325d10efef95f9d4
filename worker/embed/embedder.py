"""The face embedder: batches of aligned chips -> 128-d descriptors, on CPU or CUDA.

``embedder.model`` chooses the network: dlib's face ResNet (``dlib-resnet``, the default; 150x150
chips of dlib's alignment) or OpenFace's nn4.small2 with the weights of a file (a `facewatch train`
model, a state dict, OpenFace's .t7; 96x96 chips of OpenFace's alignment). ``chip`` says which
chips the network reads and ``model_version`` names its embedding space: the watchlist keeps
templates of one model_version only, so embeddings of two networks are never compared.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.config import EmbedderConfig
from worker.models.face_resnet import load_face_resnet
from worker.models.face_spec import DEFAULT_MODEL, EMBEDDING_SIZE, MODEL_VERSION, ChipSpec, chip_spec
from worker.models.files import FACE_RESNET, model_path
from worker.runtime.device import configure_threads, precision_name, select_device, select_dtype


class FaceEmbedder:
    """A face network in torch. ``embed`` takes (N, S, S, 3) uint8 RGB chips (S: ``chip.size``), returns (N, 128)
    float32.

    One forward pass per call (split only above ``max_batch`` to bound memory). The network runs
    channels_last. ``precision``:

    - ``fp32``: everywhere;
    - ``bf16`` (CUDA, or a CPU with AMX or AVX-512 BF16: bf16 weights, measured faster than torch's CPU
      autocast) or ``fp16`` (CUDA): everywhere;
    - ``auto``: on such a CPU, bf16 for ``embed_search`` only (the streaming worker's watchlist search,
      which re-embeds with ``embed_exact`` each face whose decision the lower precision could change)
      and fp32 for ``embed`` (templates, comparisons, evaluations); fp32 everywhere elsewhere.

    On CPU the ResNet runs bf16 through oneDNN's fused convolution kernels (FaceResNet.forward_fused).
    Descriptors are float32 whatever the precision. ``distance_threshold``: the network's own 1:1
    same-person distance (dlib's 0.6), None for a trained model (its thresholds are configured).
    """

    def __init__(
        self,
        device: str = "auto",
        precision: str = "fp32",
        max_batch: int = 64,
        threads: int | None = None,
        model_dir: str | Path | None = None,
        model: str = DEFAULT_MODEL,
    ) -> None:
        configure_threads(threads)
        self.device = select_device(device)
        self.search_dtype = select_dtype(precision, self.device)
        self.dtype = torch.float32 if precision == "auto" else self.search_dtype
        self.max_batch = max(1, max_batch)
        self.chip: ChipSpec = chip_spec(model)
        network: nn.Module
        if model == DEFAULT_MODEL:
            network = load_face_resnet(model_path(FACE_RESNET, model_dir))
            self.model_version = MODEL_VERSION
            self.distance_threshold: float | None = network.distance_threshold
        else:
            from worker.models.nn4_small2 import fold_batch_norms
            from worker.models.nn4_weights import load_nn4_small2, weights_version

            loaded = load_nn4_small2(Path(model).expanduser())
            self.model_version = weights_version(loaded)
            self.distance_threshold = None
            network = fold_batch_norms(loaded)
        # One copy per precision in use; fp32 always, as embed_exact's reference (the ResNet is 22 MB).
        dtypes = {torch.float32, self.dtype, self.search_dtype}
        self._networks = {dtype: self._placed(network, dtype) for dtype in dtypes}
        self._fused = model == DEFAULT_MODEL and self.device.type == "cpu" and torch.backends.mkldnn.is_available()
        self.network = self._networks[self.dtype]

    def _placed(self, network: nn.Module, dtype: torch.dtype) -> nn.Module:
        placed = copy.deepcopy(network).to(device=self.device, dtype=dtype, memory_format=torch.channels_last)
        if hasattr(placed, "mean_rgb"):
            # The channel means stay float32: normalising in bf16 would round a mean such as 122.78 to 123
            # before the input is cast; only the network's arithmetic is lowered.
            placed.mean_rgb = placed.mean_rgb.float()
        return placed

    @classmethod
    def from_config(cls, config: EmbedderConfig, model_dir: str | Path | None = None) -> FaceEmbedder:
        """The embedder of the ``embedder`` section (``model_dir``: the ``models`` section's folder)."""
        return cls(
            device=config.device,
            precision=config.precision,
            max_batch=config.max_batch,
            threads=config.threads,
            model_dir=model_dir,
            model=config.model,
        )

    @property
    def device_name(self) -> str:
        """'cpu' or 'cuda:N', for metrics and logs."""
        return str(self.device)

    @property
    def precision(self) -> str:
        """The precision ``embed`` runs at ('fp32', 'bf16', 'fp16'): 'auto' resolved."""
        return precision_name(self.dtype)

    @property
    def arithmetic(self) -> str:
        """What ``embed`` computes with, for caches of its output: the precision, and '+fused' where the
        ResNet runs oneDNN's fused kernels (bf16 on CPU: descriptors that differ from the plain network's)."""
        return self.precision + ("+fused" if self._fused and self.dtype != torch.float32 else "")

    @property
    def search_precision(self) -> str:
        """The precision ``embed_search`` runs at: lower than ``precision`` under 'auto' on a bf16 CPU."""
        return precision_name(self.search_dtype)

    @property
    def reference_network(self) -> nn.Module:
        """The network in fp32 (``embed_exact``'s)."""
        return self._networks[torch.float32]

    @property
    def lowered(self) -> bool:
        """True when ``embed_search`` runs below fp32, so its close decisions want ``embed_exact``."""
        return self.search_dtype != torch.float32

    @property
    def checks_search(self) -> bool:
        """True under 'auto' on a CPU with bf16 units: only the search is lowered (templates are fp32), and
        the worker embeds its close calls again in fp32. An explicit bf16 or fp16 runs everywhere, unchecked."""
        return self.search_dtype != self.dtype

    def embed(self, chips: np.ndarray, flip_average: bool = False) -> np.ndarray:
        """Descriptors for a batch of chips (N may be 0), at ``precision``.

        ``flip_average`` also embeds each chip's mirror image in the same forward pass and returns
        the mean of the two descriptors: twice the compute, a little more accuracy (docs/accuracy.md).
        """
        if flip_average:
            both = self.embed(np.concatenate([self._checked(chips), chips[:, :, ::-1]]))
            return (both[: len(chips)] + both[len(chips) :]) / 2.0
        return self._run(chips, self.dtype)

    def embed_search(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors at ``search_precision``: what the streaming worker searches the watchlist with."""
        return self._run(chips, self.search_dtype)

    def embed_exact(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors in fp32, whatever the precision: the reference a lowered precision is checked against."""
        return self._run(chips, torch.float32)

    def _checked(self, chips: np.ndarray) -> np.ndarray:
        size = self.chip.size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3) or chips.dtype != np.uint8:
            raise ValueError(f"chips must be (N, {size}, {size}, 3) uint8, got {chips.shape} {chips.dtype}")
        return chips

    def _run(self, chips: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        self._checked(chips)
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        network = self._networks[dtype]
        # oneDNN's fused kernels save the elementwise passes that bf16 leaves as the ResNet's bottleneck
        # (1.25x to 1.3x the plain bf16 network); in fp32 they gain nothing, and the plain network keeps
        # dlib's parity.
        forward = network.forward_fused if self._fused and dtype != torch.float32 else network
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(chips), self.max_batch):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + self.max_batch]))
                batch = batch.to(self.device, non_blocking=True)
                x = network.normalise(batch).to(dtype).contiguous(memory_format=torch.channels_last)
                outputs.append(forward(x).float().cpu().numpy())
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

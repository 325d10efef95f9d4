"""nn4.small2's weights from a file: OpenFace's Torch7 ``.t7``, a PyTorch state dict, or a training checkpoint.

The files ``facewatch train --out`` writes are state dicts; its ``.ckpt`` checkpoints hold one under
``"model"``. Every file is read with ``weights_only``: tensors and plain containers, no pickled code.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from worker.errors import ModelFileError
from worker.models.nn4_small2 import Nn4Small2

VERSION_PREFIX = "nn4.small2-"


def load_nn4_small2(path: str | Path) -> Nn4Small2:
    """nn4.small2 (eval mode, CPU) with the weights of ``path``; ModelFileError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix == ".t7":
        from worker.models.openface_t7 import load_openface_t7

        return load_openface_t7(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelFileError(f"cannot read {path} as a PyTorch state dict: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        state = state["model"]  # a `facewatch train` checkpoint
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ModelFileError(f"{path}: not an nn4.small2 state dict (no fc.weight)")
    model = Nn4Small2(embedding_size=int(state["fc.weight"].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: not an nn4.small2 state dict: {str(exc).splitlines()[0]}") from None
    return model.eval()


def weights_version(model: Nn4Small2) -> str:
    """``nn4.small2-`` and 16 hex digits of SHA-256 over the weights: the model_version of its embeddings.

    Computed from the tensors, not the file, so the same weights give the same version whether they
    come from a .t7 file, a state dict or a checkpoint; other weights (another training run, another
    step) give another version, and their templates are never searched against each other.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue  # a training counter, not a weight
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return VERSION_PREFIX + digest.hexdigest()[:16]

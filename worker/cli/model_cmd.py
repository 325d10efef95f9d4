"""`facewatch model export`: nn4.small2 (OpenFace's network) to TorchScript or ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import FacewatchError

if TYPE_CHECKING:
    from worker.models.nn4_small2 import Nn4Small2

MODELS = ("nn4.small2",)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `model export`."""
    model = commands.add_parser("model", help="embedding networks: export nn4.small2 to TorchScript or ONNX")
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="write nn4.small2 as TorchScript or ONNX (input: (B, 3, 96, 96) RGB in [0, 1]; output: (B, 128) "
        "unit vectors)",
        description="Loads nn4.small2's weights (OpenFace's Torch7 .t7 file, e.g. nn4.small2.v1.t7, or a PyTorch "
        "state dict saved with torch.save), writes the network in the chosen format, and checks that the "
        "written model gives the same embeddings as the PyTorch one on a random batch (ONNX: when onnxruntime "
        "is installed). See docs/models.md.",
    )
    export.add_argument("out", type=Path, metavar="OUT", help="file to write (.pt for TorchScript, .onnx for ONNX)")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="export format")
    export.add_argument("--model", default="nn4.small2", choices=MODELS, help="network (default nn4.small2)")
    weights = export.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", type=Path, metavar="FILE", help="OpenFace .t7 file or PyTorch state dict (.pt)")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="randomly initialised weights (for speed tests only: its embeddings mean nothing)",
    )
    export.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    export.set_defaults(handler=run_export)


def load_weights(weights: Path | None, seed: int) -> Nn4Small2:
    """nn4.small2 from a .t7 file, a state dict or a checkpoint; random weights (``seed``) when ``weights`` is None."""
    import torch

    from worker.models.nn4_small2 import Nn4Small2
    from worker.models.nn4_weights import load_nn4_small2

    if weights is None:
        torch.manual_seed(seed)
        return Nn4Small2().eval()
    return load_nn4_small2(weights)


def run_export(args: argparse.Namespace) -> int:
    import warnings

    import numpy as np
    import torch

    from worker.models.export import INPUT_NAME, export_model
    from worker.models.nn4_small2 import INPUT_SIZE

    model = load_weights(None if args.random_weights else args.weights, args.seed)
    try:
        with warnings.catch_warnings():
            # The ONNX tracer warns that the padding sizes become constants: they are, for the fixed 96x96 input.
            warnings.simplefilter("ignore")
            export_model(model, args.out, args.format, INPUT_SIZE)
    except OSError as exc:
        raise FacewatchError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    batch = torch.rand(4, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(batch).numpy()
    check = "not checked (onnxruntime is not installed)"
    if args.format == "torchscript":
        got = torch.jit.load(str(args.out))(batch).detach().numpy()
        check = f"max difference to PyTorch {float(np.abs(got - expected).max()):.1e}"
    else:
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            session = onnxruntime.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
            got = session.run(None, {INPUT_NAME: batch.numpy()})[0]
            check = f"max difference to PyTorch {float(np.abs(got - expected).max()):.1e}"
    weights = "random weights" if args.random_weights else str(args.weights)
    print(f"wrote {args.out} ({args.format}, {args.model}, {weights}); {check}")
    return 0

"""`facewatch train`: train nn4.small2 (triplet loss with semi-hard mining, distillation from dlib's ResNet)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from worker.cli.common import settings_from_args
from worker.errors import FacewatchError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    """Add `train`."""
    train = commands.add_parser(
        "train",
        help="train nn4.small2: triplet loss (P people x K faces, semi-hard mining) and/or distillation from "
        "dlib's ResNet",
        description="Aligns every face once (HOG + 68 landmarks: OpenFace's 96x96 chip, and dlib's 150x150 chip "
        "for the teacher), caches the chips, then trains nn4.small2 from random weights. Writes a PyTorch state "
        "dict (eval lfw --model, model export --weights read it). See docs/training.md.",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="DIR", help="one folder of images per person (flat: --distill)")
    source.add_argument(
        "--from-video",
        type=Path,
        metavar="FILE|DIR",
        help="mine faces from the worker's own tracks on a video (or every video in DIR): a track is a person; "
        "tracks on screen together are different people",
    )
    train.add_argument("--out", required=True, type=Path, metavar="MODEL.pt", help="where to write the trained model")
    train.add_argument(
        "--people-from",
        type=Path,
        metavar="PAIRS.txt",
        help="train only on the people an LFW pairs file names (pairsDevTrain.txt: View 1's training people)",
    )
    train.add_argument(
        "--centred",
        action="store_true",
        help="the images are face crops centred as LFW's: no detection, landmarks fitted in the centre box",
    )
    train.add_argument("--steps", type=_positive_int, default=1000, help="optimiser steps in all (default 1000)")
    train.add_argument("--people", type=int, default=16, help="P: people per batch (default 16)")
    train.add_argument(
        "--faces",
        type=int,
        default=4,
        help="K: faces per person (default 4; fewer drawn again with replacement, people with one face skipped)",
    )
    train.add_argument(
        "--distill",
        action="store_true",
        help="train to reproduce dlib's ResNet embeddings (no labels needed); alone unless --triplet",
    )
    train.add_argument("--triplet", action="store_true", help="with --distill: add the triplet loss")
    train.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation loss (1.0)")
    train.add_argument("--margin", type=float, default=0.2, help="triplet margin on unit vectors (default 0.2)")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    train.add_argument(
        "--init",
        type=Path,
        metavar="MODEL.pt",
        help="start from this trained nn4.small2 (fine-tuning, e.g. on a camera's tracks) instead of random weights",
    )
    train.add_argument("--no-augment", action="store_true", help="no flips, shifts, scaling or colour jitter")
    train.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="checkpoint file (default: OUT with .ckpt added)"
    )
    train.add_argument(
        "--checkpoint-every", type=_positive_int, default=100, help="steps between checkpoints (default 100)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run saved in the checkpoint file")
    train.add_argument("--seed", type=int, default=0, help="initial weights, batches and augmentation (default 0)")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    train.add_argument("--cache-dir", type=Path, help="aligned-chip cache (default ~/.cache/facewatch/training)")
    train.add_argument("--no-cache", action="store_true", help="align every image again, and cache nothing")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--model-dir", help="folder with dlib's model files (models.dir)")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from worker.cli.model_cmd import load_weights
    from worker.evaluation.cache import default_cache_dir
    from worker.models.face_resnet import load_face_resnet
    from worker.models.files import FACE_RESNET, model_path
    from worker.runtime.device import configure_threads, select_device
    from worker.runtime.progress import progress_bar
    from worker.training import augment
    from worker.training.data import cached_faces, lfw_pair_people, scan_folder
    from worker.training.loop import Trainer, TrainSettings

    settings = settings_from_args(args)
    model_dir = settings.models.dir
    triplet = args.triplet or not args.distill
    if args.triplet and not args.distill:
        raise FacewatchError("--triplet only makes sense with --distill (triplets are the default)")
    configure_threads(args.threads)
    device = select_device(args.device)  # a bad --device fails before minutes of alignment
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir() / "training")
    started = time.monotonic()
    if args.from_video is not None:
        from worker.training.video import mine_videos

        faces = mine_videos(settings, args.from_video, cache_dir, progress=not args.quiet)
    else:
        people = lfw_pair_people(args.people_from) if args.people_from is not None else None
        images = scan_folder(args.data, people)
        with progress_bar(total=len(images), enabled=not args.quiet, desc="aligning", unit="image") as bar:
            faces = cached_faces(args.data, images, cache_dir, model_dir, progress=bar.update, detect=not args.centred)
    for line in faces.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(
        f"{len(faces)} faces of {len(set(faces.labels.tolist()))} identities ({len(faces.skipped)} images skipped), "
        f"aligned in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    train_settings = TrainSettings(
        steps=args.steps,
        people=args.people,
        faces=args.faces,
        triplet=triplet,
        distill=args.distill,
        distill_weight=args.distill_weight,
        margin=args.margin,
        learning_rate=args.learning_rate,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        init=str(args.init or ""),
        augment=vars(augment.NONE) if args.no_augment else vars(augment.AugmentSettings()),
    )
    teacher = load_face_resnet(model_path(FACE_RESNET, model_dir)) if args.distill else None
    init = load_weights(args.init, args.seed).state_dict() if args.init is not None else None
    trainer = Trainer(faces, train_settings, device, teacher, init)
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    if args.resume:
        if not checkpoint.exists():
            raise FacewatchError(f"--resume: no checkpoint at {checkpoint}")
        trainer.restore(checkpoint)
    elif checkpoint.exists():
        raise FacewatchError(f"{checkpoint} exists: --resume to continue that run, or remove it")
    first = trainer.step
    started = time.monotonic()
    history = trainer.run(checkpoint, progress=not args.quiet)
    trainer.save_model(args.out)
    seconds = time.monotonic() - started
    window = max(1, min(50, len(history) // 4))
    head = sum(r.loss for r in history[:window]) / window
    tail = sum(r.loss for r in history[-window:]) / window
    active = [r.active for r in history[-window:] if r.active is not None]
    shown_active = f", active triplets {sum(active) / len(active):.2f}" if active else ""
    print(
        f"trained steps {first + 1}-{trainer.step} on {device} in {seconds:.0f} s "
        f"({seconds / max(1, trainer.step - first):.2f} s/step); mean loss of {window} steps: "
        f"first {head:.4f}, last {tail:.4f}{shown_active}; wrote {args.out} (checkpoint {checkpoint})"
    )
    return 0

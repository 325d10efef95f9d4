"""The training loop: batches, augmentation, student (and teacher) forward, loss, step, checkpoints.

A checkpoint holds everything the next step depends on (weights, optimiser, the sampler's and the
augmentation's random state, the step, the loss history), so ``--resume`` continues the very run an
uninterrupted one would have made: on CPU, the same losses step for step. The final model is a plain
nn4.small2 state dict, which `facewatch eval lfw --model` and `facewatch model export --weights` read.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from worker.errors import FacewatchError
from worker.models.face_resnet import FaceResNet
from worker.models.nn4_small2 import Nn4Small2
from worker.runtime.progress import progress_bar
from worker.training import augment
from worker.training.data import FaceSet
from worker.training.losses import MARGIN, distillation_loss, semi_hard_triplets, squared_distances, triplet_loss
from worker.training.sampler import FaceSampler, PKSampler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class TrainSettings:
    """What a run does; stored in its checkpoints (a resume keeps the checkpoint's)."""

    steps: int = 1000
    people: int = 16  # P: identities per batch (triplets)
    faces: int = 4  # K: faces per identity (triplets); distillation alone draws P x K faces
    triplet: bool = True
    distill: bool = False
    distill_weight: float = 1.0
    margin: float = MARGIN
    learning_rate: float = 1e-3
    checkpoint_every: int = 100
    seed: int = 0
    init: str = ""  # start from this nn4.small2 state dict ("": random weights from the seed)
    augment: dict = field(default_factory=lambda: asdict(augment.AugmentSettings()))


@dataclass
class StepResult:
    """One step's figures."""

    step: int
    loss: float
    triplet: float | None
    distill: float | None
    active: float | None  # fraction of anchor-positive pairs with a semi-hard negative


def _teacher_input(teacher: FaceResNet, chips: torch.Tensor) -> torch.Tensor:
    """[0, 1] NCHW chips -> dlib's input (pixel values minus its mean, over 256), as FaceResNet.normalise."""
    return (chips * 255.0 - teacher.mean_rgb) / 256.0


class Trainer:
    """One training run over ``faces``; ``teacher`` is dlib's ResNet when distilling."""

    def __init__(
        self,
        faces: FaceSet,
        settings: TrainSettings,
        device: torch.device,
        teacher: FaceResNet | None = None,
        init: dict | None = None,
    ) -> None:
        """``init``: the state dict named by ``settings.init`` (fine-tuning), None for random weights."""
        if not settings.triplet and not settings.distill:
            raise FacewatchError("nothing to train: give triplets, --distill or both")
        if settings.distill and teacher is None:
            raise FacewatchError("--distill needs the teacher (dlib's ResNet)")
        if len(faces) == 0:
            raise FacewatchError("no face to train on (every image was skipped)")
        self.faces, self.settings, self.device = faces, settings, device
        torch.manual_seed(settings.seed)  # the initial weights
        self.model = Nn4Small2()
        if init is not None:
            self.model.load_state_dict(init)
        self.model = self.model.to(device)
        self.teacher = teacher.to(device).eval() if teacher is not None else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate)
        batch = settings.people * settings.faces
        self.sampler: PKSampler | FaceSampler = (
            PKSampler(faces.labels, settings.people, settings.faces, settings.seed, faces.different)
            if settings.triplet
            else FaceSampler(len(faces), batch, settings.seed)
        )
        self.generator = torch.Generator().manual_seed(settings.seed + 1)
        self.augment = augment.AugmentSettings(**settings.augment)
        self.step = 0
        self.history: list[StepResult] = []
        self.different = None if faces.different is None else torch.from_numpy(faces.different)

    def _chips(self, array: np.ndarray, indices: np.ndarray, params: augment.Draw) -> torch.Tensor:
        x = torch.from_numpy(array[indices]).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        return augment.apply(x, params)

    def train_step(self) -> StepResult:
        """One batch: sample, augment, forward, mine, loss, backward, update."""
        s = self.settings
        indices, labels = self.sampler.batch()
        params = augment.draw(len(indices), self.augment, self.generator)
        self.model.train()
        student = self.model(self._chips(self.faces.small, indices, params))
        loss = student.sum() * 0.0
        triplet_value = distill_value = active = None
        if s.triplet:
            label_tensor = torch.from_numpy(labels).to(self.device)
            different = None
            if self.different is not None:
                different = self.different[labels][:, labels].to(self.device)
            mined = semi_hard_triplets(squared_distances(student), label_tensor, different, s.margin)
            value = triplet_loss(student, mined, s.margin)
            loss = loss + value
            triplet_value, active = float(value.detach()), mined.active_fraction
        if s.distill:
            assert self.teacher is not None
            with torch.no_grad():
                target = self.teacher(_teacher_input(self.teacher, self._chips(self.faces.large, indices, params)))
            value = distillation_loss(student, target)
            loss = loss + s.distill_weight * value
            distill_value = float(value.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        result = StepResult(self.step, float(loss.detach()), triplet_value, distill_value, active)
        if not math.isfinite(result.loss):
            raise FacewatchError(f"step {self.step}: the loss is {result.loss}; lower --learning-rate")
        self.history.append(result)
        return result

    def run(self, checkpoint: Path | None = None, progress: bool = True) -> list[StepResult]:
        """Train up to ``settings.steps`` (from where a resume left off), checkpointing every N steps."""
        s = self.settings
        with progress_bar(total=s.steps, initial=self.step, enabled=progress, desc="training", unit="step") as bar:
            while self.step < s.steps:
                result = self.train_step()
                shown = {"loss": f"{result.loss:.4f}"}
                if result.active is not None:
                    shown["active"] = f"{result.active:.2f}"
                bar.set_postfix(shown, refresh=False)
                bar.update(1)
                if checkpoint is not None and s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint)
        if checkpoint is not None and not (s.checkpoint_every and self.step % s.checkpoint_every == 0):
            self.save_checkpoint(checkpoint)  # the last step, unless the loop has just saved it
        return self.history

    def save_checkpoint(self, path: Path) -> None:
        """Everything a resume needs, written aside and renamed (a killed run keeps the previous checkpoint)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "settings": asdict(self.settings),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state(),
            "generator": self.generator.get_state(),
            "history": [asdict(r) for r in self.history],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, path)
        recent = self.history[-self.settings.checkpoint_every :]
        mean = sum(r.loss for r in recent) / len(recent) if recent else float("nan")
        log.info("checkpoint at step %d (mean loss of the last %d steps %.4f): %s", self.step, len(recent), mean, path)

    def restore(self, path: Path) -> None:
        """Continue the run saved in ``path`` (its settings must match this trainer's but for ``steps``)."""
        try:
            # Our own file, but it holds the sampler's state (plain lists and dicts): weights_only stays on.
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            raise FacewatchError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise FacewatchError(f"{path}: not a facewatch training checkpoint")
        saved = {k: v for k, v in state["settings"].items() if k != "steps"}
        mine = {k: v for k, v in asdict(self.settings).items() if k != "steps"}
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            raise FacewatchError(f"{path}: the checkpoint was trained with other settings ({', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.restore(state["sampler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.history = [StepResult(**r) for r in state["history"]]

    def save_model(self, path: Path) -> None:
        """The trained nn4.small2 as a state dict (eval mode weights; batch norms unfolded)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(self.model.state_dict(), partial)
        os.replace(partial, path)


def embed_chips(model: Nn4Small2, chips: np.ndarray, flip_average: bool = True, batch: int = 64) -> np.ndarray:
    """(N, 128) unit vectors of (N, 96, 96, 3) chips; ``flip_average``: the mean with the mirror image's,
    renormalised (as `eval lfw` does for dlib's ResNet)."""
    model = model.eval()
    out = []
    for start in range(0, len(chips), batch):
        part = chips[start : start + batch]
        vectors = model.embed(part)
        if flip_average:
            vectors = vectors + model.embed(np.ascontiguousarray(part[:, :, ::-1]))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append(vectors)
    return np.concatenate(out) if out else np.zeros((0, model.fc.out_features), np.float32)
